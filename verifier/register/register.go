// Package register is credential registration (DESIGN.md flow 2) and
// rotation: a single-use challenge, a WebAuthn registration with a `tpm`
// attestation verified by go-webauthn against the fleet CA, an AK that must
// be its host's own, one credential per workload (the workload index), and a
// rotation that the replaced credential vouches for and that retires it.
// Agents also learn here which of their credentials to rotate.
package register

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

type auditor interface {
	RecordNow(context.Context, audit.Event)
}

type alerter interface {
	Alert(kind string, e audit.Event)
}

type akCerts interface {
	RenewAKCert(ctx context.Context, h *record.Host) ([]byte, error)
}

// Config is what registration needs.
type Config struct {
	Fleet  *fleet.Fleet
	RP     *attestation.RelyingParty // verifies registrations against the fleet CA
	RPID   string
	Origin string
	// ChallengeTTL is a registration challenge's lifetime; RotationGrace how
	// long a replaced credential stays valid; MaxAge the age at which agents
	// rotate (0 or negative: never).
	ChallengeTTL, RotationGrace, MaxAge time.Duration
	Trail                               auditor
	Alerts                              alerter
	// AKCerts renews a host's AK certificate before it expires (enroll).
	AKCerts akCerts
	// People redeems the login grants of people's device credentials (nil:
	// only workloads register).
	People persons
	Logger *slog.Logger
}

// Service registers and rotates credentials.
type Service struct {
	cfg      Config
	log      *slog.Logger
	rpIDHash [32]byte
}

// New makes the service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, log: cfg.Logger, rpIDHash: sha256.Sum256([]byte(cfg.RPID))}
}

func random(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	return b, err
}

// maxCredentialIDLen bounds a registered credential's ID (it is a KV key and
// a CONNECT nkey; the agent's are 16 bytes).
const maxCredentialIDLen = 64

// workloadName: what a workload may be called (it appears in NATS user names
// and subject templates, so no dots, wildcards or spaces).
var workloadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// newWorkloadName: what a new workload may be called. Lower case only:
// "billing" and "Billing" would be two workloads of a host that look the
// same in tags, user names and listings. Names registered before this rule
// keep rotating (a rotation names the credential it replaces).
var newWorkloadName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Begin issues a single-use registration challenge (DESIGN.md flow 2).
func (s *Service) Begin(ctx context.Context, body []byte) (_ any, err error) {
	var req api.RegisterBeginRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	rec := &record.Challenge{}
	if req.Person != nil {
		if rec, err = s.beginPerson(ctx, &req); err != nil {
			return nil, err
		}
	} else if rec.Reissue, err = s.checkWorkload(ctx, &req); err != nil {
		return nil, err
	}
	h, err := s.cfg.Fleet.ActiveHost(ctx, req.HostID)
	if err != nil {
		return nil, err
	}
	// The host's current AK certificate, renewed when it nears its end:
	// the agent attests with it (and so learns of a renewal in time).
	akCert, err := s.cfg.AKCerts.RenewAKCert(ctx, h)
	if err != nil {
		return nil, err
	}
	chal, err := random(32)
	if err != nil {
		return nil, err
	}
	uh, err := random(32)
	if err != nil {
		return nil, err
	}
	exp := time.Now().Add(s.cfg.ChallengeTTL).UTC()
	rec.V, rec.Host, rec.Workload, rec.UserHandle, rec.Expires, rec.RotateFrom = record.Version, req.HostID, req.Workload, uh, exp, req.RotateFrom
	if err := store.Create(ctx, s.cfg.Fleet.Store.Challenges, b64(chal), rec); err != nil {
		return nil, err
	}
	return &api.RegisterBeginResponse{Challenge: chal, UserHandle: uh, RPID: s.cfg.RPID, Origin: s.cfg.Origin, Expires: exp, AKCert: akCert}, nil
}

// checkWorkload checks a workload's registration request: its name, its
// host's session, and that it may have a new credential (see
// checkRotateFrom).
func (s *Service) checkWorkload(ctx context.Context, req *api.RegisterBeginRequest) (reissue string, err error) {
	if !workloadName.MatchString(req.Workload) {
		return "", fmt.Errorf("%w: workload name %q: use letters, digits, '-' and '_' (at most 63)", api.ErrBadRequest, req.Workload)
	}
	if req.RotateFrom == "" && !newWorkloadName.MatchString(req.Workload) {
		return "", fmt.Errorf("%w: workload name %q: new workloads are named in lower case (a-z, digits, '-' and '_'); rename it %q", api.ErrBadRequest, req.Workload, strings.ToLower(req.Workload))
	}
	if err := s.requesterIsHost(ctx, req.HostID); err != nil {
		return "", err
	}
	return s.checkRotateFrom(ctx, req.HostID, req.Workload, req.RotateFrom)
}

