package oidclogin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
)

// keeperStore is a person bucket of refresh tokens that can be made to
// fail, with ReplaceRefreshToken's compare-and-set.
type keeperStore struct {
	tokens map[string]string
	down   bool
}

var errStoreDown = errors.New("store down")

func (k *keeperStore) ReplaceRefreshToken(_ context.Context, id, old, next string) error {
	if k.down {
		return errStoreDown
	}
	cur, ok := k.tokens[id]
	if !ok {
		return api.ErrNotFound
	}
	if cur != old || cur == "" {
		return people.ErrTokenChanged
	}
	k.tokens[id] = next
	return nil
}

// P-16a: a rotated refresh token the store refused is neither lost nor
// spent twice, and never undoes a change made meanwhile.
func TestRotatedTokenHeld(t *testing.T) {
	for _, tc := range []struct {
		name        string
		meanwhile   func(k *keeperStore) // while the store is down, after the rotation
		want        string               // the stored token once the store is back
		wantRevoked []string             // at the IdP
	}{
		{"storedOnceBack", func(*keeperStore) {}, "r2", nil},
		{"newerLoginWins", func(k *keeperStore) { k.tokens["p"] = "login" }, "login", []string{"okta:r2"}},
		{"offboardedGetsNone", func(k *keeperStore) { k.tokens["p"] = "" }, "", []string{"okta:r2"}},
		{"personGone", func(k *keeperStore) { delete(k.tokens, "p") }, "", []string{"okta:r2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &keeperStore{tokens: map[string]string{"p": "r1"}}
			var revoked []string
			r := rotated{revoke: func(_ context.Context, idp, token string) error {
				revoked = append(revoked, idp+":"+token)
				return nil
			}}
			k.down = true
			if err := r.keep(t.Context(), k, "p", rotation{"okta", "r1", "r2"}); !errors.Is(err, errStoreDown) {
				t.Fatalf("keep with the store down: %v", err)
			}
			// The next re-check spends the new token, not the spent one.
			if got := r.token("p", "r1"); got != "r2" {
				t.Fatalf("token to spend while held: %q, want r2", got)
			}
			if errs := r.store(t.Context(), k); len(errs) != 1 || r.held() != 1 {
				t.Fatalf("store with the store still down: %v, held %d", errs, r.held())
			}
			tc.meanwhile(k)
			k.down = false
			if errs := r.store(t.Context(), k); len(errs) != 0 {
				t.Fatalf("store once back: %v", errs)
			}
			if k.tokens["p"] != tc.want || r.held() != 0 || !slices.Equal(revoked, tc.wantRevoked) {
				t.Fatalf("stored %q, held %d, revoked %v; want %q, 0, %v", k.tokens["p"], r.held(), revoked, tc.want, tc.wantRevoked)
			}
			// Nothing held: the stored token is the one to spend.
			if got := r.token("p", k.tokens["p"]); got != k.tokens["p"] {
				t.Fatalf("token to spend after: %q", got)
			}
		})
	}
}

// A held rotation is spent only in place of the token it replaces: a
// person whose stored token changed spends the stored one.
func TestRotatedTokenOnlyForItsPredecessor(t *testing.T) {
	k := &keeperStore{tokens: map[string]string{"p": "r1"}, down: true}
	var r rotated
	_ = r.keep(t.Context(), k, "p", rotation{"okta", "r1", "r2"})
	if got := r.token("p", "login"); got != "login" {
		t.Fatalf("token to spend after a newer login: %q, want login", got)
	}
	if got := r.token("q", "x"); got != "x" {
		t.Fatalf("another person's token: %q", got)
	}
	// A second rotation of the held token replaces the first.
	k.down = false
	if err := r.keep(t.Context(), k, "p", rotation{"okta", "r1", "r3"}); err != nil || k.tokens["p"] != "r3" || r.held() != 0 {
		t.Fatalf("second rotation: %v, stored %q, held %d", err, k.tokens["p"], r.held())
	}
}

