package people

import (
	"errors"
	"fmt"
)

// Sentinel errors (compare with errors.Is).
var (
	// ErrDisabled: the person is disabled and may not log in.
	ErrDisabled = errors.New("person disabled")
	// ErrGrantInvalid: a login grant unknown, used or expired.
	ErrGrantInvalid = errors.New("login grant unknown, used or expired")
	// ErrGrantMisplaced (an ErrGrantInvalid): a login grant presented
	// elsewhere than where it was asked for (another host, another local
	// user, a software key for a host's grant). It is spent by that: a grant
	// seen in the wrong place has leaked.
	ErrGrantMisplaced = fmt.Errorf("%w: presented elsewhere than where the login was made, and spent by that", ErrGrantInvalid)
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
