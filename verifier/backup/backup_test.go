package backup

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// writeBackup writes a backup with fresh key files and one record.
func writeBackup(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	issuer, _ := nkeys.CreateAccount()
	for _, k := range keys.Shared {
		b := []byte("not a key\n")
		if k == keys.IssuerFile {
			seed, _ := issuer.Seed()
			b = append(seed, '\n')
		}
		if err := os.WriteFile(filepath.Join(src, k), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "b")
	w, err := Create(dir, keys.Public(issuer))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys.Shared {
		if err := w.CopyKey(filepath.Join(src, k)); err != nil {
			t.Fatal(err)
		}
	}
	f, err := w.File(BucketFile(Buckets[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Line(Record{Key: "h-1", Value: []byte(`{"v":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenAndStage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir, dataDir string)
		want   error
	}{
		{"intact", func(*testing.T, string, string) {}, nil},
		{"record_edited", func(t *testing.T, dir, _ string) {
			write(t, filepath.Join(dir, KVDir, Buckets[0]+".jsonl"), `{"key":"h-1","value":"e30="}`+"\n")
		}, ErrHashMismatch},
		{"key_missing", func(t *testing.T, dir, _ string) {
			if err := os.Remove(filepath.Join(dir, KeysDir, keys.IssuerFile)); err != nil {
				t.Fatal(err)
			}
		}, ErrHashMismatch},
		{"no_manifest", func(t *testing.T, dir, _ string) {
			if err := os.Remove(filepath.Join(dir, ManifestFile)); err != nil {
				t.Fatal(err)
			}
		}, ErrMalformed},
		{"path_outside", func(t *testing.T, dir, _ string) {
			write(t, filepath.Join(dir, ManifestFile), `{"format":1,"files":[{"name":"../../etc/passwd"}]}`)
		}, ErrMalformed},
		{"data_dir_has_keys", func(t *testing.T, _, dataDir string) {
			write(t, filepath.Join(dataDir, keys.IssuerFile), "x")
		}, ErrFleetExists},
		{"data_dir_has_jetstream", func(t *testing.T, _, dataDir string) {
			if err := os.MkdirAll(filepath.Join(dataDir, "jetstream"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, ErrFleetExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, dataDir := writeBackup(t), t.TempDir()
			tc.change(t, dir, dataDir)
			bk, err := Open(dir)
			if err == nil {
				err = Stage(bk, dataDir)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("open and stage = %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			staged, err := Open(StagingDir(dataDir))
			if err != nil {
				t.Fatalf("the staged copy: %v", err)
			}
			if n := staged.Count(BucketFile(Buckets[0])); n != 1 {
				t.Fatalf("staged records = %d, want 1", n)
			}
			fi, err := os.Stat(filepath.Join(dataDir, keys.IssuerFile))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("staged key file: %v %v", fi, err)
			}
		})
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
