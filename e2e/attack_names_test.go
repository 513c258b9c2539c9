package e2e

import (
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// P7 (case): "billing" and "Billing" were two workloads of one host that
// look the same in tags, user names and listings. New workload names are
// lower case; the lower-case ones keep working.
func TestAttackWorkloadNamesDifferingByCase(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := a.RegisterWithVerifier(t.Context(), nc, "billing"); err != nil {
		t.Fatalf("a lower-case workload name: %v", err)
	}
	for _, name := range []string{"Billing", "BILLING", "Orders"} {
		t.Run(name, func(t *testing.T) {
			_, err := a.RegisterWithVerifier(t.Context(), nc, name)
			fleettest.WantCode(t, err, api.CodeBadRequest)
		})
	}
	if _, err := a.RegisterWithVerifier(t.Context(), nc, "orders-2_b"); err != nil {
		t.Fatalf("a lower-case workload name with digits, '-' and '_': %v", err)
	}
}
