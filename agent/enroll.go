package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
)

const enrollmentFile = "enrollment.json"

// Enrollment is what the agent keeps of its enrollment.
type Enrollment struct {
	HostID string         `json:"host_id"`
	Status api.HostStatus `json:"status"`
	RPID   string         `json:"rp_id"`
	Origin string         `json:"origin"`
	// Proof is the activation secret: it proves to the verifier, while the
	// host waits for approval, that the asker is the TPM that enrolled.
	Proof []byte `json:"proof"`
}

// VerifierError is a refusal from the verifier; Code is stable.
type VerifierError struct {
	Subject, Code, Message string
}

func (e *VerifierError) Error() string {
	return fmt.Sprintf("verifier refused %s: %s (%s)", e.Subject, e.Message, e.Code)
}

// callTimeout bounds a call whose context has no deadline: a request the
// server refuses to route (a permissions violation) gets no reply at all.
const callTimeout = 15 * time.Second

// call sends a JSON request to the verifier and decodes the reply.
func call(ctx context.Context, nc *nats.Conn, subject string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	m, err := nc.RequestWithContext(ctx, subject, body)
	// Errors name the operation, not the subject's scope (a hash of the
	// join token, the host ID: noise in a log line).
	name := subject
	if s, ok := api.ParseScope(subject); ok {
		name = strings.TrimPrefix(subject, s.Subject(""))
	}
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%s: no verifier is serving (is tpmauthn-verifier running?): %w", name, err)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return &VerifierError{Subject: name, Code: code, Message: m.Header.Get("Nats-Service-Error")}
	}
	if err := json.Unmarshal(m.Data, resp); err != nil {
		return fmt.Errorf("%s: reply: %w", subject, err)
	}
	return nil
}

// Enroll enrolls this host with the verifier over nc (an enrollment session:
// see api.EKUserPrefix and join tokens). token may be empty for an
// allow-listed EK. An active result carries the AK certificate, which is
// stored; a pending one waits for an operator (see CheckEnrollment).
func (a *Authenticator) Enroll(ctx context.Context, nc *nats.Conn, token, hostname string) (*Enrollment, error) {
	ak, err := a.AK()
	if err != nil {
		return nil, err
	}
	ek, err := a.tpm.EK()
	if err != nil {
		return nil, err
	}
	ekDER, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("EK public key: %w", err)
	}
	p := ak.AttestationParameters()
	info := a.tpm.Info()
	req := api.EnrollBeginRequest{
		Token: token, Hostname: hostname, EKPublic: ekDER,
		AK:  api.AKParams{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		TPM: api.TPMInfo{Manufacturer: info.Manufacturer, VendorString: info.VendorString, FirmwareVersion1: info.FirmwareVersion1},
	}
	if ek.Certificate != nil {
		req.EKCert = ek.Certificate.Raw
	}
	primary, more, err := a.certifiedEKs(ek)
	if err != nil {
		return nil, err
	}
	if primary != nil {
		req.EKPublicArea = primary.PublicArea
	}
	for _, m := range more {
		req.MoreEKs = append(req.MoreEKs, api.EKKey{PublicArea: m.PublicArea, Cert: m.Certificate.Raw})
	}
	// The session's scope: its join token's, or without one its EK's.
	scope := api.TokenScope(token)
	if token == "" {
		h, err := attestation.EKHash(ek.Public)
		if err != nil {
			return nil, err
		}
		scope = api.EKScope(h)
	}
	var begin api.EnrollBeginResponse
	if err := call(ctx, nc, scope.Subject(api.OpEnrollBegin), &req, &begin); err != nil {
		return nil, err
	}
	fin, err := a.activateAll(ak, primary, more, &begin)
	if err != nil {
		return nil, err
	}
	var res api.EnrollResult
	if err := call(ctx, nc, scope.Subject(api.OpEnrollFinish), fin, &res); err != nil {
		return nil, err
	}
	e := &Enrollment{HostID: res.HostID, Status: res.Status, RPID: res.RPID, Origin: res.Origin, Proof: fin.Secret}
	return e, a.saveEnrollment(e, res.AKCert)
}

