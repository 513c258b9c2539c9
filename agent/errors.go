package agent

import "errors"

var (
	// ErrNotEnrolled: the AK has no certificate yet.
	ErrNotEnrolled = errors.New("agent: host not enrolled (no AK certificate)")
	// ErrUnknownCredential: no credential with that ID in the data directory.
	ErrUnknownCredential = errors.New("agent: unknown credential")
	// ErrCounterExhausted: the credential's 32-bit counter is spent; rotate it.
	ErrCounterExhausted = errors.New("agent: signature counter exhausted")
)
