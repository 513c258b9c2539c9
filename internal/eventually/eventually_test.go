package eventually_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/internal/eventually"
)

var errNotYet = errors.New("not yet")

func TestWait(t *testing.T) {
	errGone := errors.New("gone")
	tests := []struct {
		name    string
		holdsAt int   // the try at which cond holds; 0: never
		stop    error // returned wrapped in Stop at the second try
		want    error
	}{
		{name: "atOnce", holdsAt: 1},
		{name: "afterTries", holdsAt: 4},
		{name: "never", want: eventually.ErrTimeout},
		{name: "stop", stop: errGone, want: errGone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tries := 0
			err := eventually.Wait(200*time.Millisecond, func() error {
				tries++
				switch {
				case tries == tc.holdsAt:
					return nil
				case tc.stop != nil && tries == 2:
					return eventually.Stop(tc.stop)
				}
				return errNotYet
			})
			if tc.want == nil {
				if err != nil || tries != tc.holdsAt {
					t.Fatalf("Wait = %v after %d tries, want nil after %d", err, tries, tc.holdsAt)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Wait = %v, want %v", err, tc.want)
			}
			if tc.stop != nil && tries != 2 {
				t.Fatalf("Wait went on for %d tries after Stop", tries)
			}
		})
	}
}

// A timeout names what was still missing: the condition's last error.
func TestWaitReportsLastError(t *testing.T) {
	n := 0
	err := eventually.Wait(50*time.Millisecond, func() error {
		n++
		if n < 3 {
			return errNotYet
		}
		return errors.New("still 2 of 3 events")
	})
	if !errors.Is(err, eventually.ErrTimeout) || !strings.Contains(err.Error(), "still 2 of 3 events") {
		t.Fatalf("Wait = %v, want a timeout naming the last error", err)
	}
}

func TestUntil(t *testing.T) {
	n := 0
	eventually.Until(t, time.Second, func() error {
		if n++; n < 3 {
			return errNotYet
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}
