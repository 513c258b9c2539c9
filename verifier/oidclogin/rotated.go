package oidclogin

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
)

// A refresh token the IdP rotated is spent: an IdP that detects reuse
// (Okta, Auth0, Entra with rotation on) revokes the whole grant when the
// old one comes back, and the next re-check would then offboard the person
// (threat model P-16a). So a new token the store did not take is not
// dropped: it is kept in memory and written again at every pass of the
// re-check (every tenth of the interval, at most a minute apart), well
// before the person's check is due again at any instance, and the re-check
// spends it rather than the stored one meanwhile. A held token that no
// longer applies (a newer login stored another, offboarding dropped the
// person's, the person is gone) is revoked at the IdP: nobody spends it
// again. Held tokens are also kept, sealed, in a file of the data
// directory (heldFile), which a restart reads back.

// tokenKeeper stores a rotated refresh token over the one it replaces
// (people.Service.ReplaceRefreshToken).
type tokenKeeper interface {
	ReplaceRefreshToken(ctx context.Context, id, old, next string) error
}

// rotation is a rotated refresh token of IdP idp still to store: next
// replaces old.
type rotation struct{ idp, old, next string }

// rotated holds the rotations the store has not taken yet, by person.
type rotated struct {
	// revoke revokes a token at its IdP (Handler.RevokeRefresh); its
	// failures are the IdP's to expire.
	revoke func(ctx context.Context, idp, token string) error
	// file keeps pending across restarts (nil: memory only); warn reports
	// a failed write of it (the rotation stays held in memory).
	file    *heldFile
	warn    func(msg string, err error)
	mu      sync.Mutex
	pending map[string]rotation
}

// changed writes pending to the file after a change; r.mu is held, so
// the file's writes follow the changes in order. They are rare: only a
// store that refused a rotation, or took one it had refused, changes
// pending.
func (r *rotated) changed() {
	if r.file == nil {
		return
	}
	if err := r.file.save(r.pending); err != nil && r.warn != nil {
		r.warn("re-check: cannot write the held refresh tokens to the data directory; held in memory only, a restart would lose them", err)
	}
}

// restore keeps the held rotations in f from now on, starting with those
// f holds (a restart's); it returns how many.
func (r *rotated) restore(f *heldFile, now time.Time) (int, error) {
	held, err := f.load(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file = f
	if r.pending == nil {
		r.pending = map[string]rotation{}
	}
	maps.Copy(r.pending, held)
	return len(held), err
}

// keep stores rot.next over rot.old for person id; if the store fails,
// the rotation is held for store's next call. A rotation that no longer
// applies is revoked.
func (r *rotated) keep(ctx context.Context, k tokenKeeper, id string, rot rotation) error {
	err := k.ReplaceRefreshToken(ctx, id, rot.old, rot.next)
	r.mu.Lock()
	if settled(err) {
		if _, ok := r.pending[id]; ok {
			delete(r.pending, id)
			r.changed()
		}
	} else {
		if r.pending == nil {
			r.pending = map[string]rotation{}
		}
		r.pending[id] = rot
		r.changed()
	}
	r.mu.Unlock()
	r.dropped(ctx, rot, err)
	return err
}

// settled: the store took the rotation, or it no longer applies.
func settled(err error) bool {
	return err == nil || errors.Is(err, people.ErrTokenChanged) || errors.Is(err, api.ErrNotFound)
}

// dropped revokes rot's token if err says it no longer applies.
func (r *rotated) dropped(ctx context.Context, rot rotation, err error) {
	if err != nil && settled(err) && r.revoke != nil {
		_ = r.revoke(ctx, rot.idp, rot.next)
	}
}

// token is the refresh token to spend for person id: a held rotation's
// new one if stored is the token it replaces, else stored.
func (r *rotated) token(id, stored string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pending[id]; ok && p.old == stored {
		return p.next
	}
	return stored
}

// store writes every held rotation again; a person whose token changed
// meanwhile (a new login, offboarding) or who is gone loses theirs, which
// is revoked. It returns the failures that remain.
func (r *rotated) store(ctx context.Context, k tokenKeeper) []error {
	r.mu.Lock()
	held := make(map[string]rotation, len(r.pending))
	for id, p := range r.pending {
		held[id] = p
	}
	r.mu.Unlock()
	var failed []error
	for id, p := range held {
		err := k.ReplaceRefreshToken(ctx, id, p.old, p.next)
		r.mu.Lock()
		if cur, ok := r.pending[id]; ok && cur == p && settled(err) {
			delete(r.pending, id) // unless a newer rotation replaced it meanwhile
			r.changed()
		}
		r.mu.Unlock()
		r.dropped(ctx, p, err)
		if !settled(err) {
			failed = append(failed, err)
		}
	}
	return failed
}

// held is how many rotations are still to store.
func (r *rotated) held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}
