// Package server wires the gateway together from its config file: the
// POP3 listeners (with STLS, implicit TLS and the PROXY protocol), the
// proxy with its cache, in-flight budget and state stores (memory, bbolt
// or Redis), the HTTP listener for /healthz, /readyz and /metrics, reload
// and drain. It also holds what the other commands need beside flag
// parsing: check, the OAuth2 first authorisation, sealing secrets, the
// container health check and the demo.
//
// A test starts a gateway with Start and stops it with Shutdown; the
// gateway command calls Run.
package server
