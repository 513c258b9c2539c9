package oidclogin

import (
	"errors"
	"fmt"
)

// Sentinel errors (compare with errors.Is).
var (
	// ErrUnknownIdP: the policy names no such IdP.
	ErrUnknownIdP = errors.New("unknown identity provider")
	// ErrState: a login state unknown, used, expired, or not this browser's.
	ErrState = errors.New("login state unknown, used, expired or from another browser")
	// ErrIdP: the IdP refused, was unreachable, or answered with an ID token
	// that does not verify.
	ErrIdP = errors.New("identity provider login failed")
	// ErrNonce: the ID token's nonce is not the login's (a replayed or
	// substituted token).
	ErrNonce = errors.New("ID token nonce mismatch")
	// ErrClaims: the ID token lacks the subject claim the policy names.
	ErrClaims = errors.New("ID token lacks the subject claim")
	// ErrCode: a one-time code (or device code) unknown, used, expired, or
	// redeemed with the wrong PKCE verifier.
	ErrCode = errors.New("code unknown, used, expired or not yours")
	// ErrCrossOrigin: a form or state-creating request that did not come
	// from the verifier's own pages (another site, another port of this
	// host, an image), or from a browser that says neither.
	ErrCrossOrigin = errors.New("request not from this verifier's own page")
	// ErrBusy: the global rate of new logins is exhausted; retry shortly.
	ErrBusy = errors.New("too many logins being started; retry in a moment")
	// ErrBadRequest: a request this endpoint cannot take.
	ErrBadRequest = errors.New("bad request")
	// ErrUnbound: a login that does not say where its grant will be
	// redeemed (a host's agent, or a software key): a tpmauthnctl older
	// than the verifier. Wraps ErrBadRequest.
	ErrUnbound = fmt.Errorf("%w: the login does not say where it will be used (a tpmauthnctl older than the verifier): upgrade tpmauthnctl", ErrBadRequest)
	// ErrNotInFleet: a login bound to a host the fleet does not have
	// active (no such host, or one pending or revoked: not said which).
	// Wraps ErrBadRequest.
	ErrNotInFleet = fmt.Errorf("%w: the login names a host that is not an active host of this fleet", ErrBadRequest)
)

// Errors of the periodic re-check and of revocation (recheck.go).
var (
	// ErrRefreshRefused: the IdP refused the refresh token (invalid_grant,
	// RFC 6749 §5.2): the person was disabled, removed or signed out
	// there. Only this offboards; an unreachable IdP does not.
	ErrRefreshRefused = errors.New("the IdP refused the refresh token")
	// ErrNoRevocation: the IdP advertises no revocation_endpoint (RFC 7009
	// via discovery): the refresh token is dropped, not revoked.
	ErrNoRevocation = errors.New("the IdP advertises no revocation endpoint")
)
