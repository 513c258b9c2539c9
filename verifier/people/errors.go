package people

import "errors"

// Sentinel errors (compare with errors.Is).
var (
	// ErrDisabled: the person is disabled and may not log in.
	ErrDisabled = errors.New("person disabled")
	// ErrGrantInvalid: a login grant unknown, used or expired.
	ErrGrantInvalid = errors.New("login grant unknown, used or expired")
	// ErrIdentity: the person's IdP is no longer in the policy, or the IdP
	// of that name now has another issuer or subject claim than the one
	// the person was created with: not the same person.
	ErrIdentity = errors.New("the person's identity provider is not the one in the policy")
	// ErrAudit: the audit event of a login or grant was not stored, so the
	// login or grant is refused.
	ErrAudit = errors.New("audit trail unavailable")
	// ErrNoPolicy: the policy has no people section.
	ErrNoPolicy = errors.New("the policy has no people section")
)
