package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/internal/slowtpm"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// Host is an agent daemon on a swtpm, enrolled with a verifier and serving
// workloads on a Unix socket.
type Host struct {
	Config agent.Config // what Start runs
	Agent  *agent.Agent
	Socket string // Config.Socket, in a directory every user can reach
}

// HostOption changes an agent's configuration before it starts.
type HostOption func(*agent.Config)

// Workloads replaces the default workload, "app": this process's uid.
func Workloads(ws ...agent.Workload) HostOption {
	return func(c *agent.Config) { c.Workloads = ws }
}

// UIDWorkload is a workload matched by its uid.
func UIDWorkload(name string, uid uint32) agent.Workload {
	return agent.Workload{Name: name, Match: agent.Selector{UID: &uid}}
}

// NewHost starts an agent daemon on the fleet's TPM, enrolled with a join
// token for role demo (see DemoPolicy).
func (f *Fleet) NewHost(t testing.TB, opts ...HostOption) *Host {
	t.Helper()
	return NewHost(t, f.TPM, f.URL(), f.Token(t, time.Hour, "demo"), opts...)
}

// NewHost starts an agent daemon on sw that enrolls with token at the
// verifier behind url (a comma-separated list of servers).
func NewHost(t testing.TB, sw *swtpmtest.TPM, url, token string, opts ...HostOption) *Host {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	h := &Host{Socket: filepath.Join(PublicDir(t), "agent.sock")}
	h.Config = agent.Config{TPM: sw.URI(), NATSURL: url, DataDir: filepath.Join(dir, "agent"), Socket: h.Socket,
		TokenFile: filepath.Join(dir, "token"), Hostname: "host-under-test",
		Workloads: []agent.Workload{UIDWorkload("app", uint32(os.Getuid()))}, Logger: Logger(t, "agent")}
	for _, o := range opts {
		o(&h.Config)
	}
	if err := os.WriteFile(h.Config.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	return h
}

// Start starts an agent with h.Config; after h.Agent.Close it is a restart
// on the same data dir and socket.
func (h *Host) Start(t testing.TB) {
	t.Helper()
	ag, err := agent.New(h.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Start(context.Background()); err != nil {
		t.Fatalf("agent start: %v", err)
	}
	h.Agent = ag
	t.Cleanup(func() { _ = ag.Close() })
}

// HostID is the host's ID, from its agent's enrollment.
func (h *Host) HostID(t testing.TB) string {
	t.Helper()
	e, err := h.Agent.Authenticator().Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	return e.HostID
}

// NATSOptions are the nats.go options with which a workload of this
// process's uid connects through the agent (agent/client).
func (h *Host) NATSOptions(t testing.TB) []nats.Option {
	t.Helper()
	opts, err := client.NATSOptions(h.Socket)
	if err != nil {
		t.Fatalf("NATSOptions: %v", err)
	}
	return opts
}

// Connect connects to the verifier's NATS as a workload of this process's
// uid, without reconnecting; extra options go last.
func (h *Host) Connect(t testing.TB, extra ...nats.Option) (*nats.Conn, error) {
	t.Helper()
	return nats.Connect(h.Config.NATSURL, append(append(h.NATSOptions(t), nats.MaxReconnects(0)), extra...)...)
}

// PublicDir is a temp directory every local user can traverse: tests run
// workloads as other users, and they must reach the agent's socket.
func PublicDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "tpmauthn-fleettest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// SlowTPM puts a slow-TPM proxy (internal/slowtpm, a real TPM's latency)
// in front of sw, with draws from seed, and closes it on cleanup; start a
// host on it with TPMAt(p.URI()). It starts fast: enrollment and
// registration run at swtpm's speed, and the caller turns the delay on
// (SetSlow) for what it measures.
func SlowTPM(t testing.TB, sw *swtpmtest.TPM, seed uint64) *slowtpm.Proxy {
	t.Helper()
	p, err := slowtpm.Start("127.0.0.1:"+strconv.Itoa(sw.Port), slowtpm.RealTPM(), seed)
	if err != nil {
		t.Fatal(err)
	}
	p.SetSlow(false)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// TPMAt has the agent open the TPM at uri (a slow-TPM proxy's) instead of
// the fleet's swtpm.
func TPMAt(uri string) HostOption {
	return func(c *agent.Config) { c.TPM = uri }
}