// Finish verifies the registration and stores the credential.
func (s *Service) Finish(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("register")
	defer func() {
		if err != nil {
			ev.Reason = err.Error()
		}
		s.cfg.Trail.RecordNow(ctx, ev)
	}()
	var req api.RegisterFinishRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	ev.Host, ev.Workload = req.HostID, req.Workload
	if err := s.requesterIsHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	if req.Response == nil {
		return nil, fmt.Errorf("%w: no registration response", api.ErrBadRequest)
	}
	key := b64(req.Challenge)
	ch, rev, err := store.Get[record.Challenge](ctx, s.cfg.Fleet.Store.Challenges, key)
	if errors.Is(err, api.ErrNotFound) {
		return nil, api.ErrChallenge
	}
	if err != nil {
		return nil, err // the store failing: the challenge may still be good
	}
	if err := store.Take(ctx, s.cfg.Fleet.Store.Challenges, key, rev); errors.Is(err, api.ErrConflict) {
		return nil, fmt.Errorf("%w: used concurrently", api.ErrChallenge)
	} else if err != nil {
		return nil, err
	}
	if ch.Host != req.HostID || ch.Workload != req.Workload || time.Now().After(ch.Expires) {
		return nil, fmt.Errorf("%w: issued for another host or workload, or expired", api.ErrChallenge)
	}
	h, err := s.cfg.Fleet.ActiveHost(ctx, req.HostID)
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(req.Response)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	reg, err := s.cfg.RP.VerifyRegistration(req.Challenge, ch.UserHandle, js)
	if err != nil {
		return nil, err
	}
	if len(reg.CredentialID) < 16 || len(reg.CredentialID) > maxCredentialIDLen {
		return nil, fmt.Errorf("%w: credential ID of %d bytes: 16 to %d", api.ErrBadRequest, len(reg.CredentialID), maxCredentialIDLen)
	}
	ev.Credential = b64(reg.CredentialID)
	if err := akBelongsTo(reg.AKCert, h); err != nil {
		s.cfg.Alerts.Alert(alert.AKMismatch, audit.Event{Host: h.ID, Workload: req.Workload, Credential: ev.Credential, Reason: err.Error()})
		return nil, err
	}
	if ch.Person != "" {
		return s.finishPerson(ctx, ch, h, reg, &ev)
	}
	now := time.Now().UTC()
	cred := &record.Credential{
		V: record.Version, ID: b64(reg.CredentialID), Host: h.ID, Workload: req.Workload,
		PublicKey: reg.PublicKey, UserHandle: ch.UserHandle, Counter: reg.Counter,
		Status: api.CredentialActive, Created: now, Updated: now,
	}
	var old *record.Credential
	if ch.RotateFrom != "" {
		if old, err = s.checkRotationProof(ctx, ch, req, reg.CredentialID); err != nil {
			return nil, err
		}
		cred.Lineage = old.Nkey()
		ev.Kind, ev.Reason = "rotate", "replaces "+old.ID
	}
	if ch.Reissue != "" {
		ev.Reason = "reissued in place of revoked " + ch.Reissue
	}
	// The record first, then the workload index: an ID that exists already
	// (another host's credential) is refused before the index could name it.
	if err := store.Create(ctx, s.cfg.Fleet.Store.Credentials, cred.ID, cred); errors.Is(err, api.ErrConflict) {
		return nil, fmt.Errorf("%w: credential ID %s exists", api.ErrConflict, cred.ID)
	} else if err != nil {
		return nil, err
	}
	s.cfg.Fleet.CredentialCreated(cred.ID)
	if err := s.claimWorkload(ctx, h.ID, req.Workload, cred.ID, ch); err != nil {
		if derr := s.cfg.Fleet.Store.Credentials.Delete(context.WithoutCancel(ctx), cred.ID); derr != nil {
			s.log.Error("registration refused, but its credential record stays", "credential", cred.ID, "error", derr)
		}
		return nil, err
	}
	var retires time.Time
	if old != nil {
		if retires, err = s.retire(ctx, old.ID, cred.ID); err != nil {
			return nil, err
		}
	}
	ev.Result = "ok"
	s.log.Info("credential registered", "credential", cred.ID, "host", h.ID, "workload", cred.Workload)
	return &api.RegisterFinishResponse{CredentialID: cred.ID, Retires: retires}, nil
}

