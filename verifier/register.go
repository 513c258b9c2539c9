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

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// workloadName: what a workload may be called (it appears in NATS user names
// and subject templates, so no dots, wildcards or spaces).
var workloadName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// registerBegin issues a single-use registration challenge (DESIGN.md flow 2).
func (v *Verifier) registerBegin(ctx context.Context, body []byte) (any, error) {
	var req api.RegisterBeginRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if !workloadName.MatchString(req.Workload) {
		return nil, fmt.Errorf("%w: workload name %q: use letters, digits, '-' and '_' (at most 63)", ErrBadRequest, req.Workload)
	}
	if _, err := v.activeHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	if err := v.checkRotateFrom(ctx, req.HostID, req.Workload, req.RotateFrom); err != nil {
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
	rec := &record.Challenge{V: record.Version, Host: req.HostID, Workload: req.Workload, UserHandle: uh, Expires: exp, RotateFrom: req.RotateFrom}
	if err := create(ctx, v.st.challenges, b64(chal), rec); err != nil {
		return nil, err
	}
	return &api.RegisterBeginResponse{Challenge: chal, UserHandle: uh, RPID: v.cfg.RPID, Origin: v.cfg.Origin, Expires: exp}, nil
}

// registerFinish verifies the registration and stores the credential.
func (v *Verifier) registerFinish(ctx context.Context, body []byte) (_ any, err error) {
	ev := audit.Deny("register")
	defer func() {
		if err != nil {
			ev.Reason = err.Error()
		}
		v.recordNow(ctx, ev)
	}()
	var req api.RegisterFinishRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	ev.Host, ev.Workload = req.HostID, req.Workload
	if req.Response == nil {
		return nil, fmt.Errorf("%w: no registration response", ErrBadRequest)
	}
	key := b64(req.Challenge)
	ch, rev, err := get[record.Challenge](ctx, v.st.challenges, key)
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
		v.alert(AlertAKMismatch, audit.Event{Host: h.ID, Workload: req.Workload, Credential: ev.Credential, Reason: err.Error()})
		return nil, err
	}
	now := time.Now().UTC()
	cred := &record.Credential{
		V: record.Version, ID: b64(reg.CredentialID), Host: h.ID, Workload: req.Workload,
		PublicKey: reg.PublicKey, UserHandle: ch.UserHandle, Counter: reg.Counter,
		Status: api.CredentialActive, Created: now, Updated: now,
	}
	var old *record.Credential
	if ch.RotateFrom != "" {
		if old, err = v.checkRotationProof(ctx, ch, req, reg.CredentialID); err != nil {
			return nil, err
		}
		cred.Lineage = old.Nkey()
		ev.Kind, ev.Reason = "rotate", "replaces "+old.ID
	}
	if err := v.claimWorkload(ctx, h.ID, req.Workload, cred.ID, ch.RotateFrom); err != nil {
		return nil, err
	}
	if err := create(ctx, v.st.creds, cred.ID, cred); err != nil {
		return nil, err
	}
	var retires time.Time
	if old != nil {
		if retires, err = v.retire(ctx, old.ID, cred.ID); err != nil {
			return nil, err
		}
	}
	ev.Result = "ok"
	v.log.Info("credential registered", "credential", cred.ID, "host", h.ID, "workload", cred.Workload)
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

func (v *Verifier) activeHost(ctx context.Context, id string) (*record.Host, error) {
	h, _, err := get[record.Host](ctx, v.st.hosts, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: host %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if h.Status != api.HostActive {
		return nil, fmt.Errorf("%w: host %s is %s", ErrHostNotActive, h.ID, h.Status)
	}
	return h, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func decodeB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// checkRotateFrom: a workload that has a credential gets another only by a
// rotation that names it (and, at finish, a proof it signed).
func (v *Verifier) checkRotateFrom(ctx context.Context, host, workload, from string) error {
	idx, _, err := get[record.WorkloadIndex](ctx, v.st.workloads, host+"."+workload)
	switch {
	case errors.Is(err, ErrNotFound):
		if from != "" {
			return fmt.Errorf("%w: workload %s has no credential to rotate from", ErrBadRequest, workload)
		}
		return nil
	case err != nil:
		return err
	case from == "":
		return fmt.Errorf("%w: workload %s already has credential %s: rotate from it (its signature vouches for the new one), or revoke it first", ErrConflict, workload, idx.Credential)
	case from != idx.Credential:
		return fmt.Errorf("%w: rotate_from %s is not workload %s's current credential", ErrBadRequest, from, workload)
	}
	old, _, err := get[record.Credential](ctx, v.st.creds, from)
	if err != nil {
		return err
	}
	if old.Status != api.CredentialActive || old.Retired(time.Now()) {
		return fmt.Errorf("%w: credential %s is %s and cannot vouch for a successor", ErrRevoked, old.ID, old.Status)
	}
	return nil
}

// checkRotationProof verifies that the replaced credential signed
// RotationChallenge(challenge, new ID), and accepts its counter.
func (v *Verifier) checkRotationProof(ctx context.Context, ch *record.Challenge, req api.RegisterFinishRequest, newID []byte) (*record.Credential, error) {
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
	unlock := v.credLocks.lock(ch.RotateFrom)
	defer unlock()
	for range 20 {
		old, rev, err := get[record.Credential](ctx, v.st.creds, ch.RotateFrom)
		if err != nil {
			return nil, err
		}
		if old.Status != api.CredentialActive || old.Retired(time.Now()) {
			return nil, fmt.Errorf("%w: credential %s is %s", ErrRevoked, old.ID, old.Status)
		}
		pub, err := v.pubKeys.get(old.ID, old.PublicKey)
		if err != nil {
			return nil, err
		}
		counter, err := attestation.VerifyAssertion(proof, pub, attestation.AssertionCheck{
			RPIDHash: v.rpIDHash, Origin: v.cfg.Origin, Challenge: attestation.RotationChallenge(req.Challenge, newID), RequireUV: true,
		})
		if err != nil {
			return nil, fmt.Errorf("rotation proof: %w", err)
		}
		if err := old.AcceptCounter(counter); err != nil {
			return nil, fmt.Errorf("rotation proof: %w: %w", ErrReplay, err)
		}
		if err := update(ctx, v.st.creds, old.ID, old, rev); errors.Is(err, ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		return old, nil
	}
	return nil, ErrConflict
}

// claimWorkload points the workload index at the new credential: created
// for a first registration, compare-and-set from the old one for a rotation.
func (v *Verifier) claimWorkload(ctx context.Context, host, workload, cred, from string) error {
	key := host + "." + workload
	rec := &record.WorkloadIndex{V: record.Version, Credential: cred}
	if from == "" {
		if err := create(ctx, v.st.workloads, key, rec); errors.Is(err, ErrConflict) {
			return fmt.Errorf("%w: workload %s registered concurrently", ErrConflict, workload)
		} else if err != nil {
			return err
		}
		return nil
	}
	idx, rev, err := get[record.WorkloadIndex](ctx, v.st.workloads, key)
	if err != nil {
		return err
	}
	if idx.Credential != from {
		return fmt.Errorf("%w: workload %s was rotated concurrently", ErrConflict, workload)
	}
	return update(ctx, v.st.workloads, key, rec, rev)
}

// retire gives a replaced credential its grace period. Its failure fails
// the registration: a replaced credential that is never retired would stay
// valid for good.
func (v *Verifier) retire(ctx context.Context, id, by string) (time.Time, error) {
	c, _, err := mutate(ctx, v.st.creds, id, func(c *record.Credential) error {
		now := time.Now().UTC()
		c.Retires, c.ReplacedBy, c.RotateRequested, c.Updated = now.Add(v.cfg.RotationGrace), by, false, now
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("retire replaced credential %s: %w", id, err)
	}
	v.log.Info("credential rotated", "old", id, "new", by, "retires", c.Retires)
	return c.Retires, nil
}

// credentialStatus tells an agent which credentials to rotate.
func (v *Verifier) credentialStatus(ctx context.Context, body []byte) (any, error) {
	var req api.CredentialStatusRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if !requesterIsHost(ctx, req.HostID) {
		return nil, fmt.Errorf("%w: only host %s's own agent may ask", ErrNotFound, req.HostID)
	}
	if _, err := v.activeHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	lister, err := v.st.workloads.ListKeysFiltered(ctx, req.HostID+".*")
	if err != nil {
		return nil, err
	}
	out := []api.CredentialState{}
	now := time.Now()
	for key := range lister.Keys() {
		idx, _, err := get[record.WorkloadIndex](ctx, v.st.workloads, key)
		if err != nil {
			continue
		}
		c, _, err := get[record.Credential](ctx, v.st.creds, idx.Credential)
		if err != nil {
			continue
		}
		st := api.CredentialState{ID: c.ID, Workload: c.Workload, Status: c.Status, Created: c.Created, Retires: c.Retires}
		if v.cfg.CredentialMaxAge > 0 {
			st.RotateBy = c.Created.Add(v.cfg.CredentialMaxAge)
		}
		if c.RotateRequested {
			st.RotateBy = now.UTC()
		}
		out = append(out, st)
	}
	return out, nil
}
