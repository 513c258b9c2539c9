package verifier

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

const (
	maxTokenTTL = 30 * 24 * time.Hour
	tokenPrefix = "tpmauthn-join-"
)

var roleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func (v *Verifier) adminEndpoints() map[string]func(context.Context, []byte) (any, error) {
	return map[string]func(context.Context, []byte) (any, error){
		"token.create":       v.adminTokenCreate,
		"token.list":         func(ctx context.Context, _ []byte) (any, error) { return list[record.Token](ctx, v.st.tokens) },
		"host.list":          func(ctx context.Context, _ []byte) (any, error) { return list[record.Host](ctx, v.st.hosts) },
		"host.show":          v.adminHostShow,
		"host.approve":       v.adminHostApprove,
		"host.revoke":        v.adminHostRevoke,
		"credential.list":    v.adminCredentialList,
		"credential.show":    v.adminCredentialShow,
		"credential.revoke":  v.adminCredentialRevoke,
		"credential.release": v.adminCredentialRelease,
		"credential.rotate":  v.adminCredentialRotate,
		"host.offboard":      v.adminHostOffboard,
		"audit.read":         v.adminAuditRead,
		"ek.allow":           v.adminEKAllow,
		"status":             v.adminStatus,
	}
}

func checkNames(kind string, names []string) error {
	for _, n := range names {
		if !roleName.MatchString(n) {
			return fmt.Errorf("%w: %s %q: use letters, digits, '.', '-' and '_'", ErrBadRequest, kind, n)
		}
	}
	return nil
}

func (v *Verifier) adminTokenCreate(ctx context.Context, body []byte) (any, error) {
	var req api.TokenCreateRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := errors.Join(checkNames("role", req.Roles), checkNames("tag", req.Tags)); err != nil {
		return nil, err
	}
	if req.TTL <= 0 || req.TTL > maxTokenTTL {
		return nil, fmt.Errorf("%w: ttl %v: between 1s and %v", ErrBadRequest, req.TTL, maxTokenTTL)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	h := tokenHash(token)
	now := time.Now().UTC()
	t := &record.Token{V: record.Version, ID: h[:12], Hash: h, Roles: req.Roles, Tags: req.Tags, Created: now, Expires: now.Add(req.TTL)}
	if err := create(ctx, v.st.tokens, h, t); err != nil {
		return nil, err
	}
	v.log.Info("join token created", "token_id", t.ID, "roles", t.Roles, "expires", t.Expires)
	v.recordNow(ctx, audit.Event{Kind: "token.create", Result: "ok", Roles: t.Roles, Actor: "operator",
		Reason: fmt.Sprintf("join token %s, expires %s", t.ID, t.Expires.Format(time.RFC3339))})
	return &api.TokenCreateResponse{Token: token, ID: t.ID, Expires: t.Expires}, nil
}

func (v *Verifier) adminHostShow(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := get[record.Host](ctx, v.st.hosts, req.ID)
	return h, err
}

func (v *Verifier) adminHostApprove(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := mutate(ctx, v.st.hosts, req.ID, func(h *record.Host) error {
		if h.Status != api.HostPending {
			return fmt.Errorf("%w: host %s is %s, not pending", ErrBadRequest, h.ID, h.Status)
		}
		return v.activate(h, "operator")
	})
	ev := audit.Event{Kind: "host.approve", Result: "ok", Host: req.ID, Actor: "operator"}
	if err == nil {
		v.log.Info("host approved", "host", h.ID)
		ev.EKHash, ev.Roles = h.EKHash, h.Roles
	} else {
		ev.Result, ev.Reason = "error", err.Error()
	}
	v.recordNow(ctx, ev)
	return h, err
}

func (v *Verifier) adminHostRevoke(ctx context.Context, body []byte) (any, error) {
	return v.adminHostRemove(ctx, body, api.HostRevoked, "revoke")
}

// adminHostOffboard revokes every credential of the host, forgets its EK
// enrollment and records why.
func (v *Verifier) adminHostOffboard(ctx context.Context, body []byte) (any, error) {
	return v.adminHostRemove(ctx, body, api.HostOffboarded, "offboard")
}

func (v *Verifier) adminHostRemove(ctx context.Context, body []byte, status api.HostStatus, kind string) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, err := v.revokeHost(ctx, req.ID, status, req.Reason)
	ev := audit.Event{Kind: kind, Result: "ok", Host: req.ID, Reason: req.Reason, Actor: "operator"}
	if err != nil {
		ev.Result, ev.Reason = "error", err.Error()
	} else {
		ev.EKHash = h.EKHash
		v.log.Info("host "+string(status), "host", h.ID, "reason", req.Reason)
	}
	v.recordNow(ctx, ev)
	return h, err
}

