// Package verifier is the tpmauthn relying party and fleet authority. This
// package only wires its rooms (sub-packages, see docs/architecture.md) and
// owns their lifecycles: Start runs a table of steps, each registering its
// cleanup, and Close undoes them in reverse.
//
// It enrolls hosts (DESIGN.md flow 1): a join token or an EK allow-list entry
// buys an enrollment session through NATS auth callout; the EK certificate must
// chain to a configured manufacturer root (fail closed); credential activation
// proves the AK sits beside that EK; the fleet CA then issues the AK
// certificate (WebAuthn §8.3.1 profile), at once or after an operator approves.
//
// It registers credentials (flow 2): a single-use challenge from the verifier,
// a WebAuthn registration with a `tpm` attestation verified by go-webauthn
// against the fleet CA, and an AK that must belong to an active host.
//
// State lives in JetStream KV buckets in the verifier's own NATS account:
// versioned JSON records changed with compare-and-set, so several verifier
// instances (a micro service queue group) can serve one fleet and a restart
// loses nothing. Enrollment sessions and challenges live in buckets with a TTL.
//
// NATS layout (three accounts): AUTH holds the verifier's user (also the
// auth-callout responder), the operator user for tpmauthnctl and the KV state;
// APP holds every workload and enrollment session, each authorized by the
// callout, and imports the verifier's v1 service; SYS is the system account,
// used to kick connections. With no NATS URL configured the verifier runs this
// layout in an embedded nats-server; keys.ServerConfig prints the same block for an
// existing cluster.
package verifier
