package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestAgentKilledDuringRegistration: the agent binary is killed (SIGKILL)
// while it registers its workloads' credentials, three times, at different
// points; started again it comes up whole: every workload has one active
// credential, a workload connects, and no tamper signal was raised by the
// agent's own crashes.
func TestAgentKilledDuringRegistration(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	if err := h.Agent.Close(); err != nil { // the binary takes over its TPM and data
		t.Fatal(err)
	}
	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "tpmauthn-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/tpmauthn/tpmauthn/cmd/tpmauthn-agent").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	conf := fmt.Sprintf("workloads:\n  - name: app\n    match: {uid: %d}\n", os.Getuid())
	for i := range 6 {
		conf += fmt.Sprintf("  - name: w%d\n    match: {uid: %d}\n", i, 60001+i)
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(fleettest.PublicDir(t), "killed.sock")
	start := func() (*exec.Cmd, *syncBuffer) {
		cmd := exec.Command(bin, "run", "--config", cfg, "--tpm", f.TPM.URI(), "--data-dir", h.Config.DataDir,
			"--nats-url", f.URL(), "--socket", sock, "--hostname", "host-under-test")
		logs := &syncBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, logs
	}
	// A registration takes about 10 ms: each run is killed as soon as it
	// has logged its first one, inside the next (key created, certified,
	// begin or finish sent, files written: wherever it lands).
	killed := 0
	for range 3 {
		cmd, logs := start()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(logs.String(), "credential registered") && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if strings.Contains(logs.String(), "credential registered") && !strings.Contains(logs.String(), "serving workloads") {
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("no run was killed while registering: the test proves nothing")
	}
	t.Logf("%d of 3 runs killed while registering", killed)
	cmd, logs := start()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	c := client.New(sock)
	eventually.Until(t, 60*time.Second, func() error {
		if _, err := c.WhoAmI(t.Context()); err != nil {
			return fmt.Errorf("whoami after the kills: %w\n%s", err, logs.String())
		}
		return nil
	})
	h.Socket = sock
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("workload after the kills: %v\n%s", err, logs.String())
	}
	nc.Close()
	var creds []record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
	active := map[string]int{}
	for _, cr := range creds {
		if cr.Status == api.CredentialActive {
			active[cr.Workload]++
		}
	}
	for _, w := range []string{"app", "w0", "w1", "w2", "w3", "w4", "w5"} {
		if active[w] != 1 {
			t.Errorf("workload %s has %d active credentials, want 1 (%v)\n%s", w, active[w], active, logs.String())
		}
	}
	// Every workload usable, none left waiting for an operator.
	if l := logs.String(); strings.Contains(l, "registration failed") || strings.Contains(l, "unavailable") {
		t.Fatalf("a workload was left unavailable after the kills:\n%s", l)
	}
	if m, err := alerts.NextMsg(time.Second); err == nil {
		t.Fatalf("a tamper signal after the agent's own crashes: %s: %s", m.Subject, m.Data)
	}
}
