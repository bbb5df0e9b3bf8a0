// Package docker holds no code: its directory has the gateway's container
// image (Dockerfile), a compose try-out against Dovecot (compose.yaml,
// gateway.yaml, dovecot/) and Kubernetes manifests (k8s/). Its test checks
// them without a container engine: it runs the Dockerfile's go build line,
// runs the resulting binary as the image and compose would against a local
// Dovecot, and validates the Dockerfiles, compose file and manifests.
package docker
