package e2e

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// The attack suite (docs/threat-model.md): each test is one attack as the
// attacker would run it against the real agent, swtpm and verifier, and
// asserts that it fails and is audited.

// H1: a relying party that gets a workload to answer its challenges through
// the agent's generic assertion endpoint (/v1/assertion) relays a NATS
// server's nonce as NATSChallenge(nonce) and presents the answer as the
// workload's NATS login. On 7faeb90 the login succeeded: both paths signed
// for the same origin. Now NATS assertions name the verifier's own origin,
// which the generic endpoint never signs for.
func TestAttackGenericAssertionRelayedAsNATSLogin(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	c := client.New(h.Socket)
	who, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	relay := nats.Nkey(who.NKey, func(nonce []byte) ([]byte, error) {
		raw, err := c.Assertion(t.Context(), attestation.NATSChallenge(nonce))
		if err != nil {
			return nil, err
		}
		var resp api.AssertionResponse
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, err
		}
		a, err := attestation.DecodeAssertionResponse(&resp)
		if err != nil {
			return nil, err
		}
		return attestation.MarshalBundle(a)
	})
	nc, err := nats.Connect(f.URL(), relay, nats.MaxReconnects(0))
	wantDenied(t, nc, err)
	eventually.Until(t, 5*time.Second, func() error {
		for _, e := range f.AuditEvents(t) {
			if e.Kind == "connect" && e.Result == "deny" && e.Credential == who.CredentialID && strings.Contains(e.Reason, "origin") {
				return nil
			}
		}
		return errAttackNotAudited
	})
	// The workload's own NATS login still works.
	nc, err = h.Connect(t)
	if err != nil {
		t.Fatalf("the workload's own login: %v", err)
	}
	nc.Close()
}

var errAttackNotAudited = errors.New("the refused attack is not in the audit trail as a denied connect")
