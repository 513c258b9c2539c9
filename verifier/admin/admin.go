// Package admin is the operator API (tpmauthnctl, on tpmauthn.admin.<op>):
// join tokens, hosts (approve, revoke, offboard), credentials (revoke,
// release a quarantine, ask for a rotation), the EK allow-list, the audit
// trail, a fleet summary and backups (backup.go). Every change is audited
// before the operator hears it is done.
package admin

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/operators"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const (
	maxTokenTTL = 30 * 24 * time.Hour
	tokenPrefix = "tpmauthn-join-"
)

var roleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

type kicker interface {
	// KickAll kicks every live session of the credential and says what it
	// could not kick.
	KickAll(ctx context.Context, c *record.Credential) (int, error)
	// KickUser kicks every session of a NATS user name.
	KickUser(user string) (int, error)
}

type activator interface {
	Activate(h *record.Host, by string) error
}

// Config is what the operator API needs.
type Config struct {
	Fleet    *fleet.Fleet
	Sessions kicker    // kicks the sessions of what is revoked
	Enroll   activator // issues an approved host's AK certificate
	Trail    *auditlog.Trail
	// What the status summary reports.
	Version, RPID, Origin, Approval, AuditKey string
	EKRoots                                   int
	// AuditStream is the audit trail's stream, reported with the buckets.
	AuditStream string
	// Policy is the role policy, reported by status (nil: not reported).
	Policy *policy.Source
	// CAPin is the NATS CA pin join tokens carry ("": none).
	CAPin string
	// People and Offboard serve the person.* operations (nil: refused).
	People   personStore
	Offboard offboarder
	// Nudge tells host's agent now that one of its credentials changed
	// (verifier/nudge; nil: it learns at its next poll).
	Nudge func(host string)

	Logger *slog.Logger
	// Now is the clock of tokens and records (nil: time.Now).
	Now func() time.Time
}

// Service answers the operator API.
type Service struct {
	cfg Config
	st  *store.Store
	log *slog.Logger
}

// New makes the service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, st: cfg.Fleet.Store, log: cfg.Logger}
}

// Endpoints are the operations on api.SubjectAdminPrefix + op.
func (s *Service) Endpoints() []natsapi.Endpoint {
	ops := []struct {
		op string
		h  natsapi.Handler
	}{
		{"token.create", s.tokenCreate},
		{"token.list", func(ctx context.Context, _ []byte) (any, error) { return store.List[record.Token](ctx, s.st.Tokens) }},
		{"host.list", func(ctx context.Context, _ []byte) (any, error) { return store.List[record.Host](ctx, s.st.Hosts) }},
		{"host.show", s.hostShow},
		{"host.approve", s.hostApprove},
		{"host.revoke", s.hostRevoke},
		{"host.offboard", s.hostOffboard},
		{"credential.list", s.credentialList},
		{"credential.show", s.credentialShow},
		{"credential.revoke", s.credentialRevoke},
		{"credential.release", s.credentialRelease},
		{"credential.rotate", s.credentialRotate},
		{"credential.reissue", s.credentialReissue},
		{"audit.read", s.auditRead},
		{"backup.read", s.backupRead},
		{"token.revoke", s.tokenRevoke},
		{"ek.allow", s.ekAllow},
		{"ek.disallow", s.ekDisallow},
		{"status", s.status},
	}
	out := make([]natsapi.Endpoint, len(ops))
	for i, o := range ops {
		out[i] = natsapi.Endpoint{Subject: api.SubjectAdminPrefix + o.op, Handler: o.h}
	}
	return append(out, s.personEndpoints()...)
}

func checkNames(kind string, names []string) error {
	for _, n := range names {
		if !roleName.MatchString(n) {
			return fmt.Errorf("%w: %s %q: use letters, digits, '.', '-' and '_'", api.ErrBadRequest, kind, n)
		}
	}
	return nil
}

