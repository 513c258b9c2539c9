package enroll

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// The three ways to an enrollment session: a session that may only call the
// enrollment and registration endpoints, for SessionTTL.

// Methods are enrollment's authentication methods, in the order the
// registry asks them: a join token, then (after the workload assertion,
// which the caller registers between) a host's proof and an allow-listed EK.
func (s *Service) Methods() (token, hostProof, ekAllow authn.Method) {
	return tokenMethod{s}, hostProofMethod{s}, ekAllowMethod{s}
}

// tokenMethod: CONNECT with a join token.
type tokenMethod struct{ s *Service }

func (tokenMethod) Match(co *jwt.ConnectOptions) bool { return co.Token != "" }

func (m tokenMethod) Authorize(ctx context.Context, r *authn.Request) (*jwt.UserClaims, error) {
	r.Event.Kind = "connect.enroll"
	t, _, err := m.s.lookupToken(ctx, r.Claims.ConnectOptions.Token)
	if err != nil {
		return nil, err
	}
	r.Event.Reason = "join token " + t.ID
	// It enrolls the host (the agent registers its host credential on a
	// host proof's session afterwards).
	return m.s.sessionUser(r.Claims, "enroll-token-"+t.ID, api.TagEnrollToken+":"+t.Hash, api.InboxForToken(r.Claims.ConnectOptions.Token),
		api.Scope{Kind: api.ScopeToken, ID: t.Hash})
}

// hostProofMethod: CONNECT as host:<id> with its activation secret, to wait
// for approval and register its own credential.
type hostProofMethod struct{ s *Service }

func (hostProofMethod) Match(co *jwt.ConnectOptions) bool {
	return strings.HasPrefix(co.Username, api.HostUserPrefix)
}

func (m hostProofMethod) Authorize(ctx context.Context, r *authn.Request) (*jwt.UserClaims, error) {
	co := r.Claims.ConnectOptions
	id := strings.TrimPrefix(co.Username, api.HostUserPrefix)
	r.Event.Kind, r.Event.Host = "connect.enroll", id
	if err := m.s.checkHostProof(ctx, id, co.Password); err != nil {
		return nil, err
	}
	// It waits for approval and registers its own credentials.
	return m.s.sessionUser(r.Claims, "enroll-host-"+id, api.TagAgent+":"+id, api.InboxForHost(id), api.HostScope(id))
}

// ekAllowMethod: CONNECT as ek:<hash> of an allow-listed EK.
type ekAllowMethod struct{ s *Service }

func (ekAllowMethod) Match(co *jwt.ConnectOptions) bool {
	return strings.HasPrefix(co.Username, api.EKUserPrefix)
}

func (m ekAllowMethod) Authorize(ctx context.Context, r *authn.Request) (*jwt.UserClaims, error) {
	hash := strings.TrimPrefix(r.Claims.ConnectOptions.Username, api.EKUserPrefix)
	r.Event.Kind, r.Event.EKHash = "connect.enroll", hash
	if m.s.cfg.Misses.Missed(fleet.EKMiss(hash)) {
		return nil, fmt.Errorf("%w: %s", api.ErrNotAllowed, hash)
	}
	_, _, err := store.Get[record.EKAllow](ctx, m.s.cfg.Store.EKAllow, hash)
	if errors.Is(err, api.ErrNotFound) {
		m.s.cfg.Misses.Miss(fleet.EKMiss(hash))
		return nil, fmt.Errorf("%w: %s", api.ErrNotAllowed, hash)
	}
	if err != nil {
		return nil, err // the store failing is not a refusal of the EK
	}
	// An EK hash is no secret (audit, alerts and host list print it): its
	// session may only enroll that very EK, which takes the TPM holding it
	// (credential activation), and nothing else.
	return m.s.sessionUser(r.Claims, "enroll-ek-"+hash[:min(12, len(hash))], api.TagEnrollEK+":"+hash, api.InboxForEK(hash), api.EKScope(hash))
}

// sessionUser may call the v1 endpoints of its scope and receive replies
// under its own inbox prefix, nothing else, for SessionTTL. It refuses a
// scope that is not one plain subject token (its permission could cover
// other scopes). Agents of before scopes may reach api.LegacyV1Subjects, to
// be told to upgrade.
func (s *Service) sessionUser(rc *jwt.AuthorizationRequestClaims, name, tag, inbox string, scope api.Scope) (*jwt.UserClaims, error) {
	if !scope.Valid() {
		return nil, fmt.Errorf("%w: session scope %q", api.ErrBadRequest, scope.ID)
	}
	uc := jwt.NewUserClaims(rc.UserNkey)
	uc.Audience = keys.AccountApp
	uc.Name = name
	uc.Expires = time.Now().Add(s.cfg.SessionTTL).Unix()
	uc.Tags.Add(tag)
	uc.Pub.Allow.Add(scope.Permission())
	uc.Pub.Allow.Add(api.LegacyV1Subjects...)
	uc.Sub.Allow.Add(inbox + ".>")
	uc.Limits.Subs = 10
	uc.Limits.Payload = 64 * 1024
	return uc, nil
}
