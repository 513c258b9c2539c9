package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

func runCmd(t *testing.T, args ...string) []byte {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("tpmauthn-agent %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.Bytes()
}

func randomB64(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestInteropSimpleWebAuthn runs debug register and debug assert on swtpm and
// has SimpleWebAuthn (node) verify the output with only ca.pem.
func TestInteropSimpleWebAuthn(t *testing.T) {
	swtpmtest.Require(t) // first: under -short it skips before node is looked for
	script, _ := filepath.Abs("../../scripts/interop")
	if _, err := os.Stat(filepath.Join(script, "node_modules", "@simplewebauthn", "server")); err != nil {
		msg := "SimpleWebAuthn not installed: run 'npm ci' in scripts/interop (or 'make interop')"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	sw := swtpmtest.New(t)
	dir := t.TempDir()
	const rp, origin = "fleet.example.com", "tpmauthn://fleet.example.com"
	common := []string{"--tpm", sw.URI(), "--data-dir", filepath.Join(dir, "data")}
	regChal, asChal := randomB64(t), randomB64(t)
	reg := runCmd(t, append([]string{"debug", "register", "--rp-id", rp, "--origin", origin, "--challenge", regChal, "--ca-dir", filepath.Join(dir, "ca")}, common...)...)
	as := runCmd(t, append([]string{"debug", "assert", "--challenge", asChal}, common...)...)
	for name, b := range map[string][]byte{"reg.json": reg, "as.json": as} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	other, _, err := attestation.NewCA("unrelated CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Raw})
	if err := os.WriteFile(filepath.Join(dir, "other.pem"), otherPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	node := exec.Command("node", filepath.Join(script, "verify.mjs"), filepath.Join(dir, "ca", "ca.pem"),
		filepath.Join(dir, "reg.json"), regChal, filepath.Join(dir, "as.json"), asChal, rp, origin, filepath.Join(dir, "other.pem"))
	out, err := node.CombinedOutput()
	if err != nil {
		t.Fatalf("SimpleWebAuthn rejected the output: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
