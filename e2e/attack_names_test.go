package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
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

// M5/M4 (rest): one session could call register.begin (or enroll.begin) as
// fast as the verifier answered, each call a record in a bounded bucket
// (challenges, open enrollments) that the whole fleet shares. Now each
// session has a burst of 64 begins, then one a second; another session is
// not slowed by it.
func TestAttackSessionFloodsChallenges(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	flood, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	req := api.RegisterBeginRequest{HostID: e.HostID, Workload: "billing"}
	limited := 0
	for range 80 {
		switch code := fleettest.Request(t, flood, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), req, nil); code {
		case "":
		case api.CodeRateLimited:
			limited++
		default:
			t.Fatalf("register.begin: %s", code)
		}
	}
	if limited < 80-64-2 { // a token or two may refill during the flood
		t.Fatalf("%d of 80 register.begin calls of one session limited, want at least 14", limited)
	}
	// The budget is the caller's scope's (a host's agent, a join token's
	// session), not the connection's: reconnecting does not refill it.
	again, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if code := fleettest.Request(t, again, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), req, nil); code != api.CodeRateLimited {
		t.Fatalf("register.begin on a new connection of the same grant: %q, want %s", code, api.CodeRateLimited)
	}
	// Another grant is not slowed down.
	other := fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM)))
	if _, err := f.Enroll(t, other, f.Token(t, time.Hour, "demo")); err != nil {
		t.Fatalf("another host's enrollment during the flood: %v", err)
	}
}

// M4 (rest): refused CONNECTs are remembered for a few seconds so that a
// flood repeating one costs no KV read; what an operator creates right
// after a refusal (a join token, an allow-listed EK) must work at once.
func TestRefusedLookupThenCreatedWorks(t *testing.T) {
	f := fleettest.New(t)
	if _, err := f.EnrollSession("not-a-token"); err == nil {
		t.Fatal("a bogus join token opened a session")
	}
	nc, err := f.EnrollSession(f.Token(t, time.Hour))
	if err != nil {
		t.Fatalf("a token created after a refused one: %v", err)
	}
	nc.Close()

	ek, err := fleettest.Authenticator(t, f.TPM).TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := attestation.EKHash(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	connect := func() (*nats.Conn, error) {
		return nats.Connect(f.URL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.CustomInboxPrefix(api.InboxForEK(hash)), nats.MaxReconnects(0))
	}
	for range 3 {
		if _, err := connect(); err == nil {
			t.Fatal("an EK not on the allow-list opened a session")
		}
	}
	f.MustAdmin(t, "ek.allow", api.EKAllowRequest{EKHash: hash, Roles: []string{"demo"}}, nil)
	nc, err = connect()
	if err != nil {
		t.Fatalf("an EK allowed right after its refusal: %v", err)
	}
	nc.Close()
}

// M4 (rest): each refused unauthenticated CONNECT cost an audit event of its
// own. Now the first is recorded at once and the repeats of its reason from
// its address are one connect.enroll.repeat event with their count, at the end of
// the window (or at shutdown, as here).
func TestAttackRefusedConnectFloodAggregated(t *testing.T) {
	f := fleettest.New(t)
	for range 20 {
		if _, err := f.EnrollSession("not-a-token"); err == nil {
			t.Fatal("a bogus join token opened a session")
		}
	}
	f.Verifier.Close() // ends the window: its count is recorded
	f.Start(t)
	denies, repeats := 0, 0
	for _, e := range f.AuditEvents(t) {
		switch {
		case e.Kind == "connect.enroll" && e.Result == "deny" && strings.Contains(e.Reason, "join token"):
			denies++
		case e.Kind == "connect.enroll.repeat" && strings.HasPrefix(e.Reason, "19 more denials"):
			repeats++
		}
	}
	if denies != 1 || repeats != 1 {
		t.Fatalf("%d denial events and %d repeat events for 20 refused CONNECTs, want 1 and 1 (counting 19)", denies, repeats)
	}
}
