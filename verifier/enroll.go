package verifier

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// grant is what authorizes an enrollment: a join token or an allow-list entry.
type grant struct {
	roles, tags []string
	tokenHash   string // empty for the allow-list
}

// enrollBegin checks the EK and answers with a credential-activation
// challenge for the AK (DESIGN.md flow 1).
func (v *Verifier) enrollBegin(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("enroll.begin")
	defer func() {
		if err != nil { // a begun enrollment is audited when it finishes
			ev.Reason = err.Error()
			v.recordNow(ctx, ev)
		}
	}()
	var req api.EnrollBeginRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	ekPub, err := x509.ParsePKIXPublicKey(req.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public key: %w", ErrBadRequest, err)
	}
	ekHash, err := attestation.EKHash(ekPub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	ev.EKHash = ekHash
	g, err := v.authorizeEnrollment(ctx, req.Token, ekHash)
	if err != nil {
		return nil, err
	}
	if err := v.checkEK(&req, ekPub, g); err != nil {
		if errors.Is(err, attestation.ErrEKUntrusted) {
			v.alert(AlertEKUntrusted, audit.Event{EKHash: ekHash, Reason: err.Error()})
		}
		return nil, err
	}
	if _, _, err := get[record.EKEnrollment](ctx, v.st.eks, ekHash); err == nil {
		return nil, ErrAlreadyEnrolled
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	akParams := attest.AttestationParameters{
		Public: req.AK.Public, CreateData: req.AK.CreateData,
		CreateAttestation: req.AK.CreateAttestation, CreateSignature: req.AK.CreateSignature,
	}
	act, err := attestation.NewActivation(ekPub, akParams)
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
	id := attestation.NewTPMIdentity(req.TPM.Manufacturer, req.TPM.VendorString, req.TPM.FirmwareVersion1)
	sess := record.EnrollSession{
		V: record.Version, Secret: act.Secret, EKHash: ekHash, AKPublic: akDER,
		TPM: record.TPMIdent(id), Hostname: req.Hostname, Token: g.tokenHash, Created: time.Now().UTC(),
	}
	sid, err := randomID(16)
	if err != nil {
		return nil, err
	}
	if err := create(ctx, v.st.enroll, sid, &sess); err != nil {
		return nil, err
	}
	return &api.EnrollBeginResponse{Session: sid, Credential: act.Challenge.Credential, Secret: act.Challenge.Secret}, nil
}

// checkEK requires an EK certificate that chains to a manufacturer root and
// certifies the EK presented. An allow-listed EK names itself and needs no
// certificate; if it sends one, the certificate must still match.
func (v *Verifier) checkEK(req *api.EnrollBeginRequest, ekPub any, g *grant) error {
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
	return v.ekTrust.VerifyEKCertificate(cert, nil, time.Now())
}

// authorizeEnrollment finds the token or allow-list entry that permits
// enrolling this EK. It does not consume the token.
func (v *Verifier) authorizeEnrollment(ctx context.Context, token, ekHash string) (*grant, error) {
	if token != "" {
		t, _, err := v.lookupToken(ctx, token)
		if err != nil {
			return nil, err
		}
		return &grant{roles: t.Roles, tags: t.Tags, tokenHash: t.Hash}, nil
	}
	a, _, err := get[record.EKAllow](ctx, v.st.ekAllow, ekHash)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNotAllowed
	}
	if err != nil {
		return nil, err
	}
	return &grant{roles: a.Roles, tags: a.Tags}, nil
}

// lookupToken returns a valid (unused, unexpired) token and its revision.
func (v *Verifier) lookupToken(ctx context.Context, token string) (*record.Token, uint64, error) {
	t, rev, err := get[record.Token](ctx, v.st.tokens, tokenHash(token))
	if errors.Is(err, ErrNotFound) {
		return nil, 0, ErrTokenInvalid
	}
	if err != nil {
		return nil, 0, err
	}
	if t.State(time.Now()) != "valid" {
		return nil, 0, fmt.Errorf("%w: token %s is %s", ErrTokenInvalid, t.ID, t.State(time.Now()))
	}
	return t, rev, nil
}

// enrollFinish checks the activated secret, consumes the token and records
// the host; with automatic approval it also issues the AK certificate.
func (v *Verifier) enrollFinish(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("enroll")
	defer func() {
		if err != nil {
			ev.Reason = err.Error()
		}
		v.recordNow(ctx, ev)
	}()
	var req api.EnrollFinishRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	sess, rev, err := get[record.EnrollSession](ctx, v.st.enroll, req.Session)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: enrollment session unknown or expired", ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if err := take(ctx, v.st.enroll, req.Session, rev); err != nil {
		return nil, fmt.Errorf("enrollment session already used: %w", err)
	}
	ev.EKHash = sess.EKHash
	if err := attestation.CheckActivation(sess.Secret, req.Secret); err != nil {
		return nil, err
	}
	hostID, err := randomHex(8)
	if err != nil {
		return nil, err
	}
	hostID = "h-" + hostID
	g, err := v.consumeGrant(ctx, sess, hostID)
	if err != nil {
		return nil, err
	}
	if err := create(ctx, v.st.eks, sess.EKHash, &record.EKEnrollment{V: record.Version, Host: hostID}); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, ErrAlreadyEnrolled
		}
		return nil, err
	}
	proof := sha256.Sum256(req.Secret)
	now := time.Now().UTC()
	h := &record.Host{
		V: record.Version, ID: hostID, Hostname: sess.Hostname, EKHash: sess.EKHash, AKPublic: sess.AKPublic,
		TPM: sess.TPM, Roles: g.roles, Tags: g.tags, Status: api.HostPending, Via: g.via(),
		ProofHash: proof[:], Created: now, Updated: now,
	}
	if v.cfg.Approval == ApprovalAuto {
		if err := v.activate(h, "auto"); err != nil {
			return nil, err
		}
	}
	if err := create(ctx, v.st.hosts, hostID, h); err != nil {
		return nil, err
	}
	ev.Result, ev.Host, ev.Roles, ev.Reason = "ok", hostID, h.Roles, "status "+string(h.Status)+" via "+h.Via
	v.log.Info("host enrolled", "host", hostID, "hostname", h.Hostname, "status", h.Status, "via", h.Via, "roles", h.Roles)
	return v.enrollResult(h), nil
}

