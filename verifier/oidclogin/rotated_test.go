package oidclogin

import (
	"context"
	"errors"
	"slices"
	"testing"

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