func (s *Service) tokenCreate(ctx context.Context, body []byte) (any, error) {
	var req api.TokenCreateRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if err := errors.Join(checkNames("role", req.Roles), checkNames("tag", req.Tags)); err != nil {
		return nil, err
	}
	if req.TTL <= 0 || req.TTL > maxTokenTTL {
		return nil, fmt.Errorf("%w: ttl %v: between 1s and %v", api.ErrBadRequest, req.TTL, maxTokenTTL)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	h := record.TokenHash(token)
	now := s.cfg.Now().UTC()
	t := &record.Token{V: record.Version, ID: h[:12], Hash: h, Roles: req.Roles, Tags: req.Tags, Created: now, Expires: now.Add(req.TTL)}
	if err := store.Create(ctx, s.st.Tokens, h, t); err != nil {
		return nil, err
	}
	s.cfg.Fleet.Misses.Forget(fleet.TokenMiss(h))
	s.log.Info("join token created", "token_id", t.ID, "roles", t.Roles, "expires", t.Expires)
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "token.create", Result: "ok", Roles: t.Roles,
		Reason: fmt.Sprintf("join token %s, expires %s", t.ID, t.Expires.Format(time.RFC3339))}))
	return &api.TokenCreateResponse{Token: api.JoinToken(token, s.cfg.CAPin), CAPin: s.cfg.CAPin, ID: t.ID, Expires: t.Expires}, nil
}

func (s *Service) hostShow(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := store.Get[record.Host](ctx, s.st.Hosts, req.ID)
	return h, err
}

func (s *Service) hostApprove(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := store.Mutate(ctx, s.st.Hosts, req.ID, func(h *record.Host) error {
		if h.Status != api.HostPending {
			return fmt.Errorf("%w: host %s is %s, not pending", api.ErrBadRequest, h.ID, h.Status)
		}
		return s.cfg.Enroll.Activate(h, "operator")
	})
	ev := by(ctx, audit.Event{Kind: "host.approve", Result: "ok", Host: req.ID})
	if err == nil {
		s.log.Info("host approved", "host", h.ID)
		ev.EKHash, ev.Roles = h.EKHash, h.Roles
	} else {
		ev.Result, ev.Reason = "error", err.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	return h, err
}

func (s *Service) hostRevoke(ctx context.Context, body []byte) (any, error) {
	return s.hostRemove(ctx, body, api.HostRevoked, "revoke")
}

// hostOffboard revokes every credential of the host, forgets its EK
// enrollment and records why.
func (s *Service) hostOffboard(ctx context.Context, body []byte) (any, error) {
	return s.hostRemove(ctx, body, api.HostOffboarded, "offboard")
}

func (s *Service) hostRemove(ctx context.Context, body []byte, status api.HostStatus, kind string) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	h, err := s.revokeHost(ctx, req.ID, status, req.Reason)
	ev := by(ctx, audit.Event{Kind: kind, Result: "ok", Host: req.ID, Reason: req.Reason})
	if err != nil {
		ev.Result, ev.Reason = "error", err.Error()
	} else {
		ev.EKHash = h.EKHash
		s.log.Info("host "+string(status), "host", h.ID, "reason", req.Reason)
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	return h, err
}

func (s *Service) credentialRelease(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	// The check and the change are one compare-and-set: a revocation that
	// lands in between makes the write conflict, and the re-read sees it.
	c, err := s.cfg.Fleet.SetCredentialStatus(ctx, req.ID, api.CredentialActive, "released: "+req.Reason, func(c *record.Credential) error {
		if c.Status != api.CredentialQuarantined {
			return fmt.Errorf("%w: credential %s is %s, not quarantined", api.ErrBadRequest, c.ID, c.Status)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "release", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason}))
	return c, nil
}

// credentialRotate asks the credential's agent to rotate it now; the
// agent learns it over its own session (credentials.status).
func (s *Service) credentialRotate(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := store.Mutate(ctx, s.st.Credentials, req.ID, func(c *record.Credential) error {
		if c.Status == api.CredentialRevoked {
			return fmt.Errorf("%w: credential %s is revoked, for good: 'tpmauthnctl credential reissue %s' lets its host register a new credential for workload %s",
				api.ErrBadRequest, c.ID, c.ID, c.Workload)
		}
		if c.Status != api.CredentialActive || !c.Retires.IsZero() {
			return fmt.Errorf("%w: credential %s is %s (replaced: %v)", api.ErrBadRequest, c.ID, c.Status, !c.Retires.IsZero())
		}
		c.RotateRequested, c.Updated = true, s.cfg.Now().UTC()
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "rotate.request", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason}))
	s.nudge(c.Host)
	return c, nil
}

