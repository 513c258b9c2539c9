package e2e

import (
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// P5: AK certificates expire (a year), and nothing renewed them: past the
// expiry every registration and rotation failed, only logged. Now
// register.begin returns the host's AK certificate, renewed when less than
// a third of its validity is left, and the agent attests with it; an expired
// one is refused with an error that says so. Certificates keep the real
// clock (go-webauthn checks them against it), so the test ages them by
// issuing an expired one and by restarting the verifier with a longer
// validity, under which the host's certificate is near its end.
func TestAKCertRenewedBeforeExpiry(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.AKCertValidity = time.Hour })
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	orig := a.AKCertificate()

	// The agent's certificate expired: a registration with it is refused,
	// and the error says why.
	ak, err := a.AK()
	if err != nil {
		t.Fatal(err)
	}
	ks := f.Verifier.Keys()
	expired, err := attestation.IssueAKCertificate(ks.FleetCA, ks.FleetCAKey, attestation.AKCertRequest{
		AKPublic: ak.Public(), TPM: attestation.TPMIdentity{Manufacturer: "id:00001014", Model: "swtpm", Version: "id:20191023"},
		NotBefore: time.Now().Add(-2 * time.Hour), Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetAKCertificate(expired); err != nil {
		t.Fatal(err)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	code, msg := registerWithStoredCert(t, nc, a, e.HostID, "billing")
	nc.Close()
	if code != api.CodeAttestationRejected || !strings.Contains(msg, "AK certificate expired") {
		t.Fatalf("registration with an expired AK certificate: %s %q, want %s naming the expiry", code, msg, api.CodeAttestationRejected)
	}

	// Under a four-hour validity the host's one-hour certificate has less
	// than a third left: register.begin renews it, the agent stores it,
	// and the registration works although the agent's own had expired.
	f.Verifier.Close()
	f.Config.AKCertValidity = 4 * time.Hour
	f.Start(t)
	nc, err = f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := a.RegisterWithVerifier(t.Context(), nc, "billing"); err != nil {
		t.Fatalf("registration past the agent's AK certificate's expiry: %v", err)
	}
	renewed, err := x509.ParseCertificate(a.AKCertificate())
	if err != nil {
		t.Fatal(err)
	}
	if string(a.AKCertificate()) == string(orig) || time.Until(renewed.NotAfter) < 3*time.Hour {
		t.Fatalf("AK certificate not renewed: valid until %s", renewed.NotAfter)
	}
	// The next registration keeps it: a renewal is not a churn.
	if _, err := a.RegisterWithVerifier(t.Context(), nc, "orders"); err != nil {
		t.Fatal(err)
	}
	if string(a.AKCertificate()) != string(renewed.Raw) {
		t.Fatal("AK certificate renewed again with most of its validity left")
	}
	renewals := 0
	for _, ev := range f.AuditEvents(t) {
		if ev.Kind == "akcert.renew" && ev.Host == e.HostID {
			renewals++
		}
	}
	if renewals != 1 {
		t.Fatalf("%d akcert.renew events, want 1", renewals)
	}
}

// registerWithStoredCert registers workload with the AK certificate a holds,
// ignoring any the verifier sends (an agent that predates renewal), and
// returns the verifier's error code and message.
func registerWithStoredCert(t *testing.T, nc *nats.Conn, a *agent.Authenticator, host, workload string) (code, msg string) {
	t.Helper()
	var begin api.RegisterBeginResponse
	if code := fleettest.Request(t, nc, api.HostScope(host).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: host, Workload: workload}, &begin); code != "" {
		t.Fatalf("register.begin: %s", code)
	}
	resp, _, err := a.Register(agent.RegisterOptions{Name: workload, RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(api.RegisterFinishRequest{HostID: host, Workload: workload, Challenge: begin.Challenge, Response: resp})
	if err != nil {
		t.Fatal(err)
	}
	m, err := nc.Request(api.HostScope(host).Subject(api.OpRegisterFinish), b, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error")
}
