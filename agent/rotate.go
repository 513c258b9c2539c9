package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// rotateLoop asks the verifier, every RotationCheck and whenever it nudges
// (agent/nudge.go), which credentials must rotate (their maximum age is
// near, or an operator asked), and rotates them. Workloads do not notice:
// their CONNECT nkey is the credential's lineage, and the agent signs with
// whichever credential is current.
func (a *Agent) rotateLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.RotationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.nudged:
			if ctx.Err() != nil {
				return
			}
			if err := a.checkRotations(ctx); err != nil {
				a.log.Warn("rotation check failed", "error", err)
			}
		case <-t.C:
			if ctx.Err() != nil {
				// Both were ready and select chose the tick: Close has
				// begun, and would wait for the check.
				return
			}
			if err := a.checkRotations(ctx); err != nil {
				a.log.Warn("rotation check failed", "error", err)
			}
		}
	}
}

// rotationMargin: rotate when this fraction of a credential's life is left.
const rotationMargin = 0.2

// rotateTimeout bounds one rotation (a key creation, a certify and two
// verifier round trips): a lost reply must not stop the rotation loop.
const rotateTimeout = 30 * time.Second

// reconcile makes the agent use, for each workload, the credential the
// verifier holds as current, and deletes the workload's other local
// credentials. A crash or a lost reply in the middle of a rotation leaves
// either a new credential the verifier never registered (picked as newest
// at the next start, and refused) or an old one nobody marked for deletion.
func (a *Agent) reconcile(states []api.CredentialState) {
	local, err := a.auth.Credentials()
	if err != nil {
		a.log.Warn("reconcile credentials: list", "error", err)
		return
	}
	for _, st := range states {
		var cur *Credential
		for _, c := range local {
			if c.Name == st.Workload && c.IDString() == st.ID {
				cur = c
			}
		}
		if cur == nil {
			if st.Status != api.CredentialRevoked && a.workloadDown(st.Workload) == nil {
				a.log.Error("the verifier's current credential for this workload is not on this host: revoke and reissue it to register a new one",
					"workload", st.Workload, "credential", st.ID, "hint", "tpmauthnctl credential revoke "+st.ID+"; tpmauthnctl credential reissue "+st.ID)
			}
			continue
		}
		a.mu.Lock()
		using := a.creds[st.Workload]
		if using == nil || using.IDString() != st.ID {
			a.creds[st.Workload] = cur
		}
		a.mu.Unlock()
		if using != nil && using.IDString() != st.ID {
			a.log.Warn("switched to the credential the verifier holds as current", "workload", st.Workload,
				"was", using.IDString(), "now", st.ID)
		}
		for _, c := range local {
			if c.Name != st.Workload || c.IDString() == st.ID || !c.Retires.IsZero() {
				continue // retiring ones are deleted on schedule
			}
			if err := a.auth.DeleteCredential(c.ID); err != nil {
				a.log.Warn("delete a credential the verifier does not hold as current", "credential", c.IDString(), "error", err)
				continue
			}
			a.log.Info("deleted a credential the verifier does not hold as current (left by an interrupted rotation)",
				"workload", st.Workload, "credential", c.IDString())
		}
	}
}

// settleCredentials asks the verifier for this host's credential states and
// applies them: reconciles interrupted rotations, marks revoked credentials,
// registers reissued and failed workloads.
func (a *Agent) settleCredentials(ctx context.Context) ([]api.CredentialState, error) {
	nc, err := a.verifierConn()
	if err != nil {
		a.noteCheck(err)
		return nil, err
	}
	host := a.hostID()
	states, err := credentialStates(ctx, nc, host)
	a.noteCheck(err)
	if err != nil {
		return nil, err
	}
	a.reconcile(states)
	a.settleWorkloads(ctx, states)
	return states, nil
}

// checkCredentials is settleCredentials without its result.
func (a *Agent) checkCredentials(ctx context.Context) error {
	_, err := a.settleCredentials(ctx)
	return err
}

func (a *Agent) checkRotations(ctx context.Context) error {
	states, err := a.settleCredentials(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, st := range states {
		if st.Status != api.CredentialActive || st.RotateBy.IsZero() || !st.Retires.IsZero() {
			continue
		}
		life := st.RotateBy.Sub(st.Created)
		if now.Before(st.RotateBy.Add(-time.Duration(float64(life) * rotationMargin))) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, rotateTimeout)
		err := a.rotate(rctx, st.Workload, st.ID)
		cancel()
		if err != nil {
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
	a.deleteWhenRetired(workload, old.ID, retires)
	return nil
}

// deleteWhenRetired deletes a replaced credential's key blob (and flushes its
// handle) a second after the verifier stops accepting it, unless the agent
// stops first: the next start picks it up again (retireReplaced). The wait
// runs on the agent's context, not the rotation's, and Close waits for it.
func (a *Agent) deleteWhenRetired(workload string, id []byte, retires time.Time) {
	a.wg.Go(func() {
		for {
			// Clamped: a far-future time would overflow the duration and
			// fire at once; a daily look is enough for one that far.
			wait := min(max(time.Until(retires)+time.Second, 0), 24*time.Hour)
			t := time.NewTimer(wait)
			select {
			case <-a.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if !time.Now().Before(retires) {
				break
			}
		}
		a.deleteRetired(workload, id)
	})
}

// deleteRetired deletes a retired credential unless the workload still signs
// with it.
func (a *Agent) deleteRetired(workload string, id []byte) {
	a.mu.Lock()
	cur := a.creds[workload]
	a.mu.Unlock()
	if cur != nil && string(cur.ID) == string(id) {
		a.log.Error("the credential this workload signs with has retired: it is kept, and the verifier refuses it; revoke it and restart the agent to register a new one",
			"workload", workload, "credential", b64url(id))
		return
	}
	if err := a.auth.DeleteCredential(id); err != nil {
		a.log.Warn("delete retired credential", "credential", b64url(id), "error", err)
		return
	}
	a.log.Info("retired credential deleted", "credential", b64url(id))
}

// retireReplaced schedules, at start, the deletion of every credential a
// rotation replaced (already past its retirement: now).
func (a *Agent) retireReplaced() error {
	creds, err := a.auth.Credentials()
	if err != nil {
		return err
	}
	for _, c := range creds {
		if !c.Retires.IsZero() {
			a.deleteWhenRetired(c.Name, c.ID, c.Retires)
		}
	}
	return nil
}
