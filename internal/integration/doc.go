// Package integration holds the tests that run the gateway against real
// software: Dovecot as the upstream and as the byte-level reference, and
// real POP3 clients. They skip, naming the Debian packages, where the
// programs are missing.
package integration