func (v *Verifier) adminCredentialRelease(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	// The check and the change are one compare-and-set: a revocation that
	// lands in between makes the write conflict, and the re-read sees it.
	c, err := v.setCredentialStatus(ctx, req.ID, api.CredentialActive, "released: "+req.Reason, func(c *record.Credential) error {
		if c.Status != api.CredentialQuarantined {
			return fmt.Errorf("%w: credential %s is %s, not quarantined", ErrBadRequest, c.ID, c.Status)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	v.recordNow(ctx, audit.Event{Kind: "release", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
	return c, nil
}

// adminCredentialRotate asks the credential's agent to rotate it now; the
// agent learns it over its own session (credentials.status).
func (v *Verifier) adminCredentialRotate(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := mutate(ctx, v.st.creds, req.ID, func(c *record.Credential) error {
		if c.Status != api.CredentialActive || !c.Retires.IsZero() {
			return fmt.Errorf("%w: credential %s is %s (replaced: %v)", ErrBadRequest, c.ID, c.Status, !c.Retires.IsZero())
		}
		c.RotateRequested, c.Updated = true, time.Now().UTC()
		return nil
	})
	if err != nil {
		return nil, err
	}
	v.recordNow(ctx, audit.Event{Kind: "rotate.request", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
	return c, nil
}

func (v *Verifier) adminAuditRead(ctx context.Context, body []byte) (any, error) {
	var req api.AuditReadRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if req.Max <= 0 || req.Max > 1000 {
		req.Max = 1000
	}
	return v.audit.ReadRaw(ctx, req.From, req.Max)
}

func (v *Verifier) adminCredentialList(ctx context.Context, body []byte) (any, error) {
	var req api.CredentialListRequest
	if len(body) > 0 {
		if err := decode(body, &req); err != nil {
			return nil, err
		}
	}
	all, err := list[record.Credential](ctx, v.st.creds)
	if err != nil || req.Host == "" {
		return all, err
	}
	return slices.DeleteFunc(all, func(c *record.Credential) bool { return c.Host != req.Host }), nil
}

func (v *Verifier) adminCredentialShow(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := get[record.Credential](ctx, v.st.creds, req.ID)
	return c, err
}

func (v *Verifier) adminCredentialRevoke(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, err := v.setCredentialStatus(ctx, req.ID, api.CredentialRevoked, req.Reason, nil)
	if err != nil {
		return nil, err
	}
	v.log.Info("credential revoked", "credential", c.ID, "reason", req.Reason)
	v.recordNow(ctx, audit.Event{Kind: "revoke", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
	return c, nil
}

func (v *Verifier) adminEKAllow(ctx context.Context, body []byte) (any, error) {
	var req api.EKAllowRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	req.EKHash = strings.ToLower(req.EKHash)
	if len(req.EKHash) != 64 || strings.Trim(req.EKHash, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("%w: ek_hash: 64 hex digits (SHA-256 of the EK's PKIX public key)", ErrBadRequest)
	}
	if err := errors.Join(checkNames("role", req.Roles), checkNames("tag", req.Tags)); err != nil {
		return nil, err
	}
	a := &record.EKAllow{V: record.Version, Roles: req.Roles, Tags: req.Tags, Note: req.Note, Created: time.Now().UTC()}
	if err := create(ctx, v.st.ekAllow, req.EKHash, a); err != nil {
		return nil, err
	}
	v.recordNow(ctx, audit.Event{Kind: "ek.allow", Result: "ok", EKHash: req.EKHash, Roles: req.Roles, Reason: req.Note, Actor: "operator"})
	return a, nil
}

func (v *Verifier) adminStatus(ctx context.Context, _ []byte) (any, error) {
	s := &api.Status{Version: Version, RPID: v.cfg.RPID, Origin: v.cfg.Origin, Approval: v.cfg.Approval,
		Hosts: map[string]int{}, Credentials: map[string]int{}, Tokens: map[string]int{}, AuditKey: keys.Public(v.keys.Issuer)}
	if v.ekTrust != nil {
		s.EKRoots = v.ekTrust.Roots()
	}
	hosts, err := list[record.Host](ctx, v.st.hosts)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		s.Hosts[string(h.Status)]++
	}
	creds, err := list[record.Credential](ctx, v.st.creds)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		s.Credentials[string(c.Status)]++
	}
	tokens, err := list[record.Token](ctx, v.st.tokens)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, t := range tokens {
		s.Tokens[t.State(now)]++
	}
	return s, nil
}
