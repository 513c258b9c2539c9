package main

import (
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/doctor"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier"
)

func doctorChecks(t *testing.T, args ...string) ([]doctor.Check, error) {
	t.Helper()
	out, err := ctl(t, append(args, "--json", "doctor")...)
	var cs []doctor.Check
	if jerr := json.Unmarshal([]byte(out), &cs); jerr != nil {
		t.Fatalf("doctor --json: %v\n%s", jerr, out)
	}
	return cs, err
}

func findCheck(t *testing.T, cs []doctor.Check, name string) doctor.Check {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, cs)
	return doctor.Check{}
}

// TestDoctor: against a healthy verifier every check passes; a policy file
// broken on purpose fails the policy check (the previous policy stays), and
// a stopped verifier fails the connection, each with exit status non-zero.
func TestDoctor(t *testing.T) {
	dir := t.TempDir()
	ekDir := filepath.Join(dir, "ek-ca")
	ca, _, err := attestation.NewCA("Test TPM Manufacturer Root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(ekDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ekDir, "root.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	pol := fleettest.WritePolicy(t, time.Minute)
	data := filepath.Join(dir, "data")
	v := fleettest.StartVerifier(t, verifier.Config{DataDir: data, NATSListen: "127.0.0.1:-1", PolicyFile: pol, EKCADir: ekDir})
	cs, err := doctorChecks(t, "--data-dir", data)
	if err != nil || doctor.Failed(cs) {
		t.Fatalf("a healthy fleet: %v %+v", err, cs)
	}
	for _, name := range []string{"connection", "auth callout", "verifier", "clock", "policy", "audit trail", "EK trust"} {
		if c := findCheck(t, cs, name); !c.OK || c.Skipped {
			t.Fatalf("check %s: %+v", name, c)
		}
	}
	if c := findCheck(t, cs, "auth callout"); !strings.Contains(c.Detail, "refused") {
		t.Fatalf("auth callout: %+v", c)
	}

	// A broken policy: the reload fails and doctor says so.
	time.Sleep(10 * time.Millisecond) // a new modification time
	if err := os.WriteFile(pol, []byte("roles: {demo: {publish: [}"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the verifier checks the file at most once a second
	cs, err = doctorChecks(t, "--data-dir", data)
	if c := findCheck(t, cs, "policy"); err == nil || c.OK || !strings.Contains(c.Detail, "previous policy stays") {
		t.Fatalf("broken policy: %v %+v", err, c)
	}

	v.Close()
	cs, err = doctorChecks(t, "--data-dir", data, "--timeout", "1s")
	if c := findCheck(t, cs, "connection"); err == nil || c.OK {
		t.Fatalf("stopped verifier: %v %+v", err, c)
	}
}
