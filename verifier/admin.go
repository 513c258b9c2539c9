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

	"github.com/tpmauthn/tpmauthn/attestation"
)

// Operator API (tpmauthnctl), on tpmauthn.admin.<op>. Requests and replies
// are JSON; the types are exported for clients.

// TokenCreateRequest asks for a join token.
type TokenCreateRequest struct {
	Roles []string      `json:"roles"`
	Tags  []string      `json:"tags,omitempty"`
	TTL   time.Duration `json:"ttl"`
}

// TokenCreateResponse carries the token; only its hash is kept.
type TokenCreateResponse struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// IDRequest names one record.
type IDRequest struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

// EKAllowRequest adds an EK to the allow-list.
type EKAllowRequest struct {
	EKHash string   `json:"ek_hash"`
	Roles  []string `json:"roles"`
	Tags   []string `json:"tags,omitempty"`
	Note   string   `json:"note,omitempty"`
}

// CredentialListRequest filters credentials.
type CredentialListRequest struct {
	Host string `json:"host,omitempty"`
}

// Status summarizes the fleet.
type Status struct {
	Version     string         `json:"version"`
	RPID        string         `json:"rp_id"`
	Origin      string         `json:"origin"`
	Approval    string         `json:"approval"`
	EKRoots     int            `json:"ek_roots"`
	Hosts       map[string]int `json:"hosts"`
	Credentials map[string]int `json:"credentials"`
	Tokens      map[string]int `json:"tokens"`
	// AuditKey is the public key that signs the audit trail.
	AuditKey string `json:"audit_key"`
}

const (
	maxTokenTTL = 30 * 24 * time.Hour
	tokenPrefix = "tpmauthn-join-"
)

var roleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func (v *Verifier) adminEndpoints() map[string]func(context.Context, []byte) (any, error) {
	return map[string]func(context.Context, []byte) (any, error){
		"token.create":       v.adminTokenCreate,
		"token.list":         func(ctx context.Context, _ []byte) (any, error) { return list[Token](ctx, v.st.tokens) },
		"host.list":          func(ctx context.Context, _ []byte) (any, error) { return list[Host](ctx, v.st.hosts) },
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
	var req TokenCreateRequest
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
	t := &Token{V: recordVersion, ID: h[:12], Hash: h, Roles: req.Roles, Tags: req.Tags, Created: now, Expires: now.Add(req.TTL)}
	if err := create(ctx, v.st.tokens, h, t); err != nil {
		return nil, err
	}
	v.log.Info("join token created", "token_id", t.ID, "roles", t.Roles, "expires", t.Expires)
	v.recordNow(ctx, Event{Kind: "token.create", Result: "ok", Roles: t.Roles, Actor: "operator",
		Reason: fmt.Sprintf("join token %s, expires %s", t.ID, t.Expires.Format(time.RFC3339))})
	return &TokenCreateResponse{Token: token, ID: t.ID, Expires: t.Expires}, nil
}

func (v *Verifier) adminHostShow(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := get[Host](ctx, v.st.hosts, req.ID)
	return h, err
}

// changeHost applies f to a host with compare-and-set, retrying on conflict.
func (v *Verifier) changeHost(ctx context.Context, id string, f func(*Host) error) (*Host, error) {
	for range 5 {
		h, rev, err := get[Host](ctx, v.st.hosts, id)
		if err != nil {
			return nil, err
		}
		if err := f(h); err != nil {
			return nil, err
		}
		h.Updated = time.Now().UTC()
		if err := update(ctx, v.st.hosts, id, h, rev); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		return h, nil
	}
	return nil, ErrConflict
}

func (v *Verifier) adminHostApprove(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, err := v.changeHost(ctx, req.ID, func(h *Host) error {
		if h.Status != attestation.HostPending {
			return fmt.Errorf("%w: host %s is %s, not pending", ErrBadRequest, h.ID, h.Status)
		}
		return v.activate(h, "operator")
	})
	ev := Event{Kind: "host.approve", Result: "ok", Host: req.ID, Actor: "operator"}
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
	return v.adminHostRemove(ctx, body, attestation.HostRevoked, "revoke")
}

// adminHostOffboard revokes every credential of the host, forgets its EK
// enrollment and records why.
func (v *Verifier) adminHostOffboard(ctx context.Context, body []byte) (any, error) {
	return v.adminHostRemove(ctx, body, HostOffboarded, "offboard")
}

func (v *Verifier) adminHostRemove(ctx context.Context, body []byte, status, kind string) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, err := v.revokeHost(ctx, req.ID, status, req.Reason)
	ev := Event{Kind: kind, Result: "ok", Host: req.ID, Reason: req.Reason, Actor: "operator"}
	if err != nil {
		ev.Result, ev.Reason = "error", err.Error()
	} else {
		ev.EKHash = h.EKHash
		v.log.Info("host "+status, "host", h.ID, "reason", req.Reason)
	}
	v.recordNow(ctx, ev)
	return h, err
}

