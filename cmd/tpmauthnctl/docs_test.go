package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestVersionAndDocs: --version names the Go toolchain; docs writes a man
// page per command, with its flags, and the shell completions.
func TestVersionAndDocs(t *testing.T) {
	out, err := ctl(t, "--version")
	if err != nil || !strings.HasPrefix(out, "tpmauthnctl version ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("--version: %q %v", out, err)
	}
	dir := t.TempDir()
	if _, err := ctl(t, "docs", dir); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(filepath.Join(dir, "man1", "tpmauthnctl-login.1"))
	if err != nil || !strings.Contains(string(page), ".TH \"tpmauthnctl\" \"1\"") || !strings.Contains(string(page), "--agent-socket") {
		t.Fatalf("man page of login: %v\n%s", err, page)
	}
	for _, f := range []string{"tpmauthnctl.bash", "_tpmauthnctl", "tpmauthnctl.fish"} {
		if b, err := os.ReadFile(filepath.Join(dir, "completions", f)); err != nil || !strings.Contains(string(b), "tpmauthnctl") {
			t.Fatalf("completion %s: %v", f, err)
		}
	}
}