func (s *Service) auditRead(ctx context.Context, body []byte) (any, error) {
	var req api.AuditReadRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if req.Max <= 0 || req.Max > 1000 {
		req.Max = 1000
	}
	return s.cfg.Trail.ReadRaw(ctx, req.From, req.Max)
}

func (s *Service) credentialList(ctx context.Context, body []byte) (any, error) {
	var req api.CredentialListRequest
	if len(body) > 0 {
		if err := natsapi.Decode(body, &req); err != nil {
			return nil, err
		}
	}
	all, err := store.List[record.Credential](ctx, s.st.Credentials)
	if err != nil || req.Host == "" {
		return all, err
	}
	return slices.DeleteFunc(all, func(c *record.Credential) bool { return c.Host != req.Host }), nil
}

func (s *Service) credentialShow(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	c, _, err := store.Get[record.Credential](ctx, s.st.Credentials, req.ID)
	return c, err
}

// nudge tells host's agent (if the credential has a host) to check its
// credentials now.
func (s *Service) nudge(host string) {
	if s.cfg.Nudge != nil && host != "" {
		s.cfg.Nudge(host)
	}
}

func (s *Service) credentialRevoke(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	c, err := s.cfg.Fleet.SetCredentialStatus(ctx, req.ID, api.CredentialRevoked, req.Reason, nil)
	if err != nil {
		return nil, err
	}
	kickErr := s.kick(ctx, c) // before the operator hears it is done; every instance's watch kicks too
	s.nudge(c.Host)
	s.log.Info("credential revoked", "credential", c.ID, "reason", req.Reason)
	// The whole lineage goes with it: a key a rotation replaced stays valid
	// for its grace period, and its live connections with it.
	if err := s.revokeLineage(ctx, c, req.Reason); err != nil {
		s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "revoke", Result: "error", Host: c.Host, Workload: c.Workload, Credential: c.ID,
			Reason: req.Reason + ": revoking the rest of its lineage failed: " + err.Error()}))
		return nil, err
	}
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "revoke", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: req.Reason}))
	if kickErr != nil {
		return nil, kickErr
	}
	return c, nil
}

// kick kicks every live session of a credential taken out of service. What
// it could not kick is audited and reported (api.ErrUnavailable): the
// credential is revoked either way and those sessions end at their expiry,
// but the operator must know, and asking again kicks again.
func (s *Service) kick(ctx context.Context, c *record.Credential) error {
	_, err := s.cfg.Sessions.KickAll(ctx, c)
	if err == nil {
		return nil
	}
	s.log.Error("sessions of a revoked credential not kicked", "credential", c.ID, "error", err)
	s.cfg.Trail.Record(by(ctx, audit.Event{Kind: "kick", Result: "error", Host: c.Host, Workload: c.Workload, Credential: c.ID,
		Reason: err.Error()}))
	return fmt.Errorf("%w: credential %s is revoked, but some of its live sessions could not be kicked (they end at their expiry; revoke again to retry): %w",
		api.ErrUnavailable, c.ID, err)
}

