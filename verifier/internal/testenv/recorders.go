package testenv

import (
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Kicks stands in for the sessions' kicker where a test only needs to know
// what was kicked (the kick of a real NATS session is the verifier's
// black-box tests'). It reports no session kicked, as when the revocation
// watch was first.
type Kicks struct {
	mu   sync.Mutex
	ids  []string
	fail int
}

// KickAll records c, or fails (see FailNext).
func (k *Kicks) KickAll(_ context.Context, c *record.Credential) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail > 0 {
		k.fail--
		return 0, errors.New("testenv: kick failed (FailNext)")
	}
	k.ids = append(k.ids, c.ID)
	return 0, nil
}

// FailNext makes the next n kicks fail, unrecorded (a server that does
// not answer).
func (k *Kicks) FailNext(n int) {
	k.mu.Lock()
	k.fail = n
	k.mu.Unlock()
}

// List is the credentials kicked so far, sorted (kicks run concurrently).
func (k *Kicks) List() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(slices.Values(k.ids))
}

// Reset forgets them.
func (k *Kicks) Reset() {
	k.mu.Lock()
	k.ids = nil
	k.mu.Unlock()
}

// Alerts records the kinds of alert raised (alert.Publisher's Alert).
type Alerts struct {
	mu    sync.Mutex
	kinds []string
}

// Alert records kind.
func (a *Alerts) Alert(kind string, _ audit.Event) {
	a.mu.Lock()
	a.kinds = append(a.kinds, kind)
	a.mu.Unlock()
}

// Kinds is the kinds raised so far, in order.
func (a *Alerts) Kinds() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.kinds)
}
