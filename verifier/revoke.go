package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// kickTimeout bounds one KICK request to a server.
const kickTimeout = time.Second

// connectSys opens the system-account connection used for kicks.
func (v *Verifier) connectSys(url string) error {
	kp := v.keys.Sys
	nc, err := nats.Connect(url, append(v.connOptions("tpmauthn-verifier-sys"), nats.Nkey(keys.Public(kp), kp.Sign))...)
	if err != nil {
		return fmt.Errorf("connect to NATS as the system user (for kicks): %w", err)
	}
	v.sysNC = nc
	return nil
}

// kick disconnects the live sessions of a credential, each on the server
// that holds it ($SYS.REQ.SERVER.<id>.KICK). A session already gone is not
// an error.
func (v *Verifier) kick(c *record.Credential) int {
	select {
	case <-v.done: // shutting down: the system connection is drained; other instances kick
		return 0
	default:
	}
	now := time.Now()
	n := 0
	for _, s := range c.Sessions {
		if !s.Expires.After(now) || v.sysNC == nil {
			continue
		}
		body, _ := json.Marshal(map[string]uint64{"cid": s.Client})
		m, err := v.sysNC.Request("$SYS.REQ.SERVER."+s.Server+".KICK", body, kickTimeout)
		if err != nil {
			v.log.Warn("kick failed", "credential", c.ID, "server", s.Server, "client", s.Client, "error", err)
			continue
		}
		var resp struct {
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &resp) == nil && resp.Error != nil {
			continue // no such client: it left already
		}
		n++
	}
	if n > 0 {
		v.log.Info("live sessions kicked", "credential", c.ID, "count", n)
	}
	return n
}

// setCredentialStatus moves a credential to status through its state
// machine (record.ErrTransition if the edge is illegal: revoked is final) in
// one compare-and-set, and kicks its live sessions unless it becomes active.
// check, if set, runs on the record read before the change and may refuse it.
func (v *Verifier) setCredentialStatus(ctx context.Context, id string, status api.CredentialStatus, reason string, check func(*record.Credential) error) (*record.Credential, error) {
	c, _, err := mutate(ctx, v.st.creds, id, func(c *record.Credential) error {
		if check != nil {
			if err := check(c); err != nil {
				return err
			}
		}
		return c.Transition(status, reason, time.Now())
	})
	if err != nil {
		return nil, err
	}
	if status != api.CredentialActive {
		v.kick(c)
	}
	return c, nil
}

// hostCredentials lists a host's credentials.
func (v *Verifier) hostCredentials(ctx context.Context, host string) ([]*record.Credential, error) {
	all, err := list[record.Credential](ctx, v.st.creds)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(c *record.Credential) bool { return c.Host != host }), nil
}

// revokeHost sets the host's status and revokes every credential of it (so
// that a connect racing with the revocation is ordered by the credential's
// compare-and-set, and its session is kicked).
func (v *Verifier) revokeHost(ctx context.Context, id string, status api.HostStatus, reason string) (*record.Host, error) {
	h, _, err := mutate(ctx, v.st.hosts, id, func(h *record.Host) error {
		return h.Transition(status, reason, time.Now())
	})
	if err != nil {
		return nil, err
	}
	creds, err := v.hostCredentials(ctx, id)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		if c.Status == api.CredentialRevoked {
			v.kick(c)
			continue
		}
		why := "host " + string(status) + ": " + reason
		if _, err := v.setCredentialStatus(ctx, c.ID, api.CredentialRevoked, why, nil); err != nil {
			return nil, err
		}
		// Each credential's own event, so that a search by credential finds
		// it; the operator's host event follows.
		v.audit.Record(audit.Event{Kind: "revoke", Result: "ok", Host: c.Host, Workload: c.Workload, Credential: c.ID, Reason: why, Actor: "operator"})
	}
	if status == api.HostOffboarded {
		// Forget the EK enrollment: the TPM may enroll again, as a new host.
		if err := v.st.eks.Delete(ctx, h.EKHash); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("forget EK enrollment: %w", err)
		}
	}
	return h, nil
}

// watchRevocations kicks sessions whenever a credential leaves the active
// state, whichever verifier instance (or operator tool) changed it.
func (v *Verifier) watchRevocations(ctx context.Context) error {
	w, err := v.st.creds.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch credentials: %w", err)
	}
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			// Every connect writes its credential (counter, session), and the
			// watch brings each write back. A revision this instance cached is
			// its own connect's write of an active credential: skip it
			// undecoded; others decode their status first, the rest only
			// when it is not active.
			if rev, ok := v.creds.rev(e.Key()); ok && rev == e.Revision() {
				continue
			}
			var st struct {
				Status api.CredentialStatus `json:"status"`
			}
			if json.Unmarshal(e.Value(), &st) != nil || st.Status == api.CredentialActive {
				continue
			}
			var c record.Credential
			if json.Unmarshal(e.Value(), &c) != nil {
				continue
			}
			v.kick(&c)
		}
	}()
	return nil
}

// alert publishes a tamper signal on tpmauthn.alerts.<kind>, counts it and
// audits it.
func (v *Verifier) alert(kind string, e audit.Event) {
	e.Kind, e.Result = "alert."+kind, "alert"
	v.metrics.tamper.WithLabelValues(kind).Inc()
	v.log.Warn("tamper signal", "kind", kind, "host", e.Host, "credential", e.Credential, "reason", e.Reason)
	if b, err := json.Marshal(e); err == nil && v.nc != nil {
		_ = v.nc.Publish("tpmauthn.alerts."+kind, b)
	}
	v.audit.Record(e)
}

// Alert kinds.
const (
	AlertCounterRegression = "counter_regression"
	AlertRevokedUsed       = "revoked_credential_used"
	AlertAKMismatch        = "ak_mismatch"
	AlertEKUntrusted       = "ek_untrusted"
)
