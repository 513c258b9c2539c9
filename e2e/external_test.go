package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/freeport"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

func freePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// externalFleet prepares a verifier data dir and its keys, as an operator
// does before adding `tpmauthnctl nats-config` to a cluster.
func externalFleet(t testing.TB) (dir string, k *keys.Set) {
	t.Helper()
	dir = t.TempDir()
	k, _, err := keys.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, k
}

// runAgentAndWorkload enrolls an agent on sw with the verifier behind url
// (a comma-separated list) and connects a workload through each server.
func runAgentAndWorkload(t *testing.T, sw *swtpmtest.TPM, url string, op *nats.Conn) {
	t.Helper()
	var tok api.TokenCreateResponse
	if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
		t.Fatalf("token.create: %s", code)
	}
	h := fleettest.NewHost(t, sw, url, tok.Token)
	for _, u := range strings.Split(url, ",") {
		nc, err := nats.Connect(u, append(h.NATSOptions(t), nats.MaxReconnects(0))...)
		if err != nil {
			t.Fatalf("workload connect through %s: %v", u, err)
		}
		sub, _ := nc.SubscribeSync("demo.x")
		_ = nc.Publish("demo.x", []byte("ok"))
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("through %s: %v", u, err)
		}
		nc.Close()
	}
}

// startVerifierOn starts a verifier on the nats-server at url.
func startVerifierOn(t *testing.T, dir, url, ekCADir, policy string) *verifier.Verifier {
	t.Helper()
	return fleettest.StartVerifier(t, verifier.Config{DataDir: dir, NATSURL: url, EKCADir: ekCADir, PolicyFile: policy,
		RPID: fleettest.RPID, Logger: fleettest.Logger(t, "verifier")})
}

// TestExternalNATSServerBinary: the nats-server binary built from the pinned
// module, configured with what tpmauthnctl nats-config prints.
func TestExternalNATSServerBinary(t *testing.T) {
	sw := swtpmtest.New(t)
	vdir, ks := externalFleet(t)
	bin := buildBinary(t, "github.com/nats-io/nats-server/v2")
	port := freePort(t)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	block := keys.ServerConfig(ks, keys.ServerConfigOptions{})
	full := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q }\n%s", port, filepath.Join(t.TempDir(), "js"), block)
	if err := os.WriteFile(conf, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("nats-server -t rejects the config: %v\n%s", err, out)
	}
	srv := exec.Command(bin, "-c", conf)
	var logs syncBuffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	eventually.Until(t, 5*time.Second, func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return fmt.Errorf("nats-server does not listen: %w\n%s", err, logs.String())
		}
		return c.Close()
	})
	out, _ := exec.Command(bin, "--version").Output()
	t.Logf("%s", strings.TrimSpace(string(out)))
	startVerifierOn(t, vdir, url, fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute))
	runAgentAndWorkload(t, sw, url, fleettest.OperatorConn(t, vdir, url))
}

