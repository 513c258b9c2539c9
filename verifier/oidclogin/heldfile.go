package oidclogin

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/tpmauthn/tpmauthn/internal/atomicfile"
	"github.com/tpmauthn/tpmauthn/verifier/people"
)

// heldFile keeps the held rotations (rotated.pending) in a file of the
// verifier's data directory, so that a restart before the store takes a
// rotated refresh token does not lose it (threat model P-16a): the old
// token is spent at the IdP, and one that detects reuse would revoke the
// grant. The tokens are sealed as in the person records (people.Sealer,
// the person's ID as additional data): the file gives whoever reads it no
// more than the data directory's issuer seed already does. The file is
// written whole (internal/atomicfile) each time the held set changes,
// which is rare (the store refused a write), and removed once it is empty.
type heldFile struct {
	path   string
	sealer *people.Sealer
}

// heldFileVersion is the file's format; another is not read (and kept).
const heldFileVersion = 1

type heldFileJSON struct {
	Version int             `json:"version"`
	Held    []heldEntryJSON `json:"held"`
}

type heldEntryJSON struct {
	Person string `json:"person"`
	IdP    string `json:"idp"`
	Old    []byte `json:"old"`  // sealed
	Next   []byte `json:"next"` // sealed
}

// save writes pending whole, or removes the file when nothing is held.
func (f *heldFile) save(pending map[string]rotation) error {
	if len(pending) == 0 {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("held refresh tokens: %w", err)
		}
		return nil
	}
	out := heldFileJSON{Version: heldFileVersion}
	for id, r := range pending {
		out.Held = append(out.Held, heldEntryJSON{Person: id, IdP: r.idp,
			Old: f.sealer.Seal(id, r.old), Next: f.sealer.Seal(id, r.next)})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("held refresh tokens: %w", err)
	}
	if err := atomicfile.Write(f.path, b, 0o600); err != nil {
		return fmt.Errorf("held refresh tokens: %w", err)
	}
	return nil
}

// errHeldFile: the file of held refresh tokens cannot be read; it was set
// aside (renamed) rather than overwritten.
var errHeldFile = errors.New("held refresh tokens: unreadable file set aside")

// errEmptyHeld: an entry names no person or no token.
var errEmptyHeld = errors.New("no person or no token")

// load reads the held rotations (none without a file). An entry that does
// not open (another issuer key, altered) is left out and reported; a file
// that cannot be parsed is renamed aside with the time, so that the next
// save does not destroy what an operator may still recover.
func (f *heldFile) load(now time.Time) (map[string]rotation, error) {
	b, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("held refresh tokens: %w", err)
	}
	var in heldFileJSON
	err = json.Unmarshal(b, &in)
	if err == nil && in.Version != heldFileVersion {
		err = fmt.Errorf("format version %d, this verifier reads %d", in.Version, heldFileVersion)
	}
	if err != nil {
		aside := f.path + ".unreadable-" + now.UTC().Format("20060102T150405Z")
		if rerr := os.Rename(f.path, aside); rerr != nil {
			return nil, fmt.Errorf("%w: %s: %w (renaming it aside failed too: %w)", errHeldFile, f.path, err, rerr)
		}
		return nil, fmt.Errorf("%w: %s, now %s: %w", errHeldFile, f.path, aside, err)
	}
	held := make(map[string]rotation, len(in.Held))
	var bad []error
	for _, e := range in.Held {
		old, oerr := f.sealer.Open(e.Person, e.Old)
		next, nerr := f.sealer.Open(e.Person, e.Next)
		if err := errors.Join(oerr, nerr); err != nil || e.Person == "" || next == "" {
			bad = append(bad, fmt.Errorf("held refresh token of person %q left out: %w", e.Person, cmp.Or(err, errEmptyHeld)))
			continue
		}
		held[e.Person] = rotation{idp: e.IdP, old: old, next: next}
	}
	return held, errors.Join(bad...)
}