// revokeLineage revokes and kicks every other credential of c's rotation
// lineage (same host, same CONNECT nkey) that is not revoked yet, each with
// its own audit event.
func (s *Service) revokeLineage(ctx context.Context, c *record.Credential, reason string) error {
	creds, err := s.cfg.Fleet.HostCredentials(ctx, c.Host)
	if err != nil {
		return err
	}
	why := "lineage of " + c.ID + " revoked: " + reason
	var kickErrs []error
	for _, o := range creds {
		if o.ID == c.ID || o.Nkey() != c.Nkey() || o.Status == api.CredentialRevoked {
			continue
		}
		r, err := s.cfg.Fleet.SetCredentialStatus(ctx, o.ID, api.CredentialRevoked, why, nil)
		if err != nil {
			return err
		}
		kickErrs = append(kickErrs, s.kick(ctx, r))
		s.cfg.Trail.Record(by(ctx, audit.Event{Kind: "revoke", Result: "ok", Host: r.Host, Workload: r.Workload, Credential: r.ID, Reason: why}))
	}
	return errors.Join(kickErrs...)
}

// tokenRevoke revokes an unused join token, named by its ID (what
// operators see) or its hash.
func (s *Service) tokenRevoke(ctx context.Context, body []byte) (any, error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	tokens, err := store.List[record.Token](ctx, s.st.Tokens)
	if err != nil {
		return nil, err
	}
	hash := ""
	for _, t := range tokens {
		if req.ID != "" && (t.ID == req.ID || t.Hash == req.ID) {
			hash = t.Hash
		}
	}
	if hash == "" {
		return nil, fmt.Errorf("%w: join token %q", api.ErrNotFound, req.ID)
	}
	t, _, err := store.Mutate(ctx, s.st.Tokens, hash, func(t *record.Token) error {
		if t.UsedBy != "" {
			return fmt.Errorf("%w: token %s was used by host %s: revoke or offboard the host", api.ErrBadRequest, t.ID, t.UsedBy)
		}
		if t.Revoked.IsZero() {
			t.Revoked = s.cfg.Now().UTC()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "token.revoke", Result: "ok", Roles: t.Roles,
		Reason: "join token " + t.ID + ": " + req.Reason}))
	return t, nil
}

// ekDisallow removes an EK from the allow-list.
func (s *Service) ekDisallow(ctx context.Context, body []byte) (any, error) {
	var req api.EKAllowRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	hash := strings.ToLower(req.EKHash)
	if _, _, err := store.Get[record.EKAllow](ctx, s.st.EKAllow, hash); err != nil {
		return nil, err
	}
	if err := s.st.EKAllow.Delete(ctx, hash); err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrUnavailable, err)
	}
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "ek.disallow", Result: "ok", EKHash: hash, Reason: req.Note}))
	return &api.EKAllowRequest{EKHash: hash}, nil
}

func (s *Service) ekAllow(ctx context.Context, body []byte) (any, error) {
	var req api.EKAllowRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	req.EKHash = strings.ToLower(req.EKHash)
	if len(req.EKHash) != 64 || strings.Trim(req.EKHash, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("%w: ek_hash: 64 hex digits (SHA-256 of the EK's PKIX public key)", api.ErrBadRequest)
	}
	if err := errors.Join(checkNames("role", req.Roles), checkNames("tag", req.Tags)); err != nil {
		return nil, err
	}
	a := &record.EKAllow{V: record.Version, Roles: req.Roles, Tags: req.Tags, Note: req.Note, Created: s.cfg.Now().UTC()}
	if err := store.Create(ctx, s.st.EKAllow, req.EKHash, a); err != nil {
		return nil, err
	}
	// A refused ek:<hash> CONNECT just before is not remembered here; other
	// instances forget theirs within fleet.MissTTL.
	s.cfg.Fleet.Misses.Forget(fleet.EKMiss(req.EKHash))
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "ek.allow", Result: "ok", EKHash: req.EKHash, Roles: req.Roles, Reason: req.Note}))
	return a, nil
}

