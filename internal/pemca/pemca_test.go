package pemca

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadOrCreate(t *testing.T) {
	dir := t.TempDir()
	cp, kp := filepath.Join(dir, "sub", "ca.pem"), filepath.Join(dir, "sub", "ca-key.pem")
	ca, key, created, err := LoadOrCreate(cp, kp, "x", time.Hour)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if fi, err := os.Stat(kp); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	ca2, key2, created, err := LoadOrCreate(cp, kp, "x", time.Hour)
	if err != nil || created || !ca2.Equal(ca) || !key2.Equal(key) {
		t.Fatalf("reload: created %v, err %v", created, err)
	}
	// A key that does not belong to the certificate is refused.
	other := filepath.Join(dir, "other")
	if _, _, _, err := LoadOrCreate(filepath.Join(other, "ca.pem"), filepath.Join(other, "ca-key.pem"), "y", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := LoadOrCreate(cp, filepath.Join(other, "ca-key.pem"), "x", time.Hour); err == nil {
		t.Fatal("a mismatched key was accepted")
	}
}
