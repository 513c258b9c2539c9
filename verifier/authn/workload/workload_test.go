package workload

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// alerts records the alerts raised.
type alerts struct {
	mu    sync.Mutex
	kinds []string
}

func (a *alerts) Alert(kind string, _ audit.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kinds = append(a.kinds, kind)
}

// A tamper signal on a credential revoked meanwhile must not turn the
// revocation into a quarantine, which an operator could then release (on
// 7faeb90 it did). The signal is still raised.
func TestQuarantineKeepsARevocation(t *testing.T) {
	e := testenv.New(t)
	var al alerts
	m := New(Config{Fleet: e.Fleet, Sessions: sessions.New(sessions.Config{Fleet: e.Fleet, Trail: e.Trail}), Alerts: &al, RPID: "tpmauthn.local"})
	for _, tc := range []struct {
		name string
		from api.CredentialStatus
		want api.CredentialStatus
	}{
		{"active", api.CredentialActive, api.CredentialQuarantined},
		{"revoked", api.CredentialRevoked, api.CredentialRevoked},
		{"quarantined", api.CredentialQuarantined, api.CredentialQuarantined},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "cred-" + tc.name
			e.PutCredential(t, id, tc.from)
			ev := audit.Deny("connect")
			m.Quarantine(t.Context(), id, &ev, fmt.Errorf("%w: counter 3 equals the last accepted", api.ErrReplay))
			if got := e.Credential(t, id).Status; got != tc.want {
				t.Fatalf("a %s credential after a tamper signal is %s, want %s", tc.from, got, tc.want)
			}
		})
	}
	if len(al.kinds) != 3 || al.kinds[1] != alert.CounterRegression {
		t.Fatalf("alerts %v: want a counter regression for each signal", al.kinds)
	}

	// A decision made after its client stopped waiting still quarantines.
	e.PutCredential(t, "cred-late", api.CredentialActive)
	late, cancel := context.WithCancel(t.Context())
	cancel()
	ev := audit.Deny("connect")
	m.Quarantine(late, "cred-late", &ev, fmt.Errorf("%w: counter 3 equals the last accepted", api.ErrReplay))
	if got := e.Credential(t, "cred-late").Status; got != api.CredentialQuarantined {
		t.Fatalf("quarantine on a decision past its deadline: %s", got)
	}
}

// A credential its workload index no longer names, yet never retired (the
// rotation's last write failed), gets its grace period at its next use;
// the current credential and one already retiring are left as they are.
func TestRetireIfReplaced(t *testing.T) {
	e := testenv.New(t)
	m := New(Config{Fleet: e.Fleet, RotationGrace: 10 * time.Minute, RPID: "tpmauthn.local"})
	idx := &record.WorkloadIndex{V: record.Version, Credential: "cred-new"}
	if err := store.Create(t.Context(), e.Store.Workloads, "h-test.w", idx); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 5*time.Second, func() error {
		if cur, _ := e.Fleet.CurrentCredential("h-test", "w"); cur != "cred-new" {
			return fmt.Errorf("the fleet sees %q as current", cur)
		}
		return nil
	})
	earlier := time.Now().Add(time.Minute)
	for _, tc := range []struct {
		name    string
		cred    record.Credential
		retires bool // a new retirement is set
	}{
		{"replaced", record.Credential{ID: "cred-old", Host: "h-test", Workload: "w"}, true},
		{"current", record.Credential{ID: "cred-new", Host: "h-test", Workload: "w"}, false},
		{"retiring", record.Credential{ID: "cred-older", Host: "h-test", Workload: "w", Retires: earlier}, false},
		{"other workload", record.Credential{ID: "cred-x", Host: "h-test", Workload: "v"}, false},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			c := tc.cred
			before := c.Retires
			m.retireIfReplaced(&c)
			if changed := !c.Retires.Equal(before); changed != tc.retires {
				t.Fatalf("retires %v (was %v), want a new retirement: %v", c.Retires, before, tc.retires)
			}
			if tc.retires && (c.ReplacedBy != "cred-new" || time.Until(c.Retires) < 9*time.Minute) {
				t.Fatalf("replaced by %q, retires %v: want cred-new and the grace period", c.ReplacedBy, c.Retires)
			}
		})
	}
}

