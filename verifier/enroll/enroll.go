// Package enroll is host enrollment (DESIGN.md flow 1): a join token or an
// EK allow-list entry buys an enrollment session through auth callout (the
// three authn methods here); the EK certificate must chain to a
// manufacturer root (fail closed); credential activation proves the AK sits
// beside that EK; the fleet CA then issues the AK certificate (WebAuthn
// §8.3.1 profile), at once or once an operator approves (Activate).
package enroll

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Approval modes for new hosts.
const (
	ApprovalAuto   = "auto"   // active at once
	ApprovalManual = "manual" // pending until an operator approves
)

type auditor interface {
	Record(audit.Event)
	RecordNow(context.Context, audit.Event)
}

type alerter interface {
	Alert(kind string, e audit.Event)
}

// Config is what enrollment needs.
type Config struct {
	Store      *store.Store
	EKTrust    *attestation.EKTrust // nil: no EK certificate is trusted (the allow-list only)
	FleetCA    *x509.Certificate
	FleetCAKey *ecdsa.PrivateKey
	Approval   string
	// AKCertValidity is the AK certificates' lifetime; SessionTTL the
	// enrollment session JWT's.
	AKCertValidity, SessionTTL time.Duration
	RPID, Origin               string
	Trail                      auditor
	Alerts                     alerter
	// Misses caches look-ups of tokens, allow-listed EKs and hosts that
	// found nothing (nil: a private one).
	Misses *fleet.Misses
	Logger *slog.Logger
	// Now is the clock of tokens and records (nil: time.Now); session JWTs
	// and certificates keep the real one, which servers and peers share.
	Now func() time.Time
}

// Service enrolls hosts.
type Service struct {
	cfg Config
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
	if cfg.Misses == nil {
		cfg.Misses = fleet.NewMisses(fleet.MissTTL, fleet.MaxMiss)
	}
	return &Service{cfg: cfg, log: cfg.Logger}
}

// grant is what authorizes an enrollment: a join token or an allow-list entry.
type grant struct {
	roles, tags []string
	tokenHash   string // empty for the allow-list
}