func (g *grant) via() string {
	if g.tokenHash == "" {
		return "ek-allowlist"
	}
	return "token:" + g.tokenHash[:12]
}

// consumeGrant marks the token used (compare-and-set: of two enrollments
// racing for one token, one wins) or re-checks the allow-list.
func (v *Verifier) consumeGrant(ctx context.Context, sess *record.EnrollSession, hostID string) (*grant, error) {
	if sess.Token == "" {
		a, _, err := get[record.EKAllow](ctx, v.st.ekAllow, sess.EKHash)
		if err != nil {
			return nil, ErrNotAllowed
		}
		return &grant{roles: a.Roles, tags: a.Tags}, nil
	}
	t, rev, err := get[record.Token](ctx, v.st.tokens, sess.Token)
	if err != nil || t.State(time.Now()) != "valid" {
		return nil, ErrTokenInvalid
	}
	t.UsedBy, t.UsedAt = hostID, time.Now().UTC()
	if err := update(ctx, v.st.tokens, t.Hash, t, rev); err != nil {
		return nil, fmt.Errorf("%w: used concurrently", ErrTokenInvalid)
	}
	return &grant{roles: t.Roles, tags: t.Tags, tokenHash: t.Hash}, nil
}

// activate issues the AK certificate and marks the host active.
func (v *Verifier) activate(h *record.Host, by string) error {
	akPub, err := x509.ParsePKIXPublicKey(h.AKPublic)
	if err != nil {
		return fmt.Errorf("host %s AK: %w", h.ID, err)
	}
	der, err := attestation.IssueAKCertificate(v.keys.FleetCA, v.keys.FleetCAKey, attestation.AKCertRequest{
		AKPublic: akPub, TPM: attestation.TPMIdentity(h.TPM), Validity: v.cfg.AKCertValidity,
	})
	if err != nil {
		return err
	}
	h.AKCert, h.Status, h.ApprovedBy, h.Updated = der, api.HostActive, by, time.Now().UTC()
	return nil
}

func (v *Verifier) enrollResult(h *record.Host) *api.EnrollResult {
	return &api.EnrollResult{HostID: h.ID, Status: h.Status, AKCert: h.AKCert, RPID: v.cfg.RPID, Origin: v.cfg.Origin}
}

// enrollStatus lets a pending host learn that it was approved. The proof is
// the activation secret, which only the enrolling TPM could recover.
func (v *Verifier) enrollStatus(ctx context.Context, body []byte) (any, error) {
	var req api.EnrollStatusRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	h, _, err := get[record.Host](ctx, v.st.hosts, req.HostID)
	if err != nil {
		return nil, err
	}
	proof := sha256.Sum256(req.Proof)
	if subtle.ConstantTimeCompare(proof[:], h.ProofHash) != 1 {
		return nil, ErrNotFound // do not confirm the host exists
	}
	return v.enrollResult(h), nil
}

// checkHostProof admits an enrolled (pending or active) host by the
// activation secret of its enrollment.
func (v *Verifier) checkHostProof(ctx context.Context, hostID, proofB64 string) error {
	proof, err := base64.RawURLEncoding.DecodeString(proofB64)
	if err != nil {
		return fmt.Errorf("%w: host proof is not base64url", ErrBadRequest)
	}
	h, _, err := get[record.Host](ctx, v.st.hosts, hostID)
	if err != nil {
		return fmt.Errorf("%w: host %q", ErrNotFound, hostID)
	}
	sum := sha256.Sum256(proof)
	if subtle.ConstantTimeCompare(sum[:], h.ProofHash) != 1 {
		return fmt.Errorf("%w: wrong proof for host %s", ErrNotFound, hostID)
	}
	if h.Status == api.HostRevoked {
		return fmt.Errorf("%w: host %s", ErrRevoked, hostID)
	}
	return nil
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
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