// TestClusterTwoVerifiers: two nats-servers in a cluster, a verifier on
// each, one queue group; workloads connect through both servers.
func TestClusterTwoVerifiers(t *testing.T) {
	sw := swtpmtest.New(t)
	vdir, ks := externalFleet(t)
	// Both servers start at once, each routing to the other: a clustered
	// JetStream is ready only once its peers meet.
	ports := []int{freePort(t), freePort(t)}
	routes := fmt.Sprintf("routes: [\"nats-route://127.0.0.1:%d\", \"nats-route://127.0.0.1:%d\"]", ports[0], ports[1])
	var srvs []*server.Server
	for i, name := range []string{"a", "b"} {
		extra := fmt.Sprintf("server_name: %s\ncluster { name: tpmauthn, listen: \"127.0.0.1:%d\", %s }", name, ports[i], routes)
		conf := keys.ServerConfig(ks, keys.ServerConfigOptions{Listen: "127.0.0.1:-1", StoreDir: filepath.Join(t.TempDir(), "js"), Extra: extra})
		srvs = append(srvs, startConfigured(t, filepath.Join(t.TempDir(), "nats.conf"), conf))
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("cluster server not ready")
		}
	}
	a, b := srvs[0], srvs[1]
	ek := fleettest.EKCADir(t, sw)
	policy := fleettest.WritePolicy(t, time.Minute)
	dir2 := t.TempDir()
	fleettest.CopyKeys(t, vdir, dir2)
	v1 := startVerifierOn(t, vdir, a.ClientURL(), ek, policy)
	v2 := startVerifierOn(t, dir2, b.ClientURL(), ek, policy)
	runAgentAndWorkload(t, sw, a.ClientURL()+","+b.ClientURL(), fleettest.OperatorConn(t, vdir, a.ClientURL()))
	if v1.Served() == 0 || v2.Served() == 0 {
		t.Fatalf("requests served: %d and %d, want both", v1.Served(), v2.Served())
	}
	t.Logf("served: %d via server a, %d via server b", v1.Served(), v2.Served())
}

// startConfigured writes conf to path and starts an in-process nats-server
// from that file, as nats-server -c path would; cleanup shuts it down.
func startConfigured(t *testing.T, path, conf string) *server.Server {
	t.Helper()
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the configuration: %v\n%s", err, conf)
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

// buildBinary builds pkg's command into a temporary directory (the real
// binaries of the fault tests and the process tests).
func buildBinary(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(strings.TrimSuffix(pkg, "/v2")))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// TestExternalMergedConfig: an existing nats-server configuration with an
// account of its own, merged with tpmauthnctl nats-config --merge, serves
// that account's users as before and tpmauthn's workloads through the
// callout, which refuses anyone else.
func TestExternalMergedConfig(t *testing.T) {
	sw := swtpmtest.New(t)
	vdir, ks := externalFleet(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "nats-server.conf")
	existing := fmt.Sprintf(`listen: 127.0.0.1:-1
jetstream { store_dir: %q }
accounts {
  LEGACY {
    jetstream: enabled
    users: [ {user: alice, password: s3cret}, {user: carol, password: c4rol} ]
  }
}
`, filepath.Join(dir, "js"))
	if err := os.WriteFile(path, []byte(existing), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := keys.MergeServerConfig(ks, path, keys.Websocket{})
	if err != nil {
		t.Fatal(err)
	}
	s := startConfigured(t, path, m.Config)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("the merged server is not ready")
	}
	url := s.ClientURL()
	startVerifierOn(t, vdir, url, fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute))
	runAgentAndWorkload(t, sw, url, fleettest.OperatorConn(t, vdir, url))

	// The account's users still log in, by password, into their account.
	alice, err := nats.Connect(url, nats.UserInfo("alice", "s3cret"), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("user alice of the existing account: %v", err)
	}
	defer alice.Close()
	carol, err := nats.Connect(url, nats.UserInfo("carol", "c4rol"), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("user carol of the existing account: %v", err)
	}
	defer carol.Close()
	sub, _ := carol.SubscribeSync("ledger.>")
	_ = carol.Flush()
	_ = alice.Publish("ledger.1", []byte("entry"))
	if msg, err := sub.NextMsg(5 * time.Second); err != nil || string(msg.Data) != "entry" {
		t.Fatalf("alice to carol in their account: %v", err)
	}
	// Everyone else goes through the callout, which refuses them.
	for name, o := range map[string]nats.Option{"anonymous": nats.Name("anonymous"), "wrong-password": nats.UserInfo("alice", "guess")} {
		if nc, err := nats.Connect(url, o, nats.MaxReconnects(0)); err == nil || !strings.Contains(err.Error(), "Authorization Violation") {
			if nc != nil {
				nc.Close()
			}
			t.Errorf("%s client: %v, want an authorization violation", name, err)
		}
	}
}