// certifiedEKs finds the enrolling EK among the TPM's persisted certified
// EKs (primary, nil if it is not persisted) and returns the others: the
// verifier claims them all, so that the TPM, not one of its EKs, is the
// host.
func (a *Authenticator) certifiedEKs(ek *tpm.EK) (primary *tpm.CertifiedEK, more []*tpm.CertifiedEK, err error) {
	all, err := a.tpm.CertifiedEKs()
	if err != nil {
		return nil, nil, err
	}
	for _, c := range all {
		if k, ok := c.Public.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(ek.Public) {
			primary = c
			continue
		}
		more = append(more, c)
	}
	return primary, more, nil
}

// activateAll answers the enrollment's activation challenges: the EK's
// (through go-attestation, which makes the EK if it is not persisted, when
// primary is nil) and each other EK's.
func (a *Authenticator) activateAll(ak *tpm.AK, primary *tpm.CertifiedEK, more []*tpm.CertifiedEK, begin *api.EnrollBeginResponse) (*api.EnrollFinishRequest, error) {
	if len(begin.MoreChallenges) != len(more) {
		return nil, fmt.Errorf("enroll: the verifier sent %d challenges for %d more EKs", len(begin.MoreChallenges), len(more))
	}
	fin := &api.EnrollFinishRequest{Session: begin.Session}
	var err error
	if primary != nil {
		fin.Secret, err = a.tpm.ActivateCredentialWithEK(ak, primary, begin.Credential, begin.Secret)
	} else {
		fin.Secret, err = a.tpm.ActivateCredential(ak, attest.EncryptedCredential{Credential: begin.Credential, Secret: begin.Secret})
	}
	if err != nil {
		return nil, err
	}
	for i, m := range more {
		s, err := a.tpm.ActivateCredentialWithEK(ak, m, begin.MoreChallenges[i].Credential, begin.MoreChallenges[i].Secret)
		if err != nil {
			return nil, err
		}
		fin.MoreSecrets = append(fin.MoreSecrets, s)
	}
	return fin, nil
}

// CheckEnrollment asks the verifier whether a pending host was approved and
// stores the AK certificate once it is.
func (a *Authenticator) CheckEnrollment(ctx context.Context, nc *nats.Conn) (*Enrollment, error) {
	e, err := a.Enrollment()
	if err != nil {
		return nil, err
	}
	var res api.EnrollResult
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpEnrollStatus), &api.EnrollStatusRequest{HostID: e.HostID, Proof: e.Proof}, &res); err != nil {
		return nil, err
	}
	e.Status = res.Status
	return e, a.saveEnrollment(e, res.AKCert)
}

func (a *Authenticator) saveEnrollment(e *Enrollment, akCert []byte) error {
	if len(akCert) > 0 {
		if err := a.SetAKCertificate(akCert); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(a.dir, enrollmentFile), e)
}

// Enrollment returns the stored enrollment, or ErrNotEnrolled.
func (a *Authenticator) Enrollment() (*Enrollment, error) {
	var e Enrollment
	if err := readJSON(filepath.Join(a.dir, enrollmentFile), &e); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotEnrolled
		}
		return nil, err
	}
	return &e, nil
}

// RegisterWithVerifier creates a credential for workload and registers it
// with the verifier: challenge, TPM registration, verification.
func (a *Authenticator) RegisterWithVerifier(ctx context.Context, nc *nats.Conn, workload string) (*Credential, error) {
	e, err := a.Enrollment()
	if err != nil {
		return nil, err
	}
	var begin api.RegisterBeginResponse
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), &api.RegisterBeginRequest{HostID: e.HostID, Workload: workload}, &begin); err != nil {
		return nil, err
	}
	if err := a.adoptAKCert(begin.AKCert); err != nil {
		return nil, err
	}
	resp, cred, err := a.Register(RegisterOptions{Name: workload, RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
	if err != nil {
		return nil, err
	}
	var fin api.RegisterFinishResponse
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), &api.RegisterFinishRequest{
		HostID: e.HostID, Workload: workload, Challenge: begin.Challenge, Response: resp,
	}, &fin); err != nil {
		_ = a.DeleteCredential(cred.ID)
		return nil, err
	}
	return cred, nil
}