// akBelongsTo requires the attesting AK to be the host's own: a valid AK
// certificate of another host must not register credentials for this one.
func akBelongsTo(akCert *x509.Certificate, h *record.Host) error {
	want, err := x509.ParsePKIXPublicKey(h.AKPublic)
	if err != nil {
		return fmt.Errorf("host %s AK: %w", h.ID, err)
	}
	if k, ok := akCert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(want) {
		return fmt.Errorf("%w: the attesting AK is not host %s's", attestation.ErrAttestation, h.ID)
	}
	return nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// requesterIsHost requires the request to come from the host it names: its
// agent's scope (api.HostScope), which only the agent's sessions (its
// credential's, its host proof's) may publish to. Any other session (another
// host's, a join token's, an allow-listed EK's) is refused.
func (s *Service) requesterIsHost(ctx context.Context, hostID string) error {
	if natsapi.CallerIsHost(ctx, hostID) {
		return nil
	}
	return fmt.Errorf("%w: only host %s's own agent may register its credentials", api.ErrNotFound, hostID)
}

// checkRotateFrom: a workload that has a credential gets another only by a
// rotation that names it (and, at finish, a proof it signed), or, once that
// credential is revoked, after an operator reissued it (credential.reissue):
// then it returns the revoked credential's ID, which the registration
// replaces in the workload index.
func (s *Service) checkRotateFrom(ctx context.Context, host, workload, from string) (reissue string, err error) {
	idx, _, err := store.Get[record.WorkloadIndex](ctx, s.cfg.Fleet.Store.Workloads, host+"."+workload)
	switch {
	case errors.Is(err, api.ErrNotFound):
		if from != "" {
			return "", fmt.Errorf("%w: workload %s has no credential to rotate from", api.ErrBadRequest, workload)
		}
		return "", nil
	case err != nil:
		return "", err
	case from == "":
		return s.checkReissue(ctx, workload, idx)
	case from != idx.Credential:
		return "", fmt.Errorf("%w: rotate_from %s is not workload %s's current credential", api.ErrBadRequest, from, workload)
	}
	old, _, err := store.Get[record.Credential](ctx, s.cfg.Fleet.Store.Credentials, from)
	if err != nil {
		return "", err
	}
	if old.Host != host || old.Workload != workload {
		return "", fmt.Errorf("%w: credential %s is not workload %s's of host %s", api.ErrBadRequest, from, workload, host)
	}
	if old.Status != api.CredentialActive || old.Retired(time.Now()) {
		return "", fmt.Errorf("%w: credential %s is %s and cannot vouch for a successor", api.ErrRevoked, old.ID, old.Status)
	}
	return "", nil
}

// checkReissue allows a registration without rotation for a workload that
// has a credential only if it is revoked and an operator reissued it.
// Revoked without a reissue is ErrRevoked (the agent's cue that an operator
// must act), anything else ErrConflict.
func (s *Service) checkReissue(ctx context.Context, workload string, idx *record.WorkloadIndex) (string, error) {
	cur, _, err := store.Get[record.Credential](ctx, s.cfg.Fleet.Store.Credentials, idx.Credential)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return "", err
	}
	switch {
	case idx.ReissueAllowed(cur):
		return idx.Credential, nil
	case cur != nil && cur.Status == api.CredentialRevoked:
		return "", fmt.Errorf("%w: workload %s's credential %s is revoked: an operator may let this host register a new one with 'tpmauthnctl credential reissue %s'",
			api.ErrRevoked, workload, idx.Credential, idx.Credential)
	}
	return "", fmt.Errorf("%w: workload %s already has credential %s: rotate from it (its signature vouches for the new one), or revoke and reissue it", api.ErrConflict, workload, idx.Credential)
}

