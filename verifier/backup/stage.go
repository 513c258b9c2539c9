package backup

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// StagingDir is where a restore waits in a verifier's data directory until
// the verifier imports it at its next start (verifier/restore).
func StagingDir(dataDir string) string { return filepath.Join(dataDir, "restore") }

// jetStreamDir is the embedded server's store in a data directory (see
// verifier.embeddedOptions).
const jetStreamDir = "jetstream"

// Stage prepares dataDir, a verifier's data directory that holds no fleet
// yet, to serve the fleet of the backup bk: it writes the key files and
// copies the whole backup to StagingDir, which the verifier
// imports at start. On failure it removes what it wrote.
//
// A data directory holds a fleet when it has any shared key file, a
// JetStream store or a staged restore: restoring over it would replace a
// live fleet's keys, and is refused (ErrFleetExists).
func Stage(bk *Backup, dataDir string) (err error) {
	if err := checkFresh(dataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	// Staged first, under a temporary name, then renamed: a staging
	// directory is whole or absent.
	tmp, err := os.MkdirTemp(dataDir, ".restore-")
	if err != nil {
		return fmt.Errorf("stage restore: %w", err)
	}
	var written []string
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
			for _, p := range written {
				_ = os.Remove(p)
			}
		}
	}()
	// The staged copy is whole, key files too (so that the verifier checks
	// it against its manifest as this did); the import removes it.
	for _, d := range []string{KVDir, KeysDir} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o700); err != nil {
			return fmt.Errorf("stage restore: %w", err)
		}
	}
	for _, f := range bk.Manifest.Files {
		if err := copyChecked(bk, f, filepath.Join(tmp, filepath.FromSlash(f.Name))); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(bk.Dir, ManifestFile), filepath.Join(tmp, ManifestFile)); err != nil {
		return err
	}
	for _, k := range keys.Shared {
		dst := filepath.Join(dataDir, k)
		if err := copyChecked(bk, *bk.file(KeysDir + "/" + k), dst); err != nil {
			return err
		}
		written = append(written, dst)
	}
	if err := os.Rename(tmp, StagingDir(dataDir)); err != nil {
		return fmt.Errorf("stage restore: %w", err)
	}
	return syncDir(dataDir)
}

func checkFresh(dataDir string) error {
	entries, err := os.ReadDir(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		if slices.Contains(keys.Shared, n) || n == jetStreamDir || n == filepath.Base(StagingDir(dataDir)) {
			return fmt.Errorf("%w: %s has %s: restore into a new, empty data directory (a restore never replaces a fleet)", ErrFleetExists, dataDir, n)
		}
	}
	return nil
}

// copyChecked copies a backup file and checks the copy against the
// manifest: the backup may change while it is read.
func copyChecked(bk *Backup, f File, dst string) error {
	if err := copyFile(filepath.Join(bk.Dir, filepath.FromSlash(f.Name)), dst); err != nil {
		return err
	}
	return checkFile(dst, f)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("stage restore: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("stage restore: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return fmt.Errorf("stage restore %s: %w", dst, err)
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return fmt.Errorf("stage restore %s: %w", dst, err)
	}
	return out.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