// RotateWithVerifier replaces old with a new TPM credential for the same
// workload: the AK certifies the new key as at registration, and old signs a
// rotation proof over the verifier's challenge and the new credential's ID,
// so only the holder of the old credential can name its successor. It
// returns the new credential and when the verifier stops accepting old.
func (a *Authenticator) RotateWithVerifier(ctx context.Context, nc *nats.Conn, old *Credential) (*Credential, time.Time, error) {
	e, err := a.Enrollment()
	if err != nil {
		return nil, time.Time{}, err
	}
	var begin api.RegisterBeginResponse
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), &api.RegisterBeginRequest{
		HostID: e.HostID, Workload: old.Name, RotateFrom: old.IDString(),
	}, &begin); err != nil {
		return nil, time.Time{}, err
	}
	if err := a.adoptAKCert(begin.AKCert); err != nil {
		return nil, time.Time{}, err
	}
	lineage := old.Lineage
	if len(lineage) == 0 {
		lineage = old.ID
	}
	resp, cred, err := a.Register(RegisterOptions{Name: old.Name, RPID: begin.RPID, Origin: begin.Origin,
		Challenge: begin.Challenge, UserHandle: begin.UserHandle, Lineage: lineage})
	if err != nil {
		return nil, time.Time{}, err
	}
	proof, err := a.AssertForVerifier(old.ID, attestation.RotationChallenge(begin.Challenge, cred.ID))
	if err != nil {
		_ = a.DeleteCredential(cred.ID)
		return nil, time.Time{}, err
	}
	// Past this point the verifier may register the new credential: the
	// outcome must be known before the new key is kept or deleted, so the
	// wait for the reply outlasts the verifier's own bound on a request
	// (10 s) whatever the caller's deadline.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	var fin api.RegisterFinishResponse
	if err := call(fctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), &api.RegisterFinishRequest{
		HostID: e.HostID, Workload: old.Name, Challenge: begin.Challenge, Response: resp, RotationProof: proof.JSON(),
	}, &fin); err != nil {
		// The reply may be what was lost: if the verifier did register the
		// new credential, deleting it would leave only the old one, which
		// the verifier retires after the grace period.
		if cur, serr := currentCredential(context.WithoutCancel(ctx), nc, e.HostID, old.Name); serr == nil && cur == cred.IDString() {
			return cred, time.Now(), nil // the old one's retirement time was in the lost reply
		}
		_ = a.DeleteCredential(cred.ID)
		return nil, time.Time{}, err
	}
	return cred, fin.Retires, nil
}

// adoptAKCert stores the AK certificate a registration challenge came with
// when it is not the one stored: the verifier renewed it.
func (a *Authenticator) adoptAKCert(der []byte) error {
	if len(der) == 0 || bytes.Equal(der, a.AKCertificate()) {
		return nil
	}
	if err := a.SetAKCertificate(der); err != nil {
		return fmt.Errorf("renewed AK certificate: %w", err)
	}
	return nil
}

// finishTimeout bounds the wait for register.finish's reply in a rotation:
// longer than the verifier's bound on a request (10 s).
const finishTimeout = 15 * time.Second

// credentialStates asks the verifier for the current credential of each of
// a host's workloads.
func credentialStates(ctx context.Context, nc *nats.Conn, host string) ([]api.CredentialState, error) {
	var states []api.CredentialState
	err := call(ctx, nc, api.HostScope(host).Subject(api.OpCredentialsStatus), &api.CredentialStatusRequest{HostID: host}, &states)
	return states, err
}

// currentCredential asks the verifier which credential is a workload's
// current one (the one its rotations continue from).
func currentCredential(ctx context.Context, nc *nats.Conn, host, workload string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	states, err := credentialStates(ctx, nc, host)
	if err != nil {
		return "", err
	}
	for _, st := range states {
		if st.Workload == workload {
			return st.ID, nil
		}
	}
	return "", fmt.Errorf("%w: the verifier has no credential for workload %s", ErrUnknownCredential, workload)
}
