package agent

import "errors"

var (
	// ErrNotEnrolled: the AK has no certificate yet.
	ErrNotEnrolled = errors.New("agent: host not enrolled (no AK certificate)")
	// ErrUnknownCredential: no credential with that ID in the data directory.
	ErrUnknownCredential = errors.New("agent: unknown credential")
	// ErrCounterExhausted: the credential's 32-bit counter is spent; rotate it.
	ErrCounterExhausted = errors.New("agent: signature counter exhausted")
	// ErrCredentialRevoked: the verifier revoked the credential; the agent
	// no longer signs with it.
	ErrCredentialRevoked = errors.New("agent: credential revoked by the verifier")
	// ErrHostRefused: the verifier refuses the host's own credential (and
	// every other it has): the host, or its agent's credential, was revoked
	// or offboarded. NATS tells a refused client no reason, so the agent can
	// say no more.
	ErrHostRefused = errors.New("the verifier refuses this host's own credential: the host (or its agent's credential) was revoked or offboarded")
)

// HostRefused is AgentStatus.HostStatus when the verifier refuses the
// host's credential (ErrHostRefused).
const HostRefused = "refused"