// Begin checks the EK and answers with a credential-activation
// challenge for the AK (DESIGN.md flow 1).
func (s *Service) Begin(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("enroll.begin")
	defer func() {
		if err != nil { // a begun enrollment is audited when it finishes
			ev.Reason = err.Error()
			s.cfg.Trail.RecordNow(ctx, ev)
		}
	}()
	var req api.EnrollBeginRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if !hostnameRE.MatchString(req.Hostname) {
		return nil, fmt.Errorf("%w: hostname %q: letters, digits, '.', '-' and '_', at most 253", api.ErrBadRequest, req.Hostname)
	}
	ekPub, err := x509.ParsePKIXPublicKey(req.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public key: %w", api.ErrBadRequest, err)
	}
	ekHash, err := attestation.EKHash(ekPub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	ev.EKHash = ekHash
	tokenHash := ""
	if req.Token != "" {
		tokenHash = record.TokenHash(req.Token)
	}
	if err := requesterBound(ctx, tokenHash, ekHash); err != nil {
		return nil, err
	}
	// An enrolled TPM is refused before its grant is looked at (all its
	// keys are checked below).
	if err := s.checkClaims(ctx, []string{ekHash}); err != nil {
		return nil, err
	}
	g, err := s.authorizeEnrollment(ctx, req.Token, ekHash)
	if err != nil {
		return nil, err
	}
	if err := s.checkEK(&req, ekPub, g); err != nil {
		return nil, s.untrustedEK(err, ekHash)
	}
	akParams := attest.AttestationParameters{
		Public: req.AK.Public, CreateData: req.AK.CreateData,
		CreateAttestation: req.AK.CreateAttestation, CreateSignature: req.AK.CreateSignature,
	}
	act, err := activation(&req, ekPub, akParams)
	if err != nil {
		return nil, err
	}
	more, err := challengeMoreEKs(&req, ekHash, akParams)
	if err != nil {
		return nil, err
	}
	akPub, err := attest.ParseAKPublic(req.AK.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public: %s", attestation.ErrAttestation, err)
	}
	akDER, err := x509.MarshalPKIXPublicKey(akPub.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public: %w", attestation.ErrAttestation, err)
	}
	akH, err := akHash(akDER)
	if err != nil {
		return nil, err
	}
	id := attestation.NewTPMIdentity(req.TPM.Manufacturer, req.TPM.VendorString, req.TPM.FirmwareVersion1)
	sess := record.EnrollSession{
		V: record.Version, Secret: act.Secret, EKHash: ekHash, AKPublic: akDER, AKHash: akH,
		TPM: record.TPMIdent(id), Hostname: req.Hostname, Token: g.tokenHash, Created: s.cfg.Now().UTC(),
	}
	resp := &api.EnrollBeginResponse{Credential: act.Challenge.Credential, Secret: act.Challenge.Secret}
	for _, m := range more {
		sess.MoreEKs, sess.MoreSecrets = append(sess.MoreEKs, m.hash), append(sess.MoreSecrets, m.act.Secret)
		resp.MoreChallenges = append(resp.MoreChallenges, api.EKChallenge{Credential: m.act.Challenge.Credential, Secret: m.act.Challenge.Secret})
	}
	// Any of the TPM's keys held by another host refuses the enrollment
	// (checked again, atomically, when Finish claims them).
	if err := s.checkClaims(ctx, sess.Claims()); err != nil {
		return nil, err
	}
	sid, err := randomID(16)
	if err != nil {
		return nil, err
	}
	if err := store.Create(ctx, s.cfg.Store.Enroll, sid, &sess); err != nil {
		return nil, err
	}
	resp.Session = sid
	return resp, nil
}

// activation challenges the EK: for its own name algorithm and symmetric
// scheme when the agent sent its public area (which must hold the key the
// request names), else go-attestation's (the RSA low-range EK's).
func activation(req *api.EnrollBeginRequest, ekPub crypto.PublicKey, ak attest.AttestationParameters) (*attestation.Activation, error) {
	if len(req.EKPublicArea) == 0 {
		return attestation.NewActivation(ekPub, ak)
	}
	pub, err := attestation.EKPublicKey(req.EKPublicArea)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(ekPub) {
		return nil, fmt.Errorf("%w: EK public area is for another key", api.ErrBadRequest)
	}
	return attestation.NewActivationForEK(req.EKPublicArea, ak)
}

// hostnameRE: what a host may call itself. The hostname is a label the
// client claims (identity is the EK), but it becomes part of every session's
// NATS user name (workload@hostname) and of what operators read, so it is
// kept to what a DNS name may hold.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$`)

// requesterBound requires the request to come from the enrollment session
// of this very grant: the join token's (tokenHash) or, without a token, the
// allow-listed EK's, as the subject's scope names it (only that session may
// publish there). A session of one grant cannot spend another, and an EK
// hash (no secret) only opens a session for enrolling that EK.
func requesterBound(ctx context.Context, tokenHash, ekHash string) error {
	s, _ := natsapi.Caller(ctx)
	if tokenHash != "" {
		if s.Kind == api.ScopeToken && subtle.ConstantTimeCompare([]byte(s.ID), []byte(tokenHash)) == 1 {
			return nil
		}
		return fmt.Errorf("%w: this session was not opened with this join token", api.ErrTokenInvalid)
	}
	if s == api.EKScope(ekHash) {
		return nil
	}
	return fmt.Errorf("%w: this session was not opened for EK %s", api.ErrNotAllowed, ekHash)
}

// untrustedEK says what to do about an EK certificate checkEK refused. One
// from a manufacturer the verifier was not told to trust is configuration:
// logged with the issuer and the EK hash, and the refusal names both fixes.
// Anything else (a certificate for another key, outside the profile, past
// its validity, off the pinned intermediates) is a tamper signal.
func (s *Service) untrustedEK(err error, ekHash string) error {
	var unknown *attestation.UnknownIssuerError
	switch {
	case errors.As(err, &unknown):
		s.log.Warn("enrollment refused: EK certificate from a manufacturer this verifier does not trust",
			"issuer", unknown.Issuer, "ek_hash", ekHash, "fix", "add its root CA to --ek-ca-dir, or: tpmauthnctl ek allow "+ekHash)
		return fmt.Errorf("%w; add that manufacturer's root CA to the verifier's --ek-ca-dir, or allow this TPM by its EK: tpmauthnctl ek allow %s", err, ekHash)
	case errors.Is(err, attestation.ErrEKUntrusted):
		s.cfg.Alerts.Alert(alert.EKUntrusted, audit.Event{EKHash: ekHash, Reason: err.Error()})
	}
	return err
}

// checkEK requires an EK certificate that chains to a manufacturer root and
// certifies the EK presented. An allow-listed EK names itself and needs no
// certificate; if it sends one, the certificate must still match.
func (s *Service) checkEK(req *api.EnrollBeginRequest, ekPub any, g *grant) error {
	if len(req.EKCert) == 0 {
		if g.tokenHash == "" {
			return nil
		}
		return fmt.Errorf("%w: no EK certificate sent; enroll this TPM through the EK allow-list instead", attestation.ErrEKUntrusted)
	}
	cert, err := attest.ParseEKCertificate(req.EKCert)
	if err != nil {
		return fmt.Errorf("%w: EK certificate: %s", attestation.ErrEKUntrusted, err)
	}
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(ekPub) {
		return fmt.Errorf("%w: EK certificate is for another key", attestation.ErrEKUntrusted)
	}
	if g.tokenHash == "" {
		return nil
	}
	return s.cfg.EKTrust.VerifyEKCertificate(cert, nil, time.Now())
}

// authorizeEnrollment finds the token or allow-list entry that permits
// enrolling this EK. It does not consume the token.
func (s *Service) authorizeEnrollment(ctx context.Context, token, ekHash string) (*grant, error) {
	if token != "" {
		t, _, err := s.lookupToken(ctx, token)
		if err != nil {
			return nil, err
		}
		return &grant{roles: t.Roles, tags: t.Tags, tokenHash: t.Hash}, nil
	}
	a, _, err := store.Get[record.EKAllow](ctx, s.cfg.Store.EKAllow, ekHash)
	if errors.Is(err, api.ErrNotFound) {
		return nil, api.ErrNotAllowed
	}
	if err != nil {
		return nil, err
	}
	return &grant{roles: a.Roles, tags: a.Tags}, nil
}

// lookupToken returns a valid (unused, unexpired) token and its revision.
func (s *Service) lookupToken(ctx context.Context, token string) (*record.Token, uint64, error) {
	hash := record.TokenHash(token)
	if s.cfg.Misses.Missed(fleet.TokenMiss(hash)) {
		return nil, 0, api.ErrTokenInvalid
	}
	t, rev, err := store.Get[record.Token](ctx, s.cfg.Store.Tokens, hash)
	if errors.Is(err, api.ErrNotFound) {
		s.cfg.Misses.Miss(fleet.TokenMiss(hash))
		return nil, 0, api.ErrTokenInvalid
	}
	if err != nil {
		return nil, 0, err
	}
	if st := t.State(s.cfg.Now()); st != "valid" {
		return nil, 0, fmt.Errorf("%w: token %s is %s", api.ErrTokenInvalid, t.ID, st)
	}
	return t, rev, nil
}

// Finish checks the activated secret, consumes the token and records
// the host; with automatic approval it also issues the AK certificate.
func (s *Service) Finish(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("enroll")
	defer func() {
		if err != nil {
			ev.Reason = err.Error()
		}
		s.cfg.Trail.RecordNow(ctx, ev)
	}()
	var req api.EnrollFinishRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	sess, rev, err := store.Get[record.EnrollSession](ctx, s.cfg.Store.Enroll, req.Session)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("%w: enrollment session unknown or expired", api.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	// Only the session that began it may finish (or spend) an enrollment.
	if err := requesterBound(ctx, sess.Token, sess.EKHash); err != nil {
		return nil, err
	}
	if err := store.Take(ctx, s.cfg.Store.Enroll, req.Session, rev); err != nil {
		return nil, fmt.Errorf("enrollment session already used: %w", err)
	}
	ev.EKHash = sess.EKHash
	if err := attestation.CheckActivation(sess.Secret, req.Secret); err != nil {
		return nil, err
	}
	if len(req.MoreSecrets) != len(sess.MoreSecrets) {
		return nil, fmt.Errorf("%w: %d secrets for %d more EKs", attestation.ErrActivationFailed, len(req.MoreSecrets), len(sess.MoreSecrets))
	}
	for i, want := range sess.MoreSecrets {
		if err := attestation.CheckActivation(want, req.MoreSecrets[i]); err != nil {
			return nil, fmt.Errorf("EK %s: %w", sess.MoreEKs[i], err)
		}
	}
	hostID, err := randomHex(8)
	if err != nil {
		return nil, err
	}
	hostID = "h-" + hostID
	// The TPM first (all its keys), then the grant: an enrollment refused
	// because the TPM is enrolled already must not spend the token (or
	// allow-list entry).
	if err := s.claim(ctx, sess, hostID); err != nil {
		return nil, err
	}
	g, err := s.consumeGrant(ctx, sess, hostID)
	if err != nil {
		s.release(ctx, sess.Claims())
		return nil, err
	}
	proof := sha256.Sum256(req.Secret)
	now := s.cfg.Now().UTC()
	h := &record.Host{
		V: record.Version, ID: hostID, Hostname: sess.Hostname, EKHash: sess.EKHash, Claims: sess.Claims(), AKPublic: sess.AKPublic,
		TPM: sess.TPM, Roles: g.roles, Tags: g.tags, Status: api.HostPending, Via: g.via(),
		ProofHash: proof[:], Created: now, Updated: now,
	}
	if s.cfg.Approval == ApprovalAuto {
		if err := s.Activate(h, "auto"); err != nil {
			return nil, err
		}
	}
	if err := store.Create(ctx, s.cfg.Store.Hosts, hostID, h); err != nil {
		return nil, err
	}
	ev.Result, ev.Host, ev.Roles, ev.Reason = "ok", hostID, h.Roles, "status "+string(h.Status)+" via "+h.Via
	s.log.Info("host enrolled", "host", hostID, "hostname", h.Hostname, "status", h.Status, "via", h.Via, "roles", h.Roles)
	return s.enrollResult(h), nil
}

func (g *grant) via() string {
	if g.tokenHash == "" {
		return "ek-allowlist"
	}
	return "token:" + g.tokenHash[:12]
}

// consumeGrant marks the token used (compare-and-set: of two enrollments
// racing for one token, one wins) or re-checks the allow-list.
func (s *Service) consumeGrant(ctx context.Context, sess *record.EnrollSession, hostID string) (*grant, error) {
	if sess.Token == "" {
		// An allow-list entry is spent by the enrollment it allowed, like a
		// join token: re-enrolling the TPM takes an operator's ek allow.
		a, rev, err := store.Get[record.EKAllow](ctx, s.cfg.Store.EKAllow, sess.EKHash)
		if errors.Is(err, api.ErrNotFound) {
			return nil, fmt.Errorf("%w: removed from the allow-list during the enrollment", api.ErrNotAllowed)
		}
		if err != nil {
			return nil, err
		}
		if err := store.Take(ctx, s.cfg.Store.EKAllow, sess.EKHash, rev); errors.Is(err, api.ErrConflict) {
			return nil, fmt.Errorf("%w: allow-list entry used concurrently", api.ErrNotAllowed)
		} else if err != nil {
			return nil, err
		}
		return &grant{roles: a.Roles, tags: a.Tags}, nil
	}
	t, _, err := store.Mutate(ctx, s.cfg.Store.Tokens, sess.Token, func(t *record.Token) error {
		if st := t.State(s.cfg.Now()); st != "valid" {
			return fmt.Errorf("%w: token %s is %s", api.ErrTokenInvalid, t.ID, st)
		}
		t.UsedBy, t.UsedAt = hostID, s.cfg.Now().UTC()
		return nil
	})
	if errors.Is(err, api.ErrNotFound) {
		return nil, api.ErrTokenInvalid
	}
	if err != nil {
		return nil, err
	}
	return &grant{roles: t.Roles, tags: t.Tags, tokenHash: t.Hash}, nil
}

// Activate issues the AK certificate and marks the host active (from
// pending only: a revoked or offboarded host is never approved).
func (s *Service) Activate(h *record.Host, by string) error {
	if h.Status != api.HostPending {
		return fmt.Errorf("%w: host %s is %s, not pending", record.ErrTransition, h.ID, h.Status)
	}
	der, err := s.issueAKCert(h)
	if err != nil {
		return err
	}
	if err := h.Transition(api.HostActive, "", s.cfg.Now()); err != nil {
		return err
	}
	h.AKCert, h.ApprovedBy = der, by
	return nil
}

// RenewAKCert returns host h's AK certificate, renewed first if less than a
// third of its validity is left (or it cannot be read): AK certificates
// expire, and without one no credential of the host registers or rotates.
// The renewal is one compare-and-set on an active host. Certificates keep
// the real clock, as the relying party that checks them does.
func (s *Service) RenewAKCert(ctx context.Context, h *record.Host) ([]byte, error) {
	if !needsRenewal(h.AKCert, s.cfg.AKCertValidity, time.Now()) {
		return h.AKCert, nil
	}
	renewed, _, err := store.Mutate(ctx, s.cfg.Store.Hosts, h.ID, func(cur *record.Host) error {
		if cur.Status != api.HostActive {
			return fmt.Errorf("%w: host %s is %s", api.ErrHostNotActive, cur.ID, cur.Status)
		}
		if !needsRenewal(cur.AKCert, s.cfg.AKCertValidity, time.Now()) {
			return nil // renewed concurrently
		}
		der, err := s.issueAKCert(cur)
		if err != nil {
			return err
		}
		cur.AKCert, cur.Updated = der, s.cfg.Now().UTC()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("renew host %s's AK certificate: %w", h.ID, err)
	}
	s.log.Info("AK certificate renewed", "host", h.ID)
	s.cfg.Trail.Record(audit.Event{Kind: "akcert.renew", Result: "ok", Host: h.ID})
	return renewed.AKCert, nil
}

// needsRenewal: less than a third of the certificate's validity left.
func needsRenewal(der []byte, validity time.Duration, now time.Time) bool {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return true
	}
	return c.NotAfter.Sub(now) < validity/3
}

func (s *Service) issueAKCert(h *record.Host) ([]byte, error) {
	akPub, err := x509.ParsePKIXPublicKey(h.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("host %s AK: %w", h.ID, err)
	}
	return attestation.IssueAKCertificate(s.cfg.FleetCA, s.cfg.FleetCAKey, attestation.AKCertRequest{
		AKPublic: akPub, TPM: attestation.TPMIdentity(h.TPM), Validity: s.cfg.AKCertValidity,
	})
}

func (s *Service) enrollResult(h *record.Host) *api.EnrollResult {
	return &api.EnrollResult{HostID: h.ID, Status: h.Status, AKCert: h.AKCert, RPID: s.cfg.RPID, Origin: s.cfg.Origin}
}

// Status lets a pending host learn that it was approved. The proof is
// the activation secret, which only the enrolling TPM could recover.
func (s *Service) Status(ctx context.Context, body []byte) (any, error) {
	var req api.EnrollStatusRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if !natsapi.CallerIsHost(ctx, req.HostID) {
		return nil, api.ErrNotFound // do not confirm the host exists
	}
	h, _, err := store.Get[record.Host](ctx, s.cfg.Store.Hosts, req.HostID)
	if err != nil {
		return nil, err
	}
	proof := sha256.Sum256(req.Proof)
	if subtle.ConstantTimeCompare(proof[:], h.ProofHash) != 1 {
		return nil, api.ErrNotFound // do not confirm the host exists
	}
	return s.enrollResult(h), nil
}

// checkHostProof admits an enrolled (pending or active) host by the
// activation secret of its enrollment.
func (s *Service) checkHostProof(ctx context.Context, hostID, proofB64 string) error {
	proof, err := base64.RawURLEncoding.DecodeString(proofB64)
	if err != nil {
		return fmt.Errorf("%w: host proof is not base64url", api.ErrBadRequest)
	}
	if s.cfg.Misses.Missed(fleet.HostMiss(hostID)) {
		return fmt.Errorf("%w: host %q", api.ErrNotFound, hostID)
	}
	h, _, err := store.Get[record.Host](ctx, s.cfg.Store.Hosts, hostID)
	if errors.Is(err, api.ErrNotFound) {
		s.cfg.Misses.Miss(fleet.HostMiss(hostID))
		return fmt.Errorf("%w: host %q", api.ErrNotFound, hostID)
	}
	if err != nil {
		return err
	}
	sum := sha256.Sum256(proof)
	if subtle.ConstantTimeCompare(sum[:], h.ProofHash) != 1 {
		return fmt.Errorf("%w: wrong proof for host %s", api.ErrNotFound, hostID)
	}
	if h.Status == api.HostRevoked || h.Status == api.HostOffboarded {
		return fmt.Errorf("%w: host %s is %s", api.ErrRevoked, hostID, h.Status)
	}
	return nil
}

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	return b, err
}

// randomID returns n random bytes in base64url (KV-key safe).
func randomID(n int) (string, error) {
	b, err := randomBytes(n)
	return base64.RawURLEncoding.EncodeToString(b), err
}

// randomHex returns n random bytes in hex.
func randomHex(n int) (string, error) {
	b, err := randomBytes(n)
	return hex.EncodeToString(b), err
}