func testSealer(t *testing.T, b byte) *people.Sealer {
	t.Helper()
	s, err := people.NewSealer(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// P-16a's residual, closed: a rotated token the store refused survives a
// restart of the verifier (the file in the data directory), sealed, and
// the file goes once the store has taken it.
func TestRotatedTokenHeldAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "held-refresh-tokens.json")
	sealer := testSealer(t, 1)
	k := &keeperStore{tokens: map[string]string{"p": "r1-stored", "q": "q1"}, down: true}
	var before rotated
	if _, err := before.restore(&heldFile{path: path, sealer: sealer}, time.Now()); err != nil {
		t.Fatalf("restore without a file: %v", err)
	}
	_ = before.keep(t.Context(), k, "p", rotation{"okta", "r1-stored", "r2-rotated"})
	_ = before.keep(t.Context(), k, "q", rotation{"entra", "q1", "q2-rotated"})
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no file after the store refused: %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v, want 0600", st.Mode().Perm())
	}
	for _, secret := range []string{"r1-stored", "r2-rotated", "q2-rotated"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("the file holds token %q in clear", secret)
		}
	}

	// The restart: a new process reads them back.
	var after rotated
	if n, err := after.restore(&heldFile{path: path, sealer: sealer}, time.Now()); n != 2 || err != nil {
		t.Fatalf("restore: %d, %v; want 2 held", n, err)
	}
	if got := after.token("p", "r1-stored"); got != "r2-rotated" {
		t.Fatalf("token to spend after the restart: %q, want the rotated one", got)
	}
	k.down = false
	if errs := after.store(t.Context(), k); len(errs) != 0 {
		t.Fatalf("store once back: %v", errs)
	}
	if k.tokens["p"] != "r2-rotated" || k.tokens["q"] != "q2-rotated" {
		t.Fatalf("stored %v", k.tokens)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the file stays once nothing is held: %v", err)
	}
}

// A file the verifier cannot use loses nothing and grants nothing: an
// entry sealed under another key (another fleet's) or for another person
// is left out, and a file that does not parse is set aside, not
// overwritten.
func TestHeldFileRefusals(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "held.json")
	mine, other := testSealer(t, 1), testSealer(t, 2)
	if err := (&heldFile{path: path, sealer: other}).save(map[string]rotation{"p": {"okta", "a", "b"}}); err != nil {
		t.Fatal(err)
	}
	var r rotated
	if n, err := r.restore(&heldFile{path: path, sealer: mine}, time.Now()); n != 0 || !errors.Is(err, people.ErrSealed) {
		t.Fatalf("another key's file: %d held, %v; want 0 and ErrSealed", n, err)
	}

	// An entry moved to another person's name does not open either.
	var f heldFileJSON
	if err := (&heldFile{path: path, sealer: mine}).save(map[string]rotation{"p": {"okta", "a", "b"}}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	f.Held[0].Person = "mallory"
	b, _ = json.Marshal(f)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := r.restore(&heldFile{path: path, sealer: mine}, time.Now()); n != 0 || !errors.Is(err, people.ErrSealed) {
		t.Fatalf("entry moved to another person: %d held, %v", n, err)
	}

	for name, content := range map[string]string{"garbage": "{not json", "version": `{"version":9,"held":[]}`} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		var r rotated
		if n, err := r.restore(&heldFile{path: path, sealer: mine}, time.Now()); n != 0 || !errors.Is(err, errHeldFile) {
			t.Fatalf("%s: %d held, %v; want errHeldFile", name, n, err)
		}
		aside, _ := filepath.Glob(path + ".unreadable-*")
		if len(aside) != 1 {
			t.Fatalf("%s: set aside as %v, want one file", name, aside)
		}
		if kept, _ := os.ReadFile(aside[0]); string(kept) != content {
			t.Fatalf("%s: the set-aside file holds %q", name, kept)
		}
		os.Remove(aside[0])
	}
}
