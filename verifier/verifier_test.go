package verifier_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func TestEnrollAndRegister(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	token := f.Token(t, time.Hour, "billing", "metrics")
	start := time.Now()
	e, err := f.Enroll(t, a, token)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	t.Logf("enrollment took %v end to end", time.Since(start))
	if e.Status != api.HostActive || a.AKCertificate() == nil {
		t.Fatalf("enrollment = %+v, AK cert %d bytes; want active with a certificate", e, len(a.AKCertificate()))
	}
	var h record.Host
	if code := f.Admin(t, "host.show", api.IDRequest{ID: e.HostID}, &h); code != "" {
		t.Fatalf("host.show: %s", code)
	}
	if strings.Join(h.Roles, ",") != "billing,metrics" || h.Status != api.HostActive {
		t.Fatalf("host record %+v", h)
	}

	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cred, err := a.RegisterWithVerifier(context.Background(), nc, "billing")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	var c record.Credential
	if code := f.Admin(t, "credential.show", api.IDRequest{ID: cred.IDString()}, &c); code != "" {
		t.Fatalf("credential.show: %s", code)
	}
	if c.Host != e.HostID || c.Workload != "billing" || c.Status != api.CredentialActive {
		t.Fatalf("credential record %+v", c)
	}
}

func TestTokenSingleUse(t *testing.T) {
	f := fleettest.New(t)
	token := f.Token(t, time.Hour, "demo")
	if _, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), token); err != nil {
		t.Fatal(err)
	}
	// A second TPM of the same manufacturer: only the token stands in its way.
	other := swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM))
	_, err := f.Enroll(t, fleettest.Authenticator(t, other), token)
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a used token: %v, want an authorization violation", err)
	}
	var tokens []record.Token
	f.Admin(t, "token.list", nil, &tokens)
	if len(tokens) != 1 || tokens[0].State(time.Now()) != "used" || tokens[0].UsedBy == "" {
		t.Fatalf("tokens = %+v, want one used token", tokens)
	}
}

func TestTokenExpired(t *testing.T) {
	clock := &testClock{now: time.Now()}
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.Clock = clock.Now })
	token := f.Token(t, time.Hour, "demo")
	clock.Advance(time.Hour + time.Second) // the token is past its expiry
	if _, err := f.EnrollSession(token); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with an expired token: %v, want an authorization violation", err)
	}
	// Nor may a live session of another token spend it: the server refuses
	// the publish to the token's scope, and on the session's own scope the
	// verifier refuses the body naming it.
	onErr, violations := fleettest.Violations()
	other := f.Token(t, time.Hour)
	nc, err := f.EnrollSession(other, onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fleettest.PublishRefused(t, nc, violations, api.TokenScope(token).Subject(api.OpEnrollBegin))
	ek, err := fleettest.Authenticator(t, f.TPM).TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	code := fleettest.Request(t, nc, api.TokenScope(other).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{Token: token, Hostname: "x", EKPublic: der}, nil)
	if code != api.CodeTokenInvalid {
		t.Fatalf("enroll.begin naming another token on a session's own scope: %q, want %s", code, api.CodeTokenInvalid)
	}
}

func TestUnknownTokenDenied(t *testing.T) {
	f := fleettest.New(t)
	if _, err := f.EnrollSession("tpmauthn-join-forged"); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a forged token: %v", err)
	}
	if _, err := nats.Connect(f.URL(), nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with nothing: %v", err)
	}
}

func TestEKFromUntrustedCA(t *testing.T) {
	f := fleettest.New(t)
	stranger := swtpmtest.New(t) // its EK chains to its own swtpm-localca
	a := fleettest.Authenticator(t, stranger)
	_, err := f.Enroll(t, a, f.Token(t, time.Hour))
	fleettest.WantCode(t, err, "ek_untrusted")
	// A manufacturer the verifier was not told to trust is configuration:
	// the refusal names the issuer and the EK hash for ek allow, and raises
	// no tamper signal.
	ek, err2 := a.TPM().EK()
	if err2 != nil {
		t.Fatal(err2)
	}
	hash, err2 := attestation.EKHash(ek.Public)
	if err2 != nil {
		t.Fatal(err2)
	}
	issuer := ek.Certificate.Issuer.String()
	for _, want := range []string{issuer, "--ek-ca-dir", "tpmauthnctl ek allow " + hash} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err, want)
		}
	}
	for _, ev := range f.AuditEvents(t) {
		if strings.HasPrefix(ev.Kind, "alert.") {
			t.Errorf("an EK from an untrusted manufacturer raised %s", ev.Kind)
		}
	}
}

func TestNoEKCADirFailsClosed(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.EKCADir = "" })
	_, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour))
	fleettest.WantCode(t, err, "ek_untrusted")
}

func TestSessionPermissions(t *testing.T) {
	f := fleettest.New(t)
	var mu sync.Mutex
	var violations []string
	nc, err := f.EnrollSession(f.Token(t, time.Hour), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		mu.Lock()
		violations = append(violations, err.Error())
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subj := range []string{"app.data", "tpmauthn.admin.token.list", "$SYS.REQ.SERVER.PING", "tpmauthn.v2.anything"} {
		if err := nc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.SubscribeSync("app.>"); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 3*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(violations) < 5 {
			return fmt.Errorf("violations = %q, want 5 (4 publishes, 1 subscribe)", violations)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(violations) != 5 {
		t.Fatalf("violations = %q, want 5 (4 publishes, 1 subscribe)", violations)
	}
	for _, v := range violations {
		if !strings.Contains(v, "Permissions Violation") {
			t.Fatalf("unexpected error %q", v)
		}
	}
}

func TestManualApproval(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.Approval = verifier.ApprovalManual })
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != api.HostPending || a.AKCertificate() != nil {
		t.Fatalf("enrollment %+v with AK cert; want pending without", e)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = a.RegisterWithVerifier(context.Background(), nc, "billing")
	if !errors.Is(err, agent.ErrNotEnrolled) {
		var ve *agent.VerifierError
		if !errors.As(err, &ve) || ve.Code != "host_not_active" {
			t.Fatalf("register while pending: %v", err)
		}
	}
	if got, err := a.CheckEnrollment(context.Background(), nc); err != nil || got.Status != api.HostPending {
		t.Fatalf("status before approval = %+v, %v", got, err)
	}
	if code := f.Admin(t, "host.approve", api.IDRequest{ID: e.HostID}, nil); code != "" {
		t.Fatalf("host.approve: %s", code)
	}
	got, err := a.CheckEnrollment(context.Background(), nc)
	if err != nil || got.Status != api.HostActive || a.AKCertificate() == nil {
		t.Fatalf("status after approval = %+v, %v", got, err)
	}
	if _, err := a.RegisterWithVerifier(context.Background(), nc, "billing"); err != nil {
		t.Fatalf("register after approval: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.MetricsListen = "127.0.0.1:0" })
	if _, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.EnrollSession("tpmauthn-join-forged"); err == nil {
		t.Fatal("forged token accepted")
	}
	resp, err := http.Get("http://" + f.Verifier.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`tpmauthn_enrollments_total{result="ok"} 1`,
		`tpmauthn_requests_total{endpoint="$SYS.REQ.USER.AUTH",result="denied"} 1`,
		`tpmauthn_request_duration_seconds_count{endpoint="tpmauthn.v1.enroll.begin"} 1`,
		"\ntpmauthn_audit_backlog ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// testClock is a verifier clock the test moves (Config.Clock).
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
