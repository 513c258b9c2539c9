// Package eventually waits, in tests, for something that becomes true
// asynchronously: a condition is polled until it holds or a timeout passes,
// instead of sleeping a fixed time and hoping (tailscale's tstest.WaitFor).
//
// A condition is a func() error: nil means it holds, an error says what is
// still missing, and the last such error is what a timeout reports. A
// condition that can no longer become true returns Stop(err), which ends
// the wait at once.
package eventually

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Polling backs off from firstPoll to maxPoll: a condition that holds soon
// is seen soon, and a slow one is not polled in a busy loop.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 100 * time.Millisecond
)

// ErrTimeout is wrapped by the error Wait returns when cond did not hold
// within the timeout.
var ErrTimeout = errors.New("eventually: timed out")

// Until calls cond until it returns nil. If it has not within timeout, or
// returns Stop(err), Until fails t with cond's last error. cond runs on the
// test's goroutine, so it may call t.Fatal itself.
func Until(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Wait(timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// Wait calls cond until it returns nil, and returns nil then. After timeout
// it returns an error wrapping ErrTimeout and cond's last error; on
// Stop(err) it returns err at once. It is Until for code that reports
// errors instead of failing a test (swtpmtest's Start).
func Wait(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	poll := firstPoll
	for tries := 1; ; tries++ {
		err := cond()
		if err == nil {
			return nil
		}
		var s stopError
		if errors.As(err, &s) {
			return s.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v (%d tries): %w", ErrTimeout, timeout, tries, err)
		}
		time.Sleep(min(poll, time.Until(deadline)+time.Millisecond))
		poll = min(2*poll, maxPoll)
	}
}

// Stop wraps err (not nil) so that Until and Wait stop waiting and report
// err: the condition can no longer become true (the process it waits for
// exited).
func Stop(err error) error { return stopError{err} }

type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }
func (s stopError) Unwrap() error { return s.err }
