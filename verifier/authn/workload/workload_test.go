package workload

import (
	"fmt"
	"sync"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
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
}
