package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/tpmauthn/tpmauthn/attestation"
)

// rotateLoop asks the verifier, every RotationCheck, which credentials must
// rotate (their maximum age is near, or an operator asked), and rotates them.
// Workloads do not notice: their CONNECT nkey is the credential's lineage,
// and the agent signs with whichever credential is current.
func (a *Agent) rotateLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.RotationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.checkRotations(ctx); err != nil {
				a.log.Warn("rotation check failed", "error", err)
			}
		}
	}
}

// rotationMargin: rotate when this fraction of a credential's life is left.
const rotationMargin = 0.2

func (a *Agent) checkRotations(ctx context.Context) error {
	nc, err := a.verifierConn()
	if err != nil {
		return err
	}
	a.mu.Lock()
	host := a.enroll.HostID
	a.mu.Unlock()
	var states []attestation.CredentialState
	if err := call(ctx, nc, attestation.SubjectCredentialStatus, &attestation.CredentialStatusRequest{HostID: host}, &states); err != nil {
		return err
	}
	now := time.Now()
	for _, st := range states {
		if st.RotateBy.IsZero() || !st.Retires.IsZero() {
			continue
		}
		life := st.RotateBy.Sub(st.Created)
		if now.Before(st.RotateBy.Add(-time.Duration(float64(life) * rotationMargin))) {
			continue
		}
		if err := a.rotate(ctx, st.Workload, st.ID); err != nil {
			a.log.Error("rotation failed", "workload", st.Workload, "credential", st.ID, "error", err)
		}
	}
	return nil
}

// rotate replaces a workload's current credential, then deletes the old key
// blob (and flushes its handle) once the verifier retires it.
func (a *Agent) rotate(ctx context.Context, workload, id string) error {
	a.mu.Lock()
	old := a.creds[workload]
	a.mu.Unlock()
	if old == nil || old.IDString() != id {
		return nil // not ours, or already replaced
	}
	nc, err := a.verifierConn()
	if err != nil {
		return err
	}
	cred, retires, err := a.auth.RotateWithVerifier(ctx, nc, old)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	a.mu.Lock()
	a.creds[workload] = cred
	a.mu.Unlock()
	a.log.Info("credential rotated", "workload", workload, "old", old.IDString(), "new", cred.IDString(), "old_retires", retires)
	if err := a.auth.MarkRetiring(old.ID, retires); err != nil {
		a.log.Warn("the replaced credential will not be deleted if the agent restarts before it retires", "error", err)
	}
	a.deleteWhenRetired(ctx, old.ID, retires)
	return nil
}

// deleteWhenRetired deletes a replaced credential's key blob (and flushes its
// handle) a second after the verifier stops accepting it, unless the agent
// stops first: the next start picks it up again (retireReplaced).
func (a *Agent) deleteWhenRetired(ctx context.Context, id []byte, retires time.Time) {
	go func() {
		t := time.NewTimer(time.Until(retires) + time.Second)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.auth.DeleteCredential(id); err != nil {
			a.log.Warn("delete retired credential", "credential", b64url(id), "error", err)
			return
		}
		a.log.Info("retired credential deleted", "credential", b64url(id))
	}()
}

// retireReplaced schedules, at start, the deletion of every credential a
// rotation replaced (already past its retirement: now).
func (a *Agent) retireReplaced(ctx context.Context) error {
	creds, err := a.auth.Credentials()
	if err != nil {
		return err
	}
	for _, c := range creds {
		if !c.Retires.IsZero() {
			a.deleteWhenRetired(ctx, c.ID, c.Retires)
		}
	}
	return nil
}
