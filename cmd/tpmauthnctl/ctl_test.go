package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func ctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.Execute()
	return out.String(), err
}

// TestAgainstLocalVerifier drives tpmauthnctl against a verifier whose data
// directory is all it is told.
func TestAgainstLocalVerifier(t *testing.T) {
	dir := t.TempDir()
	fleettest.StartVerifier(t, verifier.Config{DataDir: dir, NATSListen: "127.0.0.1:-1"})

	out, err := ctl(t, "--data-dir", dir, "token", "create", "--roles", "demo", "--ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(out)
	if !strings.HasPrefix(token, "tpmauthn-join-") || strings.Contains(token, "\n") {
		t.Fatalf("token create printed %q, want the token alone", out)
	}
	// --out writes the token for the agent's --token-file readable by its
	// owner only, whatever the umask and the file's mode before.
	file := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(file, []byte("an old token\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = ctl(t, "--data-dir", dir, "token", "create", "--roles", "demo", "--out", file)
	if err != nil || out != "" {
		t.Fatalf("token create --out printed %q, %v", out, err)
	}
	if b, err := os.ReadFile(file); err != nil || !strings.HasPrefix(string(b), "tpmauthn-join-") {
		t.Fatalf("token file: %q, %v", b, err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file %v, %v: want mode 0600", fi.Mode(), err)
	}
	out, err = ctl(t, "--data-dir", dir, "--json", "token", "list")
	if err != nil {
		t.Fatal(err)
	}
	var tokens []record.Token
	if err := json.Unmarshal([]byte(out), &tokens); err != nil || len(tokens) != 2 || tokens[0].Roles[0] != "demo" {
		t.Fatalf("token list --json = %s (%v)", out, err)
	}
	if strings.Contains(out, token) {
		t.Fatal("token list shows the token itself; only its hash may be kept")
	}
	out, err = ctl(t, "--data-dir", dir, "token", "list")
	if err != nil || !strings.Contains(out, "valid") || !strings.Contains(out, tokens[0].ID) {
		t.Fatalf("token list table = %q, %v", out, err)
	}
	out, err = ctl(t, "--data-dir", dir, "--json", "host", "list")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("host list --json on an empty fleet = %q, %v", out, err)
	}
	out, err = ctl(t, "--data-dir", dir, "status")
	if err != nil || !strings.Contains(out, "2 valid") {
		t.Fatalf("status = %q, %v", out, err)
	}
	if _, err := ctl(t, "--data-dir", dir, "host", "show", "h-missing"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("host show of a missing host: %v", err)
	}
	if _, err := ctl(t, "--data-dir", dir, "token", "create", "--roles", "bad role"); err == nil {
		t.Fatal("a role with a space was accepted")
	}
	out, err = ctl(t, "--data-dir", dir, "nats-config")
	if err != nil || !strings.Contains(out, "auth_callout") || !strings.Contains(out, "allowed_accounts: [ APP ]") {
		t.Fatalf("nats-config = %q, %v", out, err)
	}
}

func TestNoVerifierIsAClearError(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // no software key of a login
	_, err := ctl(t, "token", "list")
	if err == nil || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("with nothing configured: %v", err)
	}
	_, err = ctl(t, "--data-dir", t.TempDir(), "--timeout", time.Second.String(), "token", "list")
	if err == nil || !strings.Contains(err.Error(), "has tpmauthn-verifier started") {
		t.Fatalf("with an empty data dir: %v", err)
	}
}

// TestOverTLS: against a verifier serving TLS, tpmauthnctl verifies the
// server with the bundle the data directory records, and with no bundle it
// refuses the server's certificate.
func TestOverTLS(t *testing.T) {
	dir := t.TempDir()
	v := fleettest.StartVerifier(t, verifier.Config{DataDir: dir, NATSListen: "127.0.0.1:-1", NATSTLS: verifier.TLSOn})
	out, err := ctl(t, "--data-dir", dir, "token", "create", "--roles", "demo", "--ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	if _, pin := api.SplitJoinToken(strings.TrimSpace(out)); !natstls.ValidPin(pin) {
		t.Fatalf("token %q carries no CA pin", out)
	}
	seed, _ := keys.OperatorFiles(dir)
	_, err = ctl(t, "--nats-url", v.ClientURL(), "--creds", seed, "status")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("status without the CA: %v, want a certificate error", err)
	}
	if _, err = ctl(t, "--nats-url", v.ClientURL(), "--creds", seed, "--nats-ca", keys.ClientCAFile(dir), "status"); err != nil {
		t.Fatalf("status with --nats-ca: %v", err)
	}
}

// TestWaitsForAStartingVerifier: tpmauthnctl started before the verifier
// has written its client URL waits for it (within --timeout) instead of
// failing at once.
func TestWaitsForAStartingVerifier(t *testing.T) {
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		_, err := ctl(t, "--data-dir", dir, "--timeout", "20s", "token", "list")
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	fleettest.StartVerifier(t, verifier.Config{DataDir: dir, NATSListen: "127.0.0.1:-1"})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("token list against a verifier that started after it: %v", err)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("tpmauthnctl did not finish")
	}
}

// TestNATSConfigMerge: nats-config --merge prints the existing file with
// tpmauthn merged in and tells, on stderr, what it kept and who now goes
// through the callout; a file without server-level JetStream is refused,
// saying to add it.
func TestNATSConfigMerge(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(conf, []byte("jetstream { store_dir: /var/lib/nats }\naccounts { LEGACY { users: [ {user: alice, password: s3cret} ] } }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs([]string{"--data-dir", dir, "nats-config", "--merge", conf})
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"LEGACY { users: [ {user: alice, password: s3cret} ] }", "  AUTH {", "auth_callout {", "system_account: SYS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("merged configuration lacks %q:\n%s", want, out.String())
		}
	}
	if !strings.Contains(errOut.String(), "kept accounts LEGACY") || !strings.Contains(errOut.String(), "every other client") {
		t.Errorf("stderr:\n%s", errOut.String())
	}
	if err := os.WriteFile(conf, []byte("port: 4222\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, "--data-dir", dir, "nats-config", "--merge", conf); err == nil || !strings.Contains(err.Error(), "add 'jetstream { store_dir:") {
		t.Fatalf("merge into a file without JetStream: %v", err)
	}
}
