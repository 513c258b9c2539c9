package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// TestCExample: examples/c/workload.c, built with libnats (Debian
// libnats-dev), connects through the agent with a TPM-signed nonce,
// publishes under its role and receives its message.
func TestCExample(t *testing.T) {
	fleettest.Require(t)
	cc, err := exec.LookPath("cc")
	if err == nil {
		_, err = os.Stat("/usr/include/nats/nats.h")
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatal("the C example needs a C compiler and libnats: apt-get install -y gcc libnats-dev")
	case err != nil:
		t.Skip("no C compiler or libnats (apt-get install -y gcc libnats-dev)")
	}
	bin := filepath.Join(t.TempDir(), "workload")
	if out, err := exec.Command(cc, "-Wall", "-Werror", "-o", bin, "../examples/c/workload.c", "-lnats").CombinedOutput(); err != nil {
		t.Fatalf("build the C example: %v\n%s", err, out)
	}
	f := fleettest.New(t)
	h := f.NewHost(t)
	out, err := exec.Command(bin, h.Socket, f.URL(), "demo.c-example").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `published and received on demo.c-example: "hello from C"`) {
		t.Fatalf("the C example: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// Outside its role the server refuses the subscription, and the
	// program says so.
	if out, err := exec.Command(bin, h.Socket, f.URL(), "billing.invoices").CombinedOutput(); err == nil {
		t.Fatalf("the C example published outside its role:\n%s", out)
	}
}

// TestNodeExample: examples/node, on nats.js, connects through the agent
// with a TPM-signed nonce as workload node-app (its uid and the node
// executable), publishes under its role and receives its message; the
// verifier's audit trail names the same workload and credential. Outside
// its role the server refuses it, and a process no selector names (another
// uid) is refused by the agent.
func TestNodeExample(t *testing.T) {
	fleettest.Require(t)
	node := nodeExample(t)
	f := fleettest.New(t)
	uid := uint32(os.Getuid())
	h := f.NewHost(t, fleettest.Workloads(agent.Workload{Name: "node-app", Match: agent.Selector{UID: &uid, Exe: node.exe}}))
	out, err := node.run(h.Socket, f.URL(), "demo.node-example").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `published and received on demo.node-example: "hello from Node"`) {
		t.Fatalf("the Node example: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	m := regexp.MustCompile(`workload node-app on host (\S+), credential (\S+),`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("the Node example did not say it is workload node-app:\n%s", out)
	}
	granted := false
	for _, e := range f.AuditEvents(t) {
		granted = granted || (e.Kind == "connect" && e.Result == audit.Allow && e.Workload == "node-app" &&
			e.Host == string(m[1]) && e.Credential == string(m[2]))
	}
	if !granted {
		t.Fatalf("no connect of workload node-app with credential %s granted in the audit trail", m[2])
	}
	// Outside its role the server refuses the subscription, and the
	// program says so.
	out, err = node.run(h.Socket, f.URL(), "billing.invoices").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permissions Violation") {
		t.Fatalf("the Node example outside its role: %v\n%s", err, out)
	}
	t.Logf("outside its role: %s", out)
	t.Run("unknown-caller", func(t *testing.T) {
		requireRoot(t)
		cmd := node.run(h.Socket, f.URL(), "demo.node-example")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "does not know this program") || !strings.Contains(string(out), "uid=65534") {
			t.Fatalf("the Node example as uid 65534, which no selector names: %v\n%s", err, out)
		}
		t.Logf("as uid 65534: %s", out)
	})
}

// nodeProgram is examples/node, copied where every user can read it, and
// the node executable that runs it.
type nodeProgram struct{ exe, dir string }

func (n nodeProgram) run(args ...string) *exec.Cmd {
	return exec.Command(n.exe, append([]string{filepath.Join(n.dir, "workload.mjs")}, args...)...)
}

// nodeExample finds node and examples/node's dependencies (.ci/run installs
// both; under CI=true their absence fails the test).
func nodeExample(t *testing.T) nodeProgram {
	t.Helper()
	exe, err := exec.LookPath("node")
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe) // the agent sees the real executable
	}
	if err == nil {
		_, err = os.Stat("../examples/node/node_modules/@nats-io/transport-node")
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatalf("the Node example needs node and its packages: apt-get install -y nodejs npm; (cd examples/node && npm ci): %v", err)
	case err != nil:
		t.Skipf("no node or no packages for examples/node (apt-get install -y nodejs npm; cd examples/node && npm ci): %v", err)
	}
	dir := filepath.Join(fleettest.PublicDir(t), "node")
	if out, err := exec.Command("cp", "-R", "../examples/node", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy examples/node: %v\n%s", err, out)
	}
	return nodeProgram{exe: exe, dir: dir}
}
