package people

import "errors"

// Sentinel errors (compare with errors.Is).
var (
	// ErrDisabled: the person is disabled and may not log in.
	ErrDisabled = errors.New("person disabled")
	// ErrGrantInvalid: a login grant unknown, used or expired.
	ErrGrantInvalid = errors.New("login grant unknown, used or expired")
	// ErrNoPolicy: the policy has no people section.
	ErrNoPolicy = errors.New("the policy has no people section")
)
