package verifier

import "errors"

// Sentinel errors; endpoint replies carry their Code.
var (
	ErrNotFound        = errors.New("not found")
	ErrConflict        = errors.New("changed concurrently or already exists")
	ErrTokenInvalid    = errors.New("join token unknown, used or expired")
	ErrNotAllowed      = errors.New("EK not on the allow-list")
	ErrHostNotActive   = errors.New("host not active")
	ErrAlreadyEnrolled = errors.New("this TPM is already enrolled")
	ErrBadRequest      = errors.New("bad request")
	ErrChallenge       = errors.New("challenge unknown, used or expired")
)