// checkRotationProof verifies that the replaced credential signed
// RotationChallenge(challenge, new ID), and accepts its counter.
func (s *Service) checkRotationProof(ctx context.Context, ch *record.Challenge, req api.RegisterFinishRequest, newID []byte) (*record.Credential, error) {
	if req.RotationProof == nil {
		return nil, fmt.Errorf("%w: a rotation needs a proof signed by the replaced credential", attestation.ErrAttestation)
	}
	proof, err := attestation.DecodeAssertionResponse(req.RotationProof)
	if err != nil {
		return nil, err
	}
	if b64(proof.CredentialID) != ch.RotateFrom {
		return nil, fmt.Errorf("%w: rotation proof is by %s, not %s", attestation.ErrAttestation, b64(proof.CredentialID), ch.RotateFrom)
	}
	unlock := s.cfg.Fleet.Lock(ch.RotateFrom)
	defer unlock()
	old, _, err := store.Mutate(ctx, s.cfg.Fleet.Store.Credentials, ch.RotateFrom, func(old *record.Credential) error {
		if old.Host != ch.Host || old.Workload != ch.Workload {
			return fmt.Errorf("%w: credential %s is not workload %s's of host %s", api.ErrBadRequest, old.ID, ch.Workload, ch.Host)
		}
		if old.Status != api.CredentialActive || old.Retired(time.Now()) {
			return fmt.Errorf("%w: credential %s is %s", api.ErrRevoked, old.ID, old.Status)
		}
		pub, err := attestation.ParseCOSEKey(old.PublicKey)
		if err != nil {
			return err
		}
		counter, err := attestation.VerifyAssertion(proof, pub, attestation.AssertionCheck{
			RPIDHash: s.rpIDHash, Origin: attestation.VerifierOrigin(s.cfg.RPID), Challenge: attestation.RotationChallenge(req.Challenge, newID), RequireUV: true,
		})
		if err != nil {
			return fmt.Errorf("rotation proof: %w", err)
		}
		if err := old.AcceptCounter(counter); err != nil {
			return fmt.Errorf("rotation proof: %w: %w", api.ErrReplay, err)
		}
		return nil
	})
	return old, err
}

// claimWorkload points the workload index at the new credential: created
// for a first registration, compare-and-set from the old one for a rotation
// or from the revoked one for a reissue (which must still be allowed).
func (s *Service) claimWorkload(ctx context.Context, host, workload, cred string, ch *record.Challenge) error {
	key := host + "." + workload
	rec := &record.WorkloadIndex{V: record.Version, Credential: cred}
	from := ch.RotateFrom
	if from == "" && ch.Reissue == "" {
		if err := store.Create(ctx, s.cfg.Fleet.Store.Workloads, key, rec); errors.Is(err, api.ErrConflict) {
			return fmt.Errorf("%w: workload %s registered concurrently", api.ErrConflict, workload)
		} else if err != nil {
			return err
		}
		return nil
	}
	idx, rev, err := store.Get[record.WorkloadIndex](ctx, s.cfg.Fleet.Store.Workloads, key)
	if err != nil {
		return err
	}
	if ch.Reissue != "" {
		from = ch.Reissue
		if idx.Reissued.IsZero() {
			return fmt.Errorf("%w: the reissue of workload %s was used concurrently", api.ErrConflict, workload)
		}
	}
	if idx.Credential != from {
		return fmt.Errorf("%w: workload %s was rotated concurrently", api.ErrConflict, workload)
	}
	_, err = store.Update(ctx, s.cfg.Fleet.Store.Workloads, key, rec, rev)
	return err
}

// retire gives a replaced credential its grace period. Its failure fails
// the registration: a replaced credential that is never retired would stay
// valid for good.
func (s *Service) retire(ctx context.Context, id, by string) (time.Time, error) {
	c, _, err := store.Mutate(ctx, s.cfg.Fleet.Store.Credentials, id, func(c *record.Credential) error {
		now := time.Now().UTC()
		c.Retires, c.ReplacedBy, c.RotateRequested, c.Updated = now.Add(s.cfg.RotationGrace), by, false, now
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("retire replaced credential %s: %w", id, err)
	}
	s.log.Info("credential rotated", "old", id, "new", by, "retires", c.Retires)
	return c.Retires, nil
}

// CredentialStatus tells an agent which credentials to rotate.
func (s *Service) CredentialStatus(ctx context.Context, body []byte) (any, error) {
	var req api.CredentialStatusRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if !natsapi.CallerIsHost(ctx, req.HostID) {
		return nil, fmt.Errorf("%w: only host %s's own agent may ask", api.ErrNotFound, req.HostID)
	}
	if _, err := s.cfg.Fleet.ActiveHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	keys, err := store.Keys(ctx, s.cfg.Fleet.Store.Workloads, req.HostID+".*")
	if err != nil {
		return nil, err
	}
	out := []api.CredentialState{}
	now := time.Now()
	for _, key := range keys {
		idx, _, err := store.Get[record.WorkloadIndex](ctx, s.cfg.Fleet.Store.Workloads, key)
		if err != nil {
			continue
		}
		c, _, err := store.Get[record.Credential](ctx, s.cfg.Fleet.Store.Credentials, idx.Credential)
		if err != nil {
			continue
		}
		st := api.CredentialState{ID: c.ID, Workload: c.Workload, Status: c.Status, Created: c.Created, Retires: c.Retires, Reissue: idx.ReissueAllowed(c)}
		if s.cfg.MaxAge > 0 {
			st.RotateBy = c.Created.Add(s.cfg.MaxAge)
		}
		if c.RotateRequested {
			st.RotateBy = now.UTC()
		}
		out = append(out, st)
	}
	return out, nil
}
