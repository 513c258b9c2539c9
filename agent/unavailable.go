package agent

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// One workload's trouble never takes its host down: a workload whose
// credential the verifier revoked, or that cannot be registered, is marked
// unavailable with the reason its socket requests are answered with, and
// the others keep being served. The status check (rotateLoop) brings it back
// when an operator reissues it, or retries its registration with backoff
// when retrying can help.

// unavailable is why a workload has no usable credential.
type unavailable struct {
	status int    // the HTTP status its socket requests get
	msg    string // what happened
	hint   string // what the operator can do
	// retry: registering again may help by itself (not after a refusal
	// only an operator can lift); attempts and next pace it.
	retry    bool
	attempts int
	next     time.Time
}

// reissueHint is what brings back a workload whose credential id is revoked.
func reissueHint(id string) string {
	return "an operator lets this host register a new credential for it with 'tpmauthnctl credential reissue " + id +
		"'; the agent registers it within its status check interval, without a restart"
}

// revokedWorkload is the answer for a workload whose credential is revoked.
func revokedWorkload(workload, id string) *unavailable {
	return &unavailable{
		status: http.StatusForbidden,
		msg:    "workload " + workload + "'s credential " + id + " was revoked at the verifier: the agent no longer signs with it",
		hint:   reissueHint(id),
	}
}

// setUnavailable marks a workload unavailable (logged once per change of
// reason) and drops its current credential.
func (a *Agent) setUnavailable(workload string, u *unavailable) {
	a.mu.Lock()
	prev := a.down[workload]
	if prev != nil && prev.msg == u.msg {
		a.mu.Unlock()
		return
	}
	a.down[workload] = u
	a.mu.Unlock()
	a.log.Error("workload unavailable; the agent serves the others", "workload", workload, "reason", u.msg, "hint", u.hint)
}

// workloadDown returns why a workload is unavailable, or nil.
func (a *Agent) workloadDown(workload string) *unavailable {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.down[workload]
}

// useCredential makes c the workload's current credential and available.
func (a *Agent) useCredential(workload string, c *Credential) {
	a.mu.Lock()
	a.creds[workload] = c
	was := a.down[workload]
	delete(a.down, workload)
	a.mu.Unlock()
	if was != nil {
		a.log.Info("workload available again", "workload", workload, "credential", c.IDString())
	}
}

// registerWorkload registers a new credential for a workload, a new
// lineage, and makes it current.
func (a *Agent) registerWorkload(ctx context.Context, workload string) error {
	nc, err := a.verifierConn()
	if err != nil {
		return err
	}
	c, err := a.auth.RegisterWithVerifier(ctx, nc, workload)
	if err != nil {
		return err
	}
	a.log.Info("credential registered", "workload", workload, "credential", c.IDString())
	a.useCredential(workload, c)
	return nil
}

// registrationFailed marks a workload whose registration failed for good
// (not a transient failure): the verifier's view of the workload (states,
// nil if it could not be read) says what the operator can do.
func (a *Agent) registrationFailed(workload string, err error, states []api.CredentialState) {
	var st *api.CredentialState
	for i := range states {
		if states[i].Workload == workload {
			st = &states[i]
		}
	}
	var ve *VerifierError
	switch {
	case st != nil && st.Status == api.CredentialRevoked:
		a.setUnavailable(workload, revokedWorkload(workload, st.ID))
	case st != nil:
		a.setUnavailable(workload, &unavailable{
			status: http.StatusForbidden,
			msg: "workload " + workload + " has no credential on this host, but the verifier holds credential " + st.ID +
				" (" + string(st.Status) + ") for it: its key is gone from the agent's data directory",
			hint: "an operator revokes it and lets this host register a new one: 'tpmauthnctl credential revoke " + st.ID +
				"', then 'tpmauthnctl credential reissue " + st.ID + "'",
		})
	case errors.As(err, &ve):
		a.setUnavailable(workload, &unavailable{status: http.StatusForbidden, retry: true,
			msg:  "the verifier refused to register a credential for workload " + workload + ": " + ve.Message + " (" + ve.Code + ")",
			hint: "see the agent's and the verifier's logs; the agent retries"})
	default:
		a.setUnavailable(workload, &unavailable{status: http.StatusServiceUnavailable, retry: true,
			msg:  "workload " + workload + " has no credential yet: registering it failed: " + err.Error(),
			hint: "the agent retries; see its log"})
	}
}

// settleWorkloads applies the verifier's view of this host's credentials
// (states) to the configured workloads: a revoked credential is marked and
// never signs again; a reissued one is replaced by a new registration; a
// workload whose registration may succeed now is retried (with backoff).
func (a *Agent) settleWorkloads(ctx context.Context, states []api.CredentialState) {
	byWorkload := map[string]api.CredentialState{}
	for _, st := range states {
		byWorkload[st.Workload] = st
	}
	now := time.Now()
	for _, w := range a.cfg.Workloads {
		st, known := byWorkload[w.Name]
		a.mu.Lock()
		cur, down := a.creds[w.Name], a.down[w.Name]
		a.mu.Unlock()
		switch {
		case known && st.Status == api.CredentialRevoked:
			a.revoked(w.Name, st.ID, cur)
			if !st.Reissue {
				continue
			}
			a.log.Info("an operator reissued the workload's revoked credential: registering a new one", "workload", w.Name, "revoked", st.ID)
		case down == nil || !down.retry || now.Before(down.next):
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, rotateTimeout)
		err := a.registerWorkload(rctx, w.Name)
		cancel()
		if err == nil {
			continue
		}
		a.log.Warn("registration failed", "workload", w.Name, "error", err)
		a.registrationFailed(w.Name, err, states)
		a.mu.Lock()
		if d := a.down[w.Name]; d != nil && d.retry {
			if down != nil {
				d.attempts = down.attempts + 1
			}
			d.next = now.Add(retryDelay(d.attempts))
		}
		a.mu.Unlock()
	}
}

// revoked marks workload's credential id revoked, on disk (if the agent
// has it) and for the socket.
func (a *Agent) revoked(workload, id string, cur *Credential) {
	if cur != nil && cur.IDString() == id {
		if err := a.auth.MarkRevoked(cur.ID, time.Now()); err != nil {
			// Fail closed all the same: the socket refuses it below, and
			// the mark is tried again at the next check.
			a.log.Error("cannot record the revocation on disk", "workload", workload, "credential", id, "error", err)
		}
	}
	a.setUnavailable(workload, revokedWorkload(workload, id))
}
