// Package fleettest runs a whole fleet for tests: a software TPM (swtpm), a
// verifier with its embedded nats-server that trusts the TPM's
// manufacturer, an operator's connection to it, and, on demand, agent
// daemons enrolled with join tokens (Host) or bare authenticators that a
// test drives step by step. The e2e tests and the verifier's black-box
// tests share it, so both run the configuration the binaries ship.
//
// Everything here needs swtpm and a nats-server: under go test -short every
// constructor skips the test (Require).
package fleettest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// RPID is the fleet's WebAuthn relying party.
const RPID = "fleet.example.com"

// Require skips t under -short, which is the unit tier: a fleet runs swtpm,
// a verifier and its nats-server. Otherwise it is swtpmtest.Require.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test runs swtpm and a verifier with its nats-server")
	}
	swtpmtest.Require(t)
}

// Fleet is a running verifier, with an embedded nats-server, that trusts the
// EK certificates of TPM's manufacturer.
type Fleet struct {
	TPM      *swtpmtest.TPM
	EKCADir  string          // TPM's manufacturer root and intermediate, as --ek-ca-dir
	Config   verifier.Config // what Start runs; options change it
	Verifier *verifier.Verifier
	Op       *nats.Conn // the operator's connection (admin endpoints)
	// Root and RootJS are an administrator's connection outside the
	// product (WithRoot only; nil otherwise).
	Root   *nats.Conn
	RootJS jetstream.JetStream

	sessionTTL time.Duration
	clientTLS  nats.Option // ClientTLS of the running verifier
	withRoot   bool
	// rootMaxStore bounds the root server's JetStream file store (0: the
	// server's default).
	rootMaxStore int64
}

// Option changes a fleet before its verifier starts (f.Config above all).
type Option func(f *Fleet)

// SessionTTL sets the session_ttl of the fleet's role policy (1m).
func SessionTTL(d time.Duration) Option { return func(f *Fleet) { f.sessionTTL = d } }

// TLS makes the embedded server serve TLS from the verifier's NATS CA (on
// loopback too, where it would not by default).
func TLS() Option { return func(f *Fleet) { f.Config.NATSTLS = verifier.TLSOn } }

