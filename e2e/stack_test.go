package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// stack is the whole chain on one machine.
type stack struct {
	sw      *swtpmtest.TPM
	v       *verifier.Verifier
	vcfg    verifier.Config
	op      *nats.Conn
	ag      *agent.Agent
	acfg    agent.Config
	socket  string
	ekCADir string
}

type stackOpt func(*stack)

// withWorkloads replaces the default workload (this process's uid).
func withWorkloads(ws ...agent.Workload) stackOpt {
	return func(s *stack) { s.acfg.Workloads = ws }
}

func withSessionTTL(d time.Duration) stackOpt {
	return func(s *stack) { s.vcfg.PolicyFile = writePolicy(s.vcfg.DataDir+"-policy.yaml", d) }
}

func uidWorkload(name string, uid uint32) agent.Workload {
	return agent.Workload{Name: name, Match: agent.Selector{UID: &uid}}
}

const policyTemplate = `session_ttl: %s
roles:
  demo:
    publish: {allow: ["demo.>", "demo.{{workload}}.>"], deny: ["demo.secret"]}
    subscribe: {allow: ["demo.>"]}
bindings:
  - host_roles: [demo]
    roles: [demo]
`

func writePolicy(path string, ttl time.Duration) string {
	if err := os.WriteFile(path, fmt.Appendf(nil, policyTemplate, ttl), 0o600); err != nil {
		panic(err)
	}
	return path
}

func newStack(t testing.TB, opts ...stackOpt) *stack {
	t.Helper()
	dir := t.TempDir()
	s := &stack{sw: swtpmtest.New(t), socket: filepath.Join(publicDir(t), "agent.sock")}
	s.ekCADir = ekCADirFor(t, s.sw)
	s.vcfg = verifier.Config{DataDir: filepath.Join(dir, "verifier"), NATSListen: "127.0.0.1:-1", EKCADir: s.ekCADir,
		RPID: "fleet.example.com", Logger: testLogger(t, "verifier")}
	s.vcfg.PolicyFile = writePolicy(filepath.Join(dir, "policy.yaml"), time.Minute)
	s.acfg = agent.Config{TPM: s.sw.URI(), DataDir: filepath.Join(dir, "agent"), Socket: s.socket,
		TokenFile: filepath.Join(dir, "token"), Hostname: "e2e-host",
		Workloads: []agent.Workload{uidWorkload("app", uint32(os.Getuid()))}, Logger: testLogger(t, "agent")}
	for _, o := range opts {
		o(s)
	}
	s.startVerifier(t)
	var tok api.TokenCreateResponse
	s.admin(t, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok)
	if err := os.WriteFile(s.acfg.TokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.acfg.NATSURL = s.v.ClientURL()
	s.startAgent(t)
	return s
}

// ekCADirFor writes the swtpm's manufacturer root and intermediate into a
// directory, as an operator fills --ek-ca-dir.
func ekCADirFor(t testing.TB, sw *swtpmtest.TPM) string {
	t.Helper()
	dir := t.TempDir()
	for name, c := range map[string][]byte{"root.pem": sw.RootCert(t).Raw, "inter.pem": sw.IntermediateCert(t).Raw} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// publicDir is a directory every local user can traverse: tests run
// workloads as other users, and they must reach the agent's socket.
func publicDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "tpmauthn-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func (s *stack) startVerifier(t testing.TB) {
	t.Helper()
	v, err := verifier.New(s.vcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	s.v = v
	seed, _ := keys.OperatorFiles(s.vcfg.DataDir)
	kp, err := keys.LoadNKey(seed)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := kp.PublicKey()
	if s.op, err = nats.Connect(v.ClientURL(), nats.Nkey(pk, kp.Sign)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.op.Close)
}

func (s *stack) startAgent(t testing.TB) {
	t.Helper()
	ag, err := agent.New(s.acfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Start(context.Background()); err != nil {
		t.Fatalf("agent start: %v", err)
	}
	s.ag = ag
	t.Cleanup(func() { _ = ag.Close() })
}

func (s *stack) admin(t testing.TB, op string, req, resp any) {
	t.Helper()
	b, _ := json.Marshal(req)
	m, err := s.op.Request(api.SubjectAdminPrefix+op, b, 5*time.Second)
	if err != nil {
		t.Fatalf("admin %s: %v", op, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("admin %s: %s", op, code)
	}
	if resp != nil {
		if err := json.Unmarshal(m.Data, resp); err != nil {
			t.Fatal(err)
		}
	}
}

// connect connects to NATS as this process's workload.
func (s *stack) connect(t testing.TB, extra ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	opts, err := client.NATSOptions(s.socket)
	if err != nil {
		t.Fatalf("NATSOptions: %v", err)
	}
	return nats.Connect(s.v.ClientURL(), append(append(opts, nats.MaxReconnects(0)), extra...)...)
}

func testLogger(t testing.TB, component string) *slog.Logger {
	if os.Getenv("E2E_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(logWriter{t}, nil)).With("c", component)
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