func (s *Service) status(ctx context.Context, _ []byte) (any, error) {
	st := &api.Status{Version: s.cfg.Version, RPID: s.cfg.RPID, Origin: s.cfg.Origin, Approval: s.cfg.Approval,
		Hosts: map[string]int{}, Credentials: map[string]int{}, Tokens: map[string]int{}, AuditKey: s.cfg.AuditKey,
		EKRoots: s.cfg.EKRoots}
	if cp, ok := s.cfg.Trail.Checkpoint(); ok {
		st.AuditCheckpoint, _ = json.Marshal(cp)
	}
	st.AuditBytes, st.AuditMaxBytes = s.cfg.Trail.Usage()
	hosts, err := store.List[record.Host](ctx, s.st.Hosts)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		st.Hosts[string(h.Status)]++
	}
	creds, err := store.List[record.Credential](ctx, s.st.Credentials)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		st.Credentials[string(c.Status)]++
	}
	tokens, err := store.List[record.Token](ctx, s.st.Tokens)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	for _, t := range tokens {
		st.Tokens[t.State(now)]++
	}
	st.Streams = s.st.Health(ctx, s.cfg.AuditStream)
	st.Time = s.cfg.Now().UTC()
	if s.cfg.Policy != nil {
		st.Policy = policyState(s.cfg.Policy)
	}
	return st, nil
}

func policyState(ps *policy.Source) *api.PolicyState {
	path, mod, err := ps.State()
	p := ps.Current()
	out := &api.PolicyState{File: path, Modified: mod, Roles: len(p.Roles), Bindings: len(p.Bindings)}
	if p.People != nil {
		out.IdPs = len(p.People.IdPs)
		out.Bindings += len(p.People.Bindings)
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}

// revokeHost sets the host's status and revokes every credential of it (so
// that a connect racing with the revocation is ordered by the credential's
// compare-and-set, and its session is kicked).
func (s *Service) revokeHost(ctx context.Context, id string, status api.HostStatus, reason string) (*record.Host, error) {
	h, _, err := store.Mutate(ctx, s.st.Hosts, id, func(h *record.Host) error {
		return h.Transition(status, reason, s.cfg.Now())
	})
	if err != nil {
		return nil, err
	}
	creds, err := s.cfg.Fleet.HostCredentials(ctx, id)
	if err != nil {
		return nil, err
	}
	// Every credential is revoked whatever a kick says; what could not be
	// kicked is reported at the end.
	var kickErrs []error
	for _, c := range creds {
		if c.Status == api.CredentialRevoked {
			kickErrs = append(kickErrs, s.kick(ctx, c))
			continue
		}
		why := "host " + string(status) + ": " + reason
		c, err := s.cfg.Fleet.SetCredentialStatus(ctx, c.ID, api.CredentialRevoked, why, nil)
		if err != nil {
			return nil, err
		}
		kickErrs = append(kickErrs, s.kick(ctx, c))
		// Each credential's own event, so that a search by credential finds
		// it; the operator's host event follows.
		s.cfg.Trail.Record(by(ctx, audit.Event{Kind: "revoke", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: why}))
	}
	// The host's enrollment sessions go too: its host proof's, and its join
	// token's (named after the token, as Via says).
	users := []string{"enroll-host-" + h.ID}
	if t, ok := strings.CutPrefix(h.Via, "token:"); ok {
		users = append(users, "enroll-token-"+t)
	}
	for _, u := range users {
		if _, err := s.cfg.Sessions.KickUser(u); err != nil {
			kickErrs = append(kickErrs, err)
		}
	}
	if status == api.HostOffboarded {
		// Forget the TPM's claims: it may enroll again, as a new host.
		for _, k := range append([]string{h.EKHash}, h.Claims...) {
			if err := s.st.EKs.Delete(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil, fmt.Errorf("forget EK enrollment: %w", err)
			}
		}
	}
	if err := errors.Join(kickErrs...); err != nil {
		return nil, err
	}
	return h, nil
}

// by stamps ev with who called the operator API (verifier/operators named
// them): the operator key, or a person and their credential.
func by(ctx context.Context, ev audit.Event) audit.Event {
	a := operators.ActorOf(ctx)
	ev.Actor, ev.Person = a.Name, a.Person
	return ev
}
