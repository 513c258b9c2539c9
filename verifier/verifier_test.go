package verifier_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// fleet is a running verifier that trusts the EK CA of one swtpm.
type fleet struct {
	v       *verifier.Verifier
	cfg     verifier.Config
	sw      *swtpmtest.TPM
	ekCADir string
	op      *nats.Conn
}

func ekCADir(t testing.TB, sw *swtpmtest.TPM) string {
	t.Helper()
	dir := t.TempDir()
	for name, c := range map[string][]byte{"root.pem": sw.RootCert(t).Raw, "intermediate.pem": sw.IntermediateCert(t).Raw} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newFleet(t *testing.T, mod func(*verifier.Config)) *fleet {
	t.Helper()
	sw := swtpmtest.New(t)
	f := &fleet{sw: sw, ekCADir: ekCADir(t, sw)}
	f.cfg = verifier.Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1", EKCADir: f.ekCADir, RPID: "fleet.example.com", Logger: testLogger(t)}
	if mod != nil {
		mod(&f.cfg)
	}
	f.start(t)
	return f
}

func (f *fleet) start(t *testing.T) {
	t.Helper()
	v, err := verifier.New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	f.v = v
	f.op = operatorConn(t, f.cfg.DataDir, v.ClientURL())
}

func operatorConn(t testing.TB, dataDir, url string) *nats.Conn {
	t.Helper()
	seed, _ := keys.OperatorFiles(dataDir)
	kp, err := keys.LoadNKey(seed)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := kp.PublicKey()
	nc, err := nats.Connect(url, nats.Nkey(pk, kp.Sign))
	if err != nil {
		t.Fatalf("operator connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// admin calls an operator endpoint; it returns the verifier's error code.
func admin(t testing.TB, nc *nats.Conn, op string, req, resp any) string {
	t.Helper()
	b, _ := json.Marshal(req)
	m, err := nc.Request(api.SubjectAdminPrefix+op, b, 5*time.Second)
	if err != nil {
		t.Fatalf("admin %s: %v", op, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return code
	}
	if resp != nil {
		if err := json.Unmarshal(m.Data, resp); err != nil {
			t.Fatalf("admin %s: %v", op, err)
		}
	}
	return ""
}

func (f *fleet) token(t *testing.T, ttl time.Duration, roles ...string) string {
	t.Helper()
	var r api.TokenCreateResponse
	if code := admin(t, f.op, "token.create", api.TokenCreateRequest{Roles: roles, TTL: ttl}, &r); code != "" {
		t.Fatalf("token.create: %s", code)
	}
	return r.Token
}

// sessionConn connects as a join-token holder: an enrollment session.
func sessionConn(url, token string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(url, append([]nats.Option{nats.Token(token), nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}, opts...)...)
}

func newAgent(t *testing.T, sw *swtpmtest.TPM) *agent.Authenticator {
	t.Helper()
	a, err := agent.NewAuthenticator(sw.Open(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (f *fleet) enroll(t *testing.T, a *agent.Authenticator, token string) (*agent.Enrollment, error) {
	t.Helper()
	nc, err := sessionConn(f.v.ClientURL(), token)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	return a.Enroll(context.Background(), nc, token, "host-under-test")
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var ve *agent.VerifierError
	if !errors.As(err, &ve) || ve.Code != code {
		t.Fatalf("error = %v, want verifier code %s", err, code)
	}
}

func TestEnrollAndRegister(t *testing.T) {
	f := newFleet(t, nil)
	a := newAgent(t, f.sw)
	token := f.token(t, time.Hour, "billing", "metrics")
	start := time.Now()
	e, err := f.enroll(t, a, token)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	t.Logf("enrollment took %v end to end", time.Since(start))
	if e.Status != api.HostActive || a.AKCertificate() == nil {
		t.Fatalf("enrollment = %+v, AK cert %d bytes; want active with a certificate", e, len(a.AKCertificate()))
	}
	var h record.Host
	if code := admin(t, f.op, "host.show", api.IDRequest{ID: e.HostID}, &h); code != "" {
		t.Fatalf("host.show: %s", code)
	}
	if strings.Join(h.Roles, ",") != "billing,metrics" || h.Status != api.HostActive {
		t.Fatalf("host record %+v", h)
	}

	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cred, err := a.RegisterWithVerifier(context.Background(), nc, "billing")
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	var c record.Credential
	if code := admin(t, f.op, "credential.show", api.IDRequest{ID: cred.IDString()}, &c); code != "" {
		t.Fatalf("credential.show: %s", code)
	}
	if c.Host != e.HostID || c.Workload != "billing" || c.Status != api.CredentialActive {
		t.Fatalf("credential record %+v", c)
	}
}

func TestTokenSingleUse(t *testing.T) {
	f := newFleet(t, nil)
	token := f.token(t, time.Hour, "demo")
	if _, err := f.enroll(t, newAgent(t, f.sw), token); err != nil {
		t.Fatal(err)
	}
	// A second TPM of the same manufacturer: only the token stands in its way.
	other := swtpmtest.New(t, swtpmtest.SameManufacturer(f.sw))
	_, err := f.enroll(t, newAgent(t, other), token)
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a used token: %v, want an authorization violation", err)
	}
	var tokens []record.Token
	admin(t, f.op, "token.list", nil, &tokens)
	if len(tokens) != 1 || tokens[0].State(time.Now()) != "used" || tokens[0].UsedBy == "" {
		t.Fatalf("tokens = %+v, want one used token", tokens)
	}
}

func TestTokenExpired(t *testing.T) {
	f := newFleet(t, nil)
	token := f.token(t, time.Second, "demo")
	time.Sleep(1100 * time.Millisecond)
	if _, err := sessionConn(f.v.ClientURL(), token); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with an expired token: %v, want an authorization violation", err)
	}
	// At the endpoint too: a live session of another token cannot spend it.
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, err = newAgent(t, f.sw).Enroll(context.Background(), nc, token, "x")
	wantCode(t, err, "token_invalid")
}

func TestUnknownTokenDenied(t *testing.T) {
	f := newFleet(t, nil)
	if _, err := sessionConn(f.v.ClientURL(), "tpmauthn-join-forged"); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with a forged token: %v", err)
	}
	if _, err := nats.Connect(f.v.ClientURL(), nats.MaxReconnects(0)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with nothing: %v", err)
	}
}

func TestEKFromUntrustedCA(t *testing.T) {
	f := newFleet(t, nil)
	stranger := swtpmtest.New(t) // its EK chains to its own swtpm-localca
	_, err := f.enroll(t, newAgent(t, stranger), f.token(t, time.Hour))
	wantCode(t, err, "ek_untrusted")
}

func TestNoEKCADirFailsClosed(t *testing.T) {
	f := newFleet(t, func(c *verifier.Config) { c.EKCADir = "" })
	_, err := f.enroll(t, newAgent(t, f.sw), f.token(t, time.Hour))
	wantCode(t, err, "ek_untrusted")
}

func TestSessionPermissions(t *testing.T) {
	f := newFleet(t, nil)
	var mu sync.Mutex
	var violations []string
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
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
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(violations)
		mu.Unlock()
		if n >= 5 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	f := newFleet(t, func(c *verifier.Config) { c.Approval = verifier.ApprovalManual })
	a := newAgent(t, f.sw)
	e, err := f.enroll(t, a, f.token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != api.HostPending || a.AKCertificate() != nil {
		t.Fatalf("enrollment %+v with AK cert; want pending without", e)
	}
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
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
	if code := admin(t, f.op, "host.approve", api.IDRequest{ID: e.HostID}, nil); code != "" {
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

// testLogger sends the verifier's logs to the test log (-v shows them).
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func attestationB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestMetrics(t *testing.T) {
	f := newFleet(t, func(c *verifier.Config) { c.MetricsListen = "127.0.0.1:0" })
	if _, err := f.enroll(t, newAgent(t, f.sw), f.token(t, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := sessionConn(f.v.ClientURL(), "tpmauthn-join-forged"); err == nil {
		t.Fatal("forged token accepted")
	}
	resp, err := http.Get("http://" + f.v.MetricsAddr() + "/metrics")
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
