package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// proc is one process of the campaign: a nats-server or a verifier.
type proc struct {
	name  string
	bin   string
	args  []string
	ready func(*proc) error // nil once the process serves
	cmd   *exec.Cmd
	logs  *syncBuffer
}

// start starts the process and waits until it serves.
func (p *proc) start(t *testing.T) {
	t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.logs = &syncBuffer{}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 90*time.Second, func() error { return p.ready(p) })
}

// stop sends sig and waits for the process to end (SIGKILL: no shutdown,
// no flush; SIGTERM: the process's own orderly shutdown).
func (p *proc) stop(sig syscall.Signal) {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	_ = p.cmd.Wait()
	p.cmd = nil
}

// listening is ready once addr takes TCP connections.
func listening(addr string) func(*proc) error {
	return func(*proc) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// logged is ready once the process has logged line (since this start).
func logged(line string) func(*proc) error {
	return func(p *proc) error {
		if !strings.Contains(p.logs.String(), line) {
			return fmt.Errorf("%s: not %q yet", p.name, line)
		}
		return nil
	}
}

// externalCluster starts three nats-server processes in one JetStream
// cluster, configured with what tpmauthnctl nats-config prints for ks.
func externalCluster(t *testing.T, ks *keys.Set) ([]*proc, string) {
	t.Helper()
	bin := buildBinary(t, "github.com/nats-io/nats-server/v2")
	block := keys.ServerConfig(ks, keys.ServerConfigOptions{})
	routes := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*proc
	var urls []string
	for i := range 3 {
		port := freePort(t)
		var rs []string
		for j, p := range routes {
			if j != i {
				rs = append(rs, fmt.Sprintf("%q", fmt.Sprintf("nats-route://127.0.0.1:%d", p)))
			}
		}
		conf := filepath.Join(t.TempDir(), "nats.conf")
		text := fmt.Sprintf("server_name: n%d\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q }\ncluster { name: c, listen: 127.0.0.1:%d, routes: [%s] }\n%s",
			i, port, filepath.Join(t.TempDir(), "js"), routes[i], strings.Join(rs, ", "), block)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		n := &proc{name: fmt.Sprintf("n%d", i), bin: bin, args: []string{"-c", conf}, ready: listening(addr)}
		n.start(t)
		t.Cleanup(func() { n.stop(syscall.SIGKILL) })
		nodes = append(nodes, n)
		urls = append(urls, "nats://"+addr)
	}
	// An existing cluster, formed before the verifiers start: all three
	// servers in the JetStream meta group (a verifier reads the size).
	eventually.Until(t, 30*time.Second, func() error {
		for _, n := range nodes {
			if l := n.logs.String(); !strings.Contains(l, "JetStream cluster new metadata leader") && !strings.Contains(l, "Self is new JetStream cluster metadata leader") {
				return fmt.Errorf("%s: no meta leader yet", n.name)
			}
		}
		return nil
	})
	return nodes, strings.Join(urls, ",")
}

// TestChaosExternalCluster is the campaign on real processes: three
// nats-server processes (the binary built from the pinned module) in one
// JetStream cluster, configured with what tpmauthnctl nats-config prints,
// two tpmauthn-verifier processes on it, an agent on swtpm and workloads
// connecting through it the whole time. Faults: each server killed with
// SIGKILL in turn (so every stream's leader is hit) and started again, a
// rolling restart of the three, and one verifier of two killed with
// SIGKILL and started again. Each prints a row; then no fleet record may be
// lost and every granted connect must have its allow event.
func TestChaosExternalCluster(t *testing.T) {
	// Parallel: it waits on cluster and store timeouts far more than it
	// computes (the suite's time budget, 12 minutes a package).
	t.Parallel()
	if testing.Short() {
		t.Skip("real processes and swtpm")
	}
	// make test runs the small form: the server leading the credentials
	// bucket (every grant writes there) and one verifier. make chaos runs
	// every server in turn and a rolling restart.
	full := os.Getenv("TPMAUTHN_CHAOS") != ""
	sw := swtpmtest.New(t)
	vdir, ks := externalFleet(t)
	nodes, url := externalCluster(t, ks)
	ek, policy := fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute)
	dir2 := t.TempDir()
	fleettest.CopyKeys(t, vdir, dir2)
	vbin := buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthn-verifier")
	var vs []*proc
	for i, d := range []string{vdir, dir2} {
		v := &proc{name: fmt.Sprintf("verifier%d", i), bin: vbin, ready: logged("verifier serving"),
			args: []string{"--data-dir", d, "--nats-url", url, "--ek-ca-dir", ek, "--policy", policy, "--rp-id", fleettest.RPID}}
		v.start(t)
		t.Cleanup(func() { v.stop(syscall.SIGKILL) })
		vs = append(vs, v)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append(vs, nodes...) {
				t.Logf("--- %s log:\n%s", p.name, tail(p.logs.String(), 40))
			}
		}
	})
	op := fleettest.OperatorConn(t, vdir, url)
	eventually.Until(t, 60*time.Second, func() error { return allCurrentNow(op) })
	var tok api.TokenCreateResponse
	if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
		t.Fatal(code)
	}
	h := fleettest.NewHost(t, sw, url, tok.Token)
	before := fleetCounts(t, op)

	l := &load{}
	stop := make(chan struct{})
	lw := l.run(t, h, 4, 80*time.Millisecond, stop)
	time.Sleep(2 * time.Second)
	current := func(t *testing.T) {
		eventually.Until(t, 90*time.Second, func() error { return allCurrentNow(op) })
	}
	var faults []fault
	killed := nodes
	if !full {
		killed = []*proc{leaderOf(t, op, nodes, "KV_tpmauthn_credentials")}
	}
	for _, n := range killed {
		faults = append(faults,
			fault{n.name + " killed (SIGKILL)", func(*testing.T) { n.stop(syscall.SIGKILL) }},
			fault{n.name + " started again", func(t *testing.T) { n.start(t); current(t) }})
	}
	if full {
		faults = append(faults, fault{"rolling restart of n0, n1, n2 (SIGTERM)", func(t *testing.T) {
			for _, n := range nodes {
				n.stop(syscall.SIGTERM)
				n.start(t)
				current(t)
			}
		}})
	}
	faults = append(faults,
		fault{"verifier1 of 2 killed (SIGKILL)", func(*testing.T) { vs[1].stop(syscall.SIGKILL) }},
		fault{"verifier1 started again", func(t *testing.T) { vs[1].start(t) }},
	)
	rows := runFaults(t, l, faults)
	close(stop)
	lw.Wait()
	checkCampaign(t, op, l, before, rows)
}

// allCurrentNow is allCurrent for a cluster whose servers come and go: a
// request that times out is one more reason to wait, not a failure.
func allCurrentNow(op *nats.Conn) error {
	m, err := op.Request(api.SubjectAdminPrefix+"status", []byte("null"), 5*time.Second)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return errors.New(code)
	}
	var st api.Status
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return err
	}
	return streamsCurrent(st)
}

// leaderOf is the node leading stream.
func leaderOf(t *testing.T, op *nats.Conn, nodes []*proc, stream string) *proc {
	t.Helper()
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		t.Fatal(code)
	}
	for _, s := range st.Streams {
		for _, n := range nodes {
			if s.Stream == stream && s.Leader == n.name {
				return n
			}
		}
	}
	t.Fatalf("no node leads %s: %+v", stream, st.Streams)
	return nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
