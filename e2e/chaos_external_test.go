package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// natsNode is one nats-server process of an existing cluster.
type natsNode struct {
	bin, conf string
	port      int
	cmd       *exec.Cmd
	logs      *syncBuffer
}

func (n *natsNode) start(t *testing.T) {
	t.Helper()
	n.cmd = exec.Command(n.bin, "-c", n.conf)
	n.logs = &syncBuffer{}
	n.cmd.Stderr = n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.port))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// kill is kill -9: no shutdown, no flush.
func (n *natsNode) kill() {
	_ = n.cmd.Process.Kill()
	_ = n.cmd.Wait()
}

// TestChaosExternalCluster is the campaign on real processes: three
// nats-server processes (the binary built from the pinned module) in one
// JetStream cluster, configured with what tpmauthnctl nats-config prints,
// two verifiers on it, an agent on swtpm and workloads connecting through
// it the whole time; each server is killed with SIGKILL in turn (so every
// stream's leader is hit) and started again.
func TestChaosExternalCluster(t *testing.T) {
	if os.Getenv("TPMAUTHN_CHAOS") == "" {
		t.Skip("the fault campaign runs with make chaos (TPMAUTHN_CHAOS=1)")
	}
	sw := swtpmtest.New(t)
	vdir, ks := externalFleet(t)
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("build nats-server: %v\n%s", err, out)
	}
	block := keys.ServerConfig(ks, keys.ServerConfigOptions{})
	routes := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*natsNode
	var urls []string
	for i := range 3 {
		n := &natsNode{bin: bin, port: freePort(t), conf: filepath.Join(t.TempDir(), "nats.conf")}
		var rs []string
		for j, p := range routes {
			if j != i {
				rs = append(rs, fmt.Sprintf("%q", fmt.Sprintf("nats-route://127.0.0.1:%d", p)))
			}
		}
		conf := fmt.Sprintf("server_name: n%d\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q }\ncluster { name: c, listen: 127.0.0.1:%d, routes: [%s] }\n%s",
			i, n.port, filepath.Join(t.TempDir(), "js"), routes[i], strings.Join(rs, ", "), block)
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		n.start(t)
		t.Cleanup(n.kill)
		nodes = append(nodes, n)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	url := strings.Join(urls, ",")
	// An existing cluster, formed before the verifiers start: all three
	// servers in the JetStream meta group (a verifier reads the size).
	eventually.Until(t, 30*time.Second, func() error {
		for _, n := range nodes {
			if !strings.Contains(n.logs.String(), "JetStream cluster new metadata leader") && !strings.Contains(n.logs.String(), "Self is new JetStream cluster metadata leader") {
				return fmt.Errorf("%s: no meta leader yet", n.conf)
			}
		}
		return nil
	})
	ek, policy := fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute)
	dir2 := t.TempDir()
	fleettest.CopyKeys(t, vdir, dir2)
	var vs []*verifier.Verifier
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, d := range []string{vdir, dir2} {
		v, err := verifier.New(verifier.Config{DataDir: d, NATSURL: url, EKCADir: ek, PolicyFile: policy, RPID: fleettest.RPID,
			Logger: fleettest.Logger(t, fmt.Sprintf("verifier%d", i))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(v.Close)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := v.Start(ctx); err != nil {
				t.Errorf("verifier %d: %v", i, err)
			}
			mu.Lock()
			vs = append(vs, v)
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	op := fleettest.OperatorConn(t, vdir, url)
	eventually.Until(t, 60*time.Second, func() error { return allCurrent(t, op) })
	var tok api.TokenCreateResponse
	if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
		t.Fatal(code)
	}
	h := fleettest.NewHost(t, sw, url, tok.Token)
	before := fleetCounts(t, op)
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		t.Fatal(code)
	}
	for _, s := range st.Streams {
		t.Logf("DIAG stream %s R%d leader %s peers %+v", s.Stream, s.Replicas, s.Leader, s.Peers)
	}

	l := &load{}
	stop := make(chan struct{})
	lw := l.run(t, h, 4, 80*time.Millisecond, stop)
	time.Sleep(2 * time.Second)
	t.Cleanup(func() {
		for _, n := range nodes[1:] {
			for _, line := range strings.Split(n.logs.String(), "\n") {
				if strings.Contains(line, "AUDIT") || strings.Contains(line, "RAFT") || strings.Contains(line, "Raft") || strings.Contains(line, "leader") {
					t.Logf("DIAG %s: %s", n.conf, line)
				}
			}
		}
	})
	var rows []string
	for i, n := range nodes {
		for _, f := range []struct {
			name string
			do   func()
		}{
			{fmt.Sprintf("nats-server n%d killed (SIGKILL)", i), n.kill},
			{fmt.Sprintf("nats-server n%d started again", i), func() {
				n.start(t)
				eventually.Until(t, 90*time.Second, func() error { return allCurrent(t, op) })
			}},
		} {
			s0 := l.snapshot()
			f.do()
			rec := l.recovered(t, time.Now(), 60*time.Second)
			time.Sleep(time.Second)
			s1 := l.snapshot()
			rows = append(rows, fmt.Sprintf("| %s | %d | %d | %d | %d | %.1f |", f.name, s1[0]-s0[0], s1[1]-s0[1], s1[2]-s0[2], s1[3]-s0[3], rec.Seconds()))
		}
	}
	close(stop)
	lw.Wait()
	after := fleetCounts(t, op)
	lost := 0
	for k, n := range before {
		if after[k] < n {
			lost += n - after[k]
		}
	}
	missing := grantsWithoutEvent(t, op, l.grants)
	t.Logf("\n| fault | connects attempted | granted | denied | errored | s to recovery |\n|---|---|---|---|---|---|\n%s\n\nfleet records lost: %d; granted connects without an audit event: %d of %d",
		strings.Join(rows, "\n"), lost, len(missing), len(l.grants))
	if lost != 0 || len(missing) != 0 {
		t.Errorf("records lost %d, grants without an event %d", lost, len(missing))
	}
}
