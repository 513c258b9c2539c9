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
)
