// Package e2e holds the end-to-end tests of tpmauthn: a real software TPM
// (swtpm), the verifier with its embedded nats-server, the agent daemon on a
// Unix socket and workloads connecting to NATS through agent/client.
package e2e
