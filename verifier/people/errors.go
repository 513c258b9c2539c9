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
	// user, another key). It is spent by that: a grant seen in the wrong
	// place has leaked. The message does not say where it belonged.
	ErrGrantMisplaced = fmt.Errorf("%w: not for this place, and spent by that", ErrGrantInvalid)
	// ErrGrantUnbound (an ErrGrantInvalid): a grant of a login that did not
	// say where it would be redeemed (an earlier client's): redeemed
	// nowhere.
	ErrGrantUnbound = fmt.Errorf("%w: the login did not say where it would be used (log in again with a current tpmauthnctl)", ErrGrantInvalid)
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