// M6: the maximum age only asked agents to rotate; the verifier accepted a
// credential of any age. Past its age and grace a workload credential is
// refused (the agent's own host credential, through which it rotates, is
// not).
func TestCredentialPastItsMaximumAge(t *testing.T) {
	m := New(Config{MaxAge: 30 * 24 * time.Hour, RotationGrace: 10 * time.Minute, RPID: "tpmauthn.local"})
	now := time.Now()
	for _, tc := range []struct {
		name     string
		workload string
		age      time.Duration
		expired  bool
	}{
		{"young", "billing", 24 * time.Hour, false},
		{"inGrace", "billing", 30*24*time.Hour + 5*time.Minute, false},
		{"expired", "billing", 31 * 24 * time.Hour, true},
		{"agentHostCredential", api.AgentWorkload, 365 * 24 * time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &record.Credential{ID: "c", Workload: tc.workload, Status: api.CredentialActive, Created: now.Add(-tc.age)}
			ev := audit.Deny("connect")
			err := m.checkStatus(c, &ev)
			if tc.expired != errors.Is(err, api.ErrExpired) || (!tc.expired && err != nil) {
				t.Fatalf("age %v: %v, want expired=%v", tc.age, err, tc.expired)
			}
		})
	}
	if err := New(Config{}).checkAge(&record.Credential{Created: now.Add(-1000 * 24 * time.Hour)}); err != nil {
		t.Fatalf("no maximum age configured: %v", err)
	}
}

// fakeBrowser checks every browser credential.
type fakeBrowser struct{}

func (fakeBrowser) Check(context.Context, *record.Credential) (attestation.AssertionCheck, error) {
	return attestation.AssertionCheck{}, nil
}

// TestHostless: a credential without a host passes only as a person's
// software key, or as a person's browser credential with a browser checker
// configured.
func TestHostless(t *testing.T) {
	passkey := &record.Credential{ID: "p", Person: "okta_1", Kind: record.KindPasskey}
	for _, tc := range []struct {
		name    string
		cred    *record.Credential
		browser browser
		ok      bool
	}{
		{"passkey", passkey, fakeBrowser{}, true},
		{"sessionKey", &record.Credential{ID: "s", Person: "okta_1", Kind: record.KindSessionKey}, fakeBrowser{}, true},
		{"noChecker", passkey, nil, false},
		{"workload", &record.Credential{ID: "w", Workload: "billing"}, fakeBrowser{}, false},
		{"noPerson", &record.Credential{ID: "n", Kind: record.KindPasskey}, fakeBrowser{}, false},
		{"unknownKind", &record.Credential{ID: "u", Person: "okta_1", Kind: "fido-u2f"}, fakeBrowser{}, false},
		{"softwareKey", &record.Credential{ID: "k", Person: "okta_1", Assurance: policy.AssuranceSoftware}, nil, true},
		// A synced passkey is software too, yet never a software key.
		{"syncedPasskeyNoChecker", &record.Credential{ID: "sp", Person: "okta_1", Kind: record.KindPasskey, Assurance: policy.AssuranceSoftware}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(Config{Browser: tc.browser})
			h, err := m.host(t.Context(), tc.cred)
			if tc.ok && (err != nil || h.Hostname != record.NoHost || h.ID != "") {
				t.Fatalf("host = %+v, %v", h, err)
			}
			if !tc.ok && !errors.Is(err, api.ErrRevoked) {
				t.Fatalf("host = %+v, %v; want ErrRevoked", h, err)
			}
		})
	}
}