// ClientTLS verifies the fleet's server as tpmauthnctl does: with the CA
// bundle its verifier records in its data dir, if it serves TLS.
func ClientTLS(t testing.TB, dataDir string) nats.Option {
	t.Helper()
	b, err := os.ReadFile(keys.ClientCAFile(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return func(*nats.Options) error { return nil }
	}
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemca.ParseCertificates(b)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return func(o *nats.Options) error {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		return nil
	}
}

// New starts a fleet on a fresh swtpm. The verifier's data dir, policy
// (DemoPolicy) and EK CA dir are in t's temp dirs; cleanup stops it all.
func New(t testing.TB, opts ...Option) *Fleet {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	f := &Fleet{TPM: swtpmtest.New(t), sessionTTL: time.Minute}
	f.EKCADir = EKCADir(t, f.TPM)
	f.Config = verifier.Config{DataDir: filepath.Join(dir, "verifier"), NATSListen: "127.0.0.1:-1", EKCADir: f.EKCADir,
		RPID: RPID, Logger: Logger(t, "verifier")}
	for _, o := range opts {
		o(f)
	}
	if f.Config.PolicyFile == "" {
		f.Config.PolicyFile = WritePolicy(t, f.sessionTTL)
	}
	if f.withRoot {
		f.startRoot(t)
	}
	f.Start(t)
	return f
}

// Start starts a verifier with f.Config and connects the operator. After
// f.Verifier.Close it is a restart on the same data dir.
func (f *Fleet) Start(t testing.TB) {
	t.Helper()
	f.Verifier = StartVerifier(t, f.Config)
	f.clientTLS = ClientTLS(t, f.Config.DataDir)
	f.Op = OperatorConn(t, f.Config.DataDir, f.Verifier.ClientURL())
}

// URL is the embedded nats-server's client URL.
func (f *Fleet) URL() string { return f.Verifier.ClientURL() }

// Admin calls an operator endpoint (api.SubjectAdminPrefix+op) and returns
// the verifier's error code, "" on success.
func (f *Fleet) Admin(t testing.TB, op string, req, resp any) string {
	t.Helper()
	return Admin(t, f.Op, op, req, resp)
}

// MustAdmin is Admin for calls that must succeed: an error code fails t.
func (f *Fleet) MustAdmin(t testing.TB, op string, req, resp any) {
	t.Helper()
	if code := Admin(t, f.Op, op, req, resp); code != "" {
		t.Fatalf("admin %s: %s", op, code)
	}
}

// Token creates a join token for roles.
func (f *Fleet) Token(t testing.TB, ttl time.Duration, roles ...string) string {
	t.Helper()
	var r api.TokenCreateResponse
	f.MustAdmin(t, "token.create", api.TokenCreateRequest{Roles: roles, TTL: ttl}, &r)
	return r.Token
}

// EnrollSession connects as a join-token holder: an enrollment session.
func (f *Fleet) EnrollSession(token string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(f.URL(), append([]nats.Option{f.clientTLS, nats.Token(token), nats.CustomInboxPrefix(api.InboxForToken(token)),
		nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}, opts...)...)
}

// HostSession connects as an enrolled host by its host proof (what the agent
// does to wait for approval and register its credentials): a session that
// may act for that host only.
func (f *Fleet) HostSession(e *agent.Enrollment, opts ...nats.Option) (*nats.Conn, error) {
	proof := base64.RawURLEncoding.EncodeToString(e.Proof)
	return nats.Connect(f.URL(), append([]nats.Option{f.clientTLS, nats.UserInfo(api.HostUserPrefix+e.HostID, proof),
		nats.CustomInboxPrefix(api.InboxForHost(e.HostID)),
		nats.Timeout(5 * time.Second), nats.MaxReconnects(0)}, opts...)...)
}

// Enroll enrolls a with token over an enrollment session of its own.
func (f *Fleet) Enroll(t testing.TB, a *agent.Authenticator, token string) (*agent.Enrollment, error) {
	t.Helper()
	nc, err := f.EnrollSession(token)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	return a.Enroll(context.Background(), nc, token, "host-under-test")
}

// Authenticator opens sw for a new authenticator (a host's TPM half, without
// the daemon) with its data in a temp dir.
func Authenticator(t testing.TB, sw *swtpmtest.TPM) *agent.Authenticator {
	t.Helper()
	a, err := agent.NewAuthenticator(sw.Open(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// StartVerifier starts a verifier with cfg and closes it on cleanup. It
// skips under -short, as everything with a nats-server does.
func StartVerifier(t testing.TB, cfg verifier.Config) *verifier.Verifier {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test runs a verifier with its nats-server")
	}
	v, err := verifier.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatalf("verifier start: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

// EKCADir writes sw's manufacturer root and intermediate into a directory,
// as an operator fills --ek-ca-dir.
func EKCADir(t testing.TB, sw *swtpmtest.TPM) string {
	t.Helper()
	dir := t.TempDir()
	for name, c := range map[string][]byte{"root.pem": sw.RootCert(t).Raw, "intermediate.pem": sw.IntermediateCert(t).Raw} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// DemoPolicy is the role policy fleets run: role demo, granted to hosts
// enrolled with role demo (Host's join token), may publish and subscribe
// under demo.> except publish to demo.secret.
const DemoPolicy = `session_ttl: %s
roles:
  demo:
    publish: {allow: ["demo.>", "demo.{{workload}}.>"], deny: ["demo.secret"]}
    subscribe: {allow: ["demo.>"]}
bindings:
  - host_roles: [demo]
    roles: [demo]
`

// WritePolicy writes DemoPolicy with sessionTTL to a temp file and returns
// its path.
func WritePolicy(t testing.TB, sessionTTL time.Duration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, DemoPolicy, sessionTTL), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// CopyKeys copies a verifier's key material (NATS keys, fleet CA) from one
// data dir to another: a second instance of the same verifier.
func CopyKeys(t testing.TB, from, to string) {
	t.Helper()
	for _, name := range keys.Shared {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Logger sends a component's logs to t's log, shown on failure or with -v.
// A benchmark's log is always printed, so there it discards them unless
// TPMAUTHN_TEST_LOG is set. Lines written after t's cleanup (by a goroutine
// that outlived Close) are dropped: t.Log would panic.
func Logger(t testing.TB, component string) *slog.Logger {
	if _, bench := t.(*testing.B); bench && os.Getenv("TPMAUTHN_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	w := &logWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("c", component)
}

type logWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (w *logWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
