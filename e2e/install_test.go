package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall: make install puts the binaries, the units and example
// configs in place (the configs as /etc/tpmauthn/*.yaml too, when there
// are none), and a second install keeps a config an operator edited. The
// binaries are stand-ins: make's build step is not what this checks.
func TestMakeInstall(t *testing.T) {
	mk, err := exec.LookPath("make")
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatal("make is needed: apt-get install -y make")
	case err != nil:
		t.Skip("no make")
	}
	bin, root := t.TempDir(), t.TempDir()
	for _, b := range []string{"tpmauthn-agent", "tpmauthn-verifier", "tpmauthnctl"} {
		if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	install := func() string {
		t.Helper()
		out, err := exec.Command(mk, "-C", "..", "-o", "build", "install", "BIN="+bin, "DESTDIR="+root).CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
		return string(out)
	}
	install()
	conf := filepath.Join(root, "etc", "tpmauthn")
	for _, f := range []string{"usr/local/bin/tpmauthn-verifier", "etc/systemd/system/tpmauthn-verifier.service",
		"etc/tpmauthn/verifier.yaml", "etc/tpmauthn/verifier.yaml.example", "etc/tpmauthn/agent.yaml", "etc/tpmauthn/agent.yaml.example"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("make install did not install /%s: %v", f, err)
		}
	}
	shipped, err := os.ReadFile("../packaging/verifier.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(conf, "verifier.yaml")); err != nil || string(b) != string(shipped) {
		t.Fatalf("/etc/tpmauthn/verifier.yaml is not packaging/verifier.yaml: %v", err)
	}
	edited := "data_dir: /srv/verifier # mine\n"
	if err := os.WriteFile(filepath.Join(conf, "verifier.yaml"), []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	out := install()
	if b, _ := os.ReadFile(filepath.Join(conf, "verifier.yaml")); string(b) != edited || !strings.Contains(out, "kept "+filepath.Join(conf, "verifier.yaml")) {
		t.Fatalf("a second make install replaced the edited verifier.yaml (now %q):\n%s", b, out)
	}
}
