package api

// ErrorResponse is any endpoint's refusal. Code is stable for programs.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes of ErrorResponse.Code: stable, for programs to branch on.
const (
	CodeBadRequest          = "bad_request"
	CodeTokenInvalid        = "token_invalid"
	CodeNotAllowed          = "not_allowed"
	CodeEKUntrusted         = "ek_untrusted"
	CodeActivationFailed    = "activation_failed"
	CodeAttestationRejected = "attestation_rejected"
	CodeAlreadyEnrolled     = "already_enrolled"
	CodeHostNotActive       = "host_not_active"
	CodeChallengeInvalid    = "challenge_invalid"
	CodeNotFound            = "not_found"
	CodeUnknownCredential   = "unknown_credential"
	CodeRevoked             = "revoked"
	CodeReplay              = "replay"
	CodeNoRoles             = "no_roles"
	CodeAssertionRejected   = "assertion_rejected"
	CodeConflict            = "conflict"
	CodeUnavailable         = "unavailable"
	CodeExpired             = "expired"
	CodeRateLimited         = "rate_limited"
	CodeInternal            = "internal"
	CodeLoginInvalid        = "login_invalid"
	CodeForbidden           = "forbidden"
	CodeUpgradeAgent        = "upgrade_agent"
)

// Error is a refusal with a stable code. The verifier's sentinel errors are
// *Error values (compare them with errors.Is); an endpoint answers with the
// code and message of the first *Error its error wraps, and "internal" for
// anything else, whose text stays in the verifier's log.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// The verifier's sentinel errors, by code.
var (
	ErrBadRequest        = &Error{CodeBadRequest, "bad request"}
	ErrNotFound          = &Error{CodeNotFound, "not found"}
	ErrConflict          = &Error{CodeConflict, "changed concurrently or already exists"}
	ErrTokenInvalid      = &Error{CodeTokenInvalid, "join token unknown, used or expired"}
	ErrNotAllowed        = &Error{CodeNotAllowed, "EK not on the allow-list"}
	ErrHostNotActive     = &Error{CodeHostNotActive, "host not active"}
	ErrAlreadyEnrolled   = &Error{CodeAlreadyEnrolled, "this TPM is already enrolled"}
	ErrChallenge         = &Error{CodeChallengeInvalid, "challenge unknown, used or expired"}
	ErrUnknownCredential = &Error{CodeUnknownCredential, "unknown credential"}
	ErrRevoked           = &Error{CodeRevoked, "credential or host revoked"}
	ErrReplay            = &Error{CodeReplay, "replayed or stale assertion"}
	ErrNoRoles           = &Error{CodeNoRoles, "no role grants this workload any permission"}
	ErrExpired           = &Error{CodeExpired, "credential past its maximum age: its agent must rotate it"}
	ErrRateLimited       = &Error{CodeRateLimited, "too many requests from this session: slow down and retry"}
	// ErrLoginInvalid: a person's login grant is unknown, used or expired,
	// their login ended, or the person is disabled: log in again.
	// ErrForbidden: the caller's roles do not grant this operator API
	// operation.
	ErrForbidden    = &Error{CodeForbidden, "no role of yours allows this operation"}
	ErrLoginInvalid = &Error{CodeLoginInvalid, "login grant unknown, used or expired, or the person is disabled: log in again"}
	// ErrUnavailable: the verifier could not read or write its state (a
	// JetStream outage): nothing was decided about the request; retry.
	ErrUnavailable = &Error{CodeUnavailable, "the verifier's store is unavailable; retry"}
	// ErrUpgradeAgent: an agent called the v1 API where agents did before
	// its subjects named the caller (api.LegacyV1Subjects).
	ErrUpgradeAgent = &Error{CodeUpgradeAgent, "this verifier serves the v1 API on subjects that name the caller: upgrade tpmauthn-agent to the verifier's release"}
)
