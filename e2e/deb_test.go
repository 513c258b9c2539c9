package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// The test of issue 17 part 1: the Debian packages, installed with dpkg on
// this machine, run against swtpm, upgraded with a changed conffile kept,
// removed (state kept) and purged (nothing left). It changes the system, so
// it runs only in CI (a fresh machine) or with TPMAUTHN_DEB_TEST=1.

var debPackages = []string{"tpmauthn-agent", "tpmauthn-verifier", "tpmauthnctl"}

func requireDebTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and installs Debian packages (skipped under -short)")
	}
	if os.Getenv("CI") != "true" && os.Getenv("TPMAUTHN_DEB_TEST") != "1" {
		t.Skip("installs packages on this machine: runs in CI, or with TPMAUTHN_DEB_TEST=1")
	}
	if os.Geteuid() != 0 {
		t.Fatal("dpkg -i needs root")
	}
	for _, b := range []string{"dpkg", "dpkg-deb", "lintian"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is needed: apt-get install -y dpkg-dev lintian", b)
		}
	}
	fleettest.Require(t)
}

// buildDebs runs make deb's builder once for every version (the same build
// packaged under each) into a temp dir: debs[version][package] is the file.
func buildDebs(t *testing.T, versions ...string) map[string]map[string]string {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command("go", "run", "./packaging/mkdeb", "-version", strings.Join(versions, ","), "-out", out)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkdeb: %v\n%s", err, b)
	}
	debs := map[string]map[string]string{}
	for _, v := range versions {
		debs[v] = map[string]string{}
		for _, p := range debPackages {
			m, _ := filepath.Glob(filepath.Join(out, p+"_"+v+"_*.deb"))
			if len(m) != 1 {
				t.Fatalf("no %s %s package in %s", p, v, out)
			}
			debs[v][p] = m[0]
		}
	}
	return debs
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func TestDebianPackages(t *testing.T) {
	requireDebTest(t)
	v1, v2 := "0.1.0~test1", "0.1.0~test2"
	all := buildDebs(t, v1, v2)
	debs1, debs2 := all[v1], all[v2]
	t.Cleanup(func() { _ = exec.Command("dpkg", append([]string{"--purge"}, debPackages...)...).Run() })

	// lintian: no errors (it refuses to run as root without complaint, so
	// it runs as nobody on a copy nobody can read).
	lint := fleettest.PublicDir(t)
	var files []string
	for _, p := range debPackages {
		dst := filepath.Join(lint, filepath.Base(debs1[p]))
		b, err := os.ReadFile(debs1[p])
		if err != nil || os.WriteFile(dst, b, 0o644) != nil {
			t.Fatal(err)
		}
		files = append(files, dst)
	}
	lcmd := exec.Command("lintian", files...)
	lcmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	lout, lerr := lcmd.CombinedOutput()
	if lerr != nil && !bytes.Contains(lout, []byte("E: ")) {
		t.Fatalf("lintian: %v\n%s", lerr, lout)
	}
	sc := bufio.NewScanner(bytes.NewReader(lout))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "E: ") {
			t.Errorf("lintian: %s", sc.Text())
		}
	}
	t.Logf("lintian:\n%s", lout)

	run(t, "dpkg", "-i", debs1["tpmauthnctl"], debs1["tpmauthn-verifier"], debs1["tpmauthn-agent"])
	for _, f := range []string{"/usr/bin/tpmauthn-agent", "/usr/bin/tpmauthn-verifier", "/usr/bin/tpmauthnctl",
		"/lib/systemd/system/tpmauthn-agent.service", "/lib/systemd/system/tpmauthn-agent.socket", "/lib/systemd/system/tpmauthn-verifier.service",
		"/etc/tpmauthn/agent.yaml", "/etc/tpmauthn/verifier.yaml", "/usr/share/man/man1/tpmauthnctl.1.gz",
		"/usr/share/bash-completion/completions/tpmauthnctl"} {
		if !exists(f) {
			t.Errorf("%s not installed", f)
		}
	}
	u, err := user.Lookup("tpmauthn")
	if err != nil {
		t.Fatalf("no tpmauthn system user: %v", err)
	}
	if gids, _ := u.GroupIds(); !strings.Contains(run(t, "id", "-nG", "tpmauthn"), "tss") {
		t.Errorf("tpmauthn is not in group tss (groups %v)", gids)
	}
	if fi, err := os.Stat("/var/lib/tpmauthn"); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("/var/lib/tpmauthn: %v %v, want 0700", fi, err)
	}
	if out := run(t, "/usr/bin/tpmauthnctl", "--version"); !strings.Contains(out, "tpmauthnctl version") {
		t.Errorf("--version: %q", out)
	}

	// The installed binaries, against swtpm: a verifier, a token, an agent
	// that enrolls, and doctor on both sides.
	runInstalled(t)

	// Upgrade with a changed conffile: it is kept, and so is the state.
	const mark = "# changed by the operator\n"
	f, err := os.OpenFile("/etc/tpmauthn/agent.yaml", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(mark)
	f.Close()
	if err := os.WriteFile("/var/lib/tpmauthn/kept", []byte("state"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "dpkg", "--force-confold", "-i", debs2["tpmauthnctl"], debs2["tpmauthn-verifier"], debs2["tpmauthn-agent"])
	if out := run(t, "dpkg-query", "-W", "-f=${Version}", "tpmauthn-agent"); out != v2 {
		t.Errorf("after the upgrade: version %q, want %s", out, v2)
	}
	if b, _ := os.ReadFile("/etc/tpmauthn/agent.yaml"); !strings.HasSuffix(string(b), mark) {
		t.Errorf("the upgrade replaced the operator's agent.yaml:\n%s", b)
	}
	if !exists("/var/lib/tpmauthn/kept") {
		t.Error("the upgrade lost the agent's state")
	}

	// Remove keeps state and configuration; purge leaves nothing.
	run(t, "dpkg", "-r", "tpmauthn-agent")
	if exists("/usr/bin/tpmauthn-agent") || !exists("/var/lib/tpmauthn/kept") || !exists("/etc/tpmauthn/agent.yaml") {
		t.Errorf("after remove: binary %v, state %v, config %v (want gone, kept, kept)",
			exists("/usr/bin/tpmauthn-agent"), exists("/var/lib/tpmauthn/kept"), exists("/etc/tpmauthn/agent.yaml"))
	}
	run(t, "dpkg", "--purge", "tpmauthn-agent", "tpmauthn-verifier", "tpmauthnctl")
	for _, f := range []string{"/var/lib/tpmauthn", "/var/lib/tpmauthn-verifier", "/etc/tpmauthn", "/usr/bin/tpmauthnctl",
		"/lib/systemd/system/tpmauthn-agent.service", "/usr/share/doc/tpmauthn-agent"} {
		if exists(f) {
			t.Errorf("after purge %s is left", f)
		}
	}
	if _, err := user.Lookup("tpmauthn"); err == nil {
		t.Error("after purge the tpmauthn user is left")
	}
}

// runInstalled runs /usr/bin's verifier and agent against swtpm.
func runInstalled(t *testing.T) {
	t.Helper()
	sw := swtpmtest.New(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "verifier")
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	v := &proc{name: "installed verifier", bin: "/usr/bin/tpmauthn-verifier", ready: logged("verifier serving"),
		args: []string{"--data-dir", data, "--nats-listen", natsAddr, "--ek-ca-dir", fleettest.EKCADir(t, sw),
			"--policy", fleettest.WritePolicy(t, time.Minute), "--rp-id", fleettest.RPID}}
	v.start(t)
	t.Cleanup(func() { v.stop(syscall.SIGTERM) })
	token, err := exec.Command("/usr/bin/tpmauthnctl", "--data-dir", data, "token", "create", "--roles", "demo", "--ttl", "10m").Output()
	if err != nil {
		t.Fatalf("token create: %v", err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(strings.TrimSpace(string(token))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "agent.sock")
	agentArgs := []string{"--tpm", sw.URI(), "--data-dir", filepath.Join(dir, "agent"), "--nats-url", "nats://" + natsAddr, "--socket", socket}
	a := &proc{name: "installed agent", bin: "/usr/bin/tpmauthn-agent", args: append([]string{"run", "--token-file", tokFile}, agentArgs...),
		ready: func(*proc) error {
			c, err := net.Dial("unix", socket)
			if err == nil {
				c.Close()
			}
			return err
		}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- installed agent's log:\n%s\n--- installed verifier's log:\n%s", tail(a.logs.String(), 30), tail(v.logs.String(), 30))
		}
	})
	a.start(t)
	t.Cleanup(func() { a.stop(syscall.SIGTERM) })
	eventually.Until(t, 30*time.Second, func() error {
		if out, _ := exec.Command("/usr/bin/tpmauthnctl", "--data-dir", data, "host", "list").CombinedOutput(); !strings.Contains(string(out), "active") {
			return fmt.Errorf("host list: %s", out)
		}
		return nil
	})
	if out, err := exec.Command("/usr/bin/tpmauthnctl", "--data-dir", data, "doctor").CombinedOutput(); !strings.Contains(string(out), "✓ verifier") {
		t.Errorf("installed tpmauthnctl doctor: %v\n%s", err, out)
	}
	if out, err := exec.Command("/usr/bin/tpmauthn-agent", append([]string{"doctor"}, agentArgs...)...).CombinedOutput(); !strings.Contains(string(out), "✓ agent: running") {
		t.Errorf("installed tpmauthn-agent doctor: %v\n%s", err, out)
	}
}
