package record

import (
	"errors"
	"fmt"
)

// ErrCounterRegression is a signature counter that is not new: a repeat, or
// a value far below the highest accepted (a restored snapshot or a cloned
// key store). A tamper signal.
var ErrCounterRegression = errors.New("signature counter did not increase")

// CounterWindow is how far below the highest accepted counter a value may
// still be accepted, once. Connections of one workload are signed in counter
// order but their callouts arrive, and are decided, in any order (up to the
// number in flight); the window takes them, while a repeated value or one far
// below (a restored snapshot) is refused. Replay of a whole assertion is
// already impossible: each is bound to its connection's nonce.
const CounterWindow = 256

// Window is a bitmap of the CounterWindow values below the highest accepted
// counter: bit i set means Counter-1-i was accepted (IPsec's anti-replay
// window, RFC 4303 §3.4.3).
type Window [CounterWindow / 64]uint64

func (w *Window) get(i uint32) bool { return w[i/64]&(1<<(i%64)) != 0 }
func (w *Window) set(i uint32)      { w[i/64] |= 1 << (i % 64) }

// shift moves every bit n places up (older), dropping what falls off.
func (w *Window) shift(n uint32) {
	if n >= CounterWindow {
		*w = Window{}
		return
	}
	var out Window
	for i := uint32(0); i+n < CounterWindow; i++ {
		if w.get(i) {
			out.set(i + n)
		}
	}
	*w = out
}

// AcceptCounter records counter n if it is new: above the highest accepted,
// or within the window below it and not seen yet.
//
// A browser credential (Browser) whose counter is 0 and stays 0 is
// accepted: synced passkeys always report 0 (WebAuthn §6.1.1 lets an
// authenticator not implement a counter), and a session key has none. Its
// assertions are still bound to their connection's nonce; a counter that
// once was above 0 and goes back still is a regression.
func (c *Credential) AcceptCounter(n uint32) error {
	switch {
	case n == 0 && c.Counter == 0 && c.Browser():
		return nil
	case n > c.Counter:
		d := n - c.Counter
		c.Seen.shift(d)
		if d <= CounterWindow {
			c.Seen.set(d - 1) // the old maximum moves into the window
		}
		c.Counter = n
		return nil
	case n == c.Counter:
		return fmt.Errorf("%w: counter %d equals the last accepted", ErrCounterRegression, n)
	case c.Counter-n > CounterWindow:
		return fmt.Errorf("%w: counter %d is far below the last accepted %d", ErrCounterRegression, n, c.Counter)
	}
	i := c.Counter - n - 1
	if c.Seen.get(i) {
		return fmt.Errorf("%w: counter %d was already used", ErrCounterRegression, n)
	}
	c.Seen.set(i)
	return nil
}
