package verifier

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/tpmauthn/tpmauthn/attestation"
)

// workloadName: what a workload may be called (it appears in NATS user names
// and subject templates, so no dots, wildcards or spaces).
var workloadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// registerBegin issues a single-use registration challenge (DESIGN.md flow 2).
func (v *Verifier) registerBegin(ctx context.Context, body []byte) (any, error) {
	var req attestation.RegisterBeginRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if !workloadName.MatchString(req.Workload) {
		return nil, fmt.Errorf("%w: workload name %q: use letters, digits, '-' and '_' (at most 63)", ErrBadRequest, req.Workload)
	}
	if _, err := v.activeHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	chal, err := randomBytes(32)
	if err != nil {
		return nil, err
	}
	uh, err := randomBytes(32)
	if err != nil {
		return nil, err
	}
	exp := time.Now().Add(v.cfg.RegisterChallenge).UTC()
	rec := &challenge{V: recordVersion, Host: req.HostID, Workload: req.Workload, UserHandle: uh, Expires: exp}
	if err := create(ctx, v.st.challenges, b64(chal), rec); err != nil {
		return nil, err
	}
	return &attestation.RegisterBeginResponse{Challenge: chal, UserHandle: uh, RPID: v.cfg.RPID, Origin: v.cfg.Origin, Expires: exp}, nil
}

// registerFinish verifies the registration and stores the credential.
func (v *Verifier) registerFinish(ctx context.Context, body []byte) (_ any, err error) {
	ev := denyByDefault("register")
	defer func() {
		if err != nil {
			ev.Reason = err.Error()
		}
		v.audit.record(ev)
	}()
	var req attestation.RegisterFinishRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	ev.Host, ev.Workload = req.HostID, req.Workload
	if req.Response == nil {
		return nil, fmt.Errorf("%w: no registration response", ErrBadRequest)
	}
	key := b64(req.Challenge)
	ch, rev, err := get[challenge](ctx, v.st.challenges, key)
	if err != nil {
		return nil, ErrChallenge
	}
	if err := take(ctx, v.st.challenges, key, rev); err != nil {
		return nil, ErrChallenge
	}
	if ch.Host != req.HostID || ch.Workload != req.Workload || time.Now().After(ch.Expires) {
		return nil, fmt.Errorf("%w: issued for another host or workload, or expired", ErrChallenge)
	}
	h, err := v.activeHost(ctx, req.HostID)
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(req.Response)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	reg, err := v.rp.VerifyRegistration(req.Challenge, ch.UserHandle, js)
	if err != nil {
		return nil, err
	}
	ev.Credential = b64(reg.CredentialID)
	if err := akBelongsTo(reg.AKCert, h); err != nil {
		v.alert(AlertAKMismatch, Event{Host: h.ID, Workload: req.Workload, Credential: ev.Credential, Reason: err.Error()})
		return nil, err
	}
	now := time.Now().UTC()
	cred := &Credential{
		V: recordVersion, ID: b64(reg.CredentialID), Host: h.ID, Workload: req.Workload,
		PublicKey: reg.PublicKey, UserHandle: ch.UserHandle, Counter: reg.Counter,
		Status: CredActive, Created: now, Updated: now,
	}
	if err := create(ctx, v.st.creds, cred.ID, cred); err != nil {
		return nil, err
	}
	ev.Result = "ok"
	v.log.Info("credential registered", "credential", cred.ID, "host", h.ID, "workload", cred.Workload)
	return &attestation.RegisterFinishResponse{CredentialID: cred.ID}, nil
}

// akBelongsTo requires the attesting AK to be the host's own: a valid AK
// certificate of another host must not register credentials for this one.
func akBelongsTo(akCert *x509.Certificate, h *Host) error {
	want, err := x509.ParsePKIXPublicKey(h.AKPublic)
	if err != nil {
		return fmt.Errorf("host %s AK: %w", h.ID, err)
	}
	if k, ok := akCert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(want) {
		return fmt.Errorf("%w: the attesting AK is not host %s's", attestation.ErrAttestation, h.ID)
	}
	return nil
}

func (v *Verifier) activeHost(ctx context.Context, id string) (*Host, error) {
	h, _, err := get[Host](ctx, v.st.hosts, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: host %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if h.Status != attestation.HostActive {
		return nil, fmt.Errorf("%w: host %s is %s", ErrHostNotActive, h.ID, h.Status)
	}
	return h, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func decodeB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
