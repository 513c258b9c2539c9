package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
)

// The test of issue 17 part 5: upgrades keep data. testdata/release-2026-12
// holds what this release wrote: a verifier's backup (its keys, CAs, every
// KV bucket and the audit stream), an agent's data directory, the TPM state
// its key blobs belong to, and the EK CAs and policy. Every later release
// must load them: the verifier restored from the backup serves the same
// fleet, the agent's workload connects with its old credential, and the
// audit chain still verifies. A release that changes a record's layout
// (record.Version) needs a migration, or this test fails.
//
// TPMAUTHN_UPDATE_FIXTURE=1 writes the fixture anew (only when the layout
// is meant to start over).

const fixture = "testdata/release-2026-12"

// fixtureManifest is what the fixture's fleet held.
type fixtureManifest struct {
	Host        string   `json:"host"`
	Credentials []string `json:"credentials"`
	Written     string   `json:"written"`
}

func TestUpgradeKeepsData(t *testing.T) {
	fleettest.Require(t)
	// Every run restores the same trail: the audit witness (kept per audit
	// key) of an earlier run would rightly call it truncated.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if os.Getenv("TPMAUTHN_UPDATE_FIXTURE") == "1" {
		writeFixture(t)
	}
	var m fixtureManifest
	b, err := os.ReadFile(filepath.Join(fixture, "manifest.json"))
	if err != nil {
		t.Fatalf("the fixture of this release: %v (TPMAUTHN_UPDATE_FIXTURE=1 writes it)", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	ctl := buildCtl(t)
	data := filepath.Join(t.TempDir(), "verifier")
	if out, err := runCtl(t, ctl, "--data-dir", data, "restore", filepath.Join(fixture, "backup")); err != nil {
		t.Fatalf("restore the fixture's backup: %v\n%s", err, out)
	}
	// No maximum credential age: the fixture's credentials must keep
	// working whenever this test runs.
	v := fleettest.StartVerifier(t, verifier.Config{DataDir: data, NATSListen: "127.0.0.1:-1", RPID: fleettest.RPID, CredentialMaxAge: -1,
		EKCADir: filepath.Join(fixture, "ek-ca"), PolicyFile: copyTo(t, filepath.Join(fixture, "policy.yaml")), Logger: fleettest.Logger(t, "verifier")})
	op := fleettest.OperatorConn(t, data, v.ClientURL())
	st := readState(t, op)
	var creds []string
	for _, c := range st.Credentials {
		creds = append(creds, c.ID)
	}
	slices.Sort(creds)
	if len(st.Hosts) != 1 || st.Hosts[0].ID != m.Host || !slices.Equal(creds, m.Credentials) {
		t.Fatalf("the fleet of %s: hosts %v, credentials %v; want host %s, credentials %v", m.Written, st.Hosts, creds, m.Host, m.Credentials)
	}

	// The agent of that release, on its TPM, with its data directory.
	sw := swtpmtest.FromState(t, filepath.Join(fixture, "tpm-state"))
	agentDir := filepath.Join(t.TempDir(), "agent")
	if err := os.CopyFS(agentDir, os.DirFS(filepath.Join(fixture, "agent"))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	h := &fleettest.Host{Socket: filepath.Join(fleettest.PublicDir(t), "agent.sock")}
	h.Config = agent.Config{TPM: sw.URI(), NATSURL: v.ClientURL(), DataDir: agentDir, Socket: h.Socket, Hostname: "host-under-test",
		Workloads: []agent.Workload{fleettest.UIDWorkload("app", uint32(os.Getuid()))}, Logger: fleettest.Logger(t, "agent")}
	h.Start(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("the workload of %s's agent cannot connect after the upgrade: %v", m.Written, err)
	}
	nc.Close()
	if out, err := runCtl(t, ctl, "--data-dir", data, "audit", "verify"); err != nil {
		t.Fatalf("audit verify of the upgraded trail: %v\n%s", err, out)
	}
}

func copyTo(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// writeFixture runs a fleet of this release and keeps what it wrote.
func writeFixture(t *testing.T) {
	t.Helper()
	if err := os.RemoveAll(fixture); err != nil {
		t.Fatal(err)
	}
	f := fleettest.New(t)
	h := f.NewHost(t)
	for range 3 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
	st := readState(t, f.Op)
	m := fixtureManifest{Host: st.Hosts[0].ID, Written: time.Now().UTC().Format(time.DateOnly)}
	for _, c := range st.Credentials {
		m.Credentials = append(m.Credentials, c.ID)
	}
	slices.Sort(m.Credentials)
	ctl := buildCtl(t)
	if out, err := runCtl(t, ctl, "--data-dir", f.Config.DataDir, "backup", filepath.Join(fixture, "backup")); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.TPM.Stop(); err != nil { // its state saved whole
		t.Fatal(err)
	}
	for src, dst := range map[string]string{h.Config.DataDir: "agent", f.TPM.StateDir: "tpm-state", f.EKCADir: "ek-ca"} {
		if err := os.CopyFS(filepath.Join(fixture, dst), os.DirFS(src)); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := os.ReadFile(f.Config.PolicyFile)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(m, "", "  ")
	for name, body := range map[string][]byte{"policy.yaml": pol, "manifest.json": append(js, '\n')} {
		if err := os.WriteFile(filepath.Join(fixture, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The fixture is read by other users' checkouts: no 0600 files (the
	// keys in it are a test fleet's).
	if out, err := exec.Command("chmod", "-R", "go+rX", fixture).CombinedOutput(); err != nil {
		t.Fatalf("chmod: %v %s", err, out)
	}
	if err := f.TPM.Start(); err != nil { // for the cleanups
		t.Fatal(err)
	}
}
