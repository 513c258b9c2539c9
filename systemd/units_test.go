package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	units, _ := filepath.Glob("*.service")
	sockets, _ := filepath.Glob("*.socket")
	var paths []string
	for _, u := range append(units, sockets...) {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// Point ExecStart at stand-in executables: the real ones are installed
		// by make install, not here.
		s := strings.ReplaceAll(string(b), "/usr/local/bin/", bin+"/")
		for _, name := range []string{"tpmauthn-agent", "tpmauthn-verifier"} {
			if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestAgentUnitHardening(t *testing.T) {
	b, err := os.ReadFile("tpmauthn-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "Requires=tpmauthn-agent.socket", "DeviceAllow=/dev/tpmrm0 rw", "DevicePolicy=closed",
		"ProtectSystem=strict", "StateDirectory=tpmauthn", "RuntimeDirectory=tpmauthn", "NoNewPrivileges=yes", "Restart=on-failure",
	} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("tpmauthn-agent.service lacks %s", want)
		}
	}
	if strings.Contains(string(b), "ProtectProc=invisible") {
		t.Error("ProtectProc=invisible would hide the callers the agent must name")
	}
}