func (v *Verifier) adminCredentialRelease(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := get[Credential](ctx, v.st.creds, req.ID)
	if err != nil {
		return nil, err
	}
	if c.Status != CredQuarantined {
		return nil, fmt.Errorf("%w: credential %s is %s, not quarantined", ErrBadRequest, c.ID, c.Status)
	}
	c, err = v.setCredentialStatus(ctx, req.ID, CredActive, "released: "+req.Reason)
	if err == nil {
		v.recordNow(ctx, Event{Kind: "release", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
	}
	return c, err
}

// adminCredentialRotate asks the credential's agent to rotate it now; the
// agent learns it over its own session (credentials.status).
func (v *Verifier) adminCredentialRotate(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	for range 20 {
		c, rev, err := get[Credential](ctx, v.st.creds, req.ID)
		if err != nil {
			return nil, err
		}
		if c.Status != CredActive || !c.Retires.IsZero() {
			return nil, fmt.Errorf("%w: credential %s is %s (replaced: %v)", ErrBadRequest, c.ID, c.Status, !c.Retires.IsZero())
		}
		c.RotateRequested, c.Updated = true, time.Now().UTC()
		if err := update(ctx, v.st.creds, c.ID, c, rev); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		v.recordNow(ctx, Event{Kind: "rotate.request", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
		return c, nil
	}
	return nil, ErrConflict
}

// AuditReadRequest pages through the audit stream.
type AuditReadRequest struct {
	From uint64 `json:"from"` // stream message sequence (RawEvent.Msg)
	Max  int    `json:"max"`
}

func (v *Verifier) adminAuditRead(ctx context.Context, body []byte) (any, error) {
	var req AuditReadRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if req.Max <= 0 || req.Max > 1000 {
		req.Max = 1000
	}
	return v.audit.readRaw(ctx, req.From, req.Max)
}

func (v *Verifier) adminCredentialList(ctx context.Context, body []byte) (any, error) {
	var req CredentialListRequest
	if len(body) > 0 {
		if err := decode(body, &req); err != nil {
			return nil, err
		}
	}
	all, err := list[Credential](ctx, v.st.creds)
	if err != nil || req.Host == "" {
		return all, err
	}
	return slices.DeleteFunc(all, func(c *Credential) bool { return c.Host != req.Host }), nil
}

func (v *Verifier) adminCredentialShow(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := get[Credential](ctx, v.st.creds, req.ID)
	return c, err
}

func (v *Verifier) adminCredentialRevoke(ctx context.Context, body []byte) (any, error) {
	var req IDRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	c, err := v.setCredentialStatus(ctx, req.ID, CredRevoked, req.Reason)
	if err != nil {
		return nil, err
	}
	v.log.Info("credential revoked", "credential", c.ID, "reason", req.Reason)
	v.recordNow(ctx, Event{Kind: "revoke", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason, Actor: "operator"})
	return c, nil
}

func (v *Verifier) adminEKAllow(ctx context.Context, body []byte) (any, error) {
	var req EKAllowRequest
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
	a := &ekAllow{V: recordVersion, Roles: req.Roles, Tags: req.Tags, Note: req.Note, Created: time.Now().UTC()}
	if err := create(ctx, v.st.ekAllow, req.EKHash, a); err != nil {
		return nil, err
	}
	v.recordNow(ctx, Event{Kind: "ek.allow", Result: "ok", EKHash: req.EKHash, Roles: req.Roles, Reason: req.Note, Actor: "operator"})
	return a, nil
}

func (v *Verifier) adminStatus(ctx context.Context, _ []byte) (any, error) {
	s := &Status{Version: Version, RPID: v.cfg.RPID, Origin: v.cfg.Origin, Approval: v.cfg.Approval,
		Hosts: map[string]int{}, Credentials: map[string]int{}, Tokens: map[string]int{}, AuditKey: pub(v.keys.Issuer)}
	if v.ekTrust != nil {
		s.EKRoots = v.ekTrust.Roots()
	}
	hosts, err := list[Host](ctx, v.st.hosts)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		s.Hosts[h.Status]++
	}
	creds, err := list[Credential](ctx, v.st.creds)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		s.Credentials[c.Status]++
	}
	tokens, err := list[Token](ctx, v.st.tokens)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, t := range tokens {
		s.Tokens[t.State(now)]++
	}
	return s, nil
}
