// Package natstls is how every tpmauthn client (agent, workloads through
// agent/client, tpmauthnctl, the verifier itself) authenticates the NATS
// server: TLS verified against given roots, or, while a host enrolls,
// against the CA a join token pins (the SHA-256 of its public key, as
// kubeadm's discovery hash). A URL beyond loopback is never used in clear:
// a NATS login is a signature over the server's nonce, which an on-path
// server could relay, and a join token is a bearer secret.
package natstls
