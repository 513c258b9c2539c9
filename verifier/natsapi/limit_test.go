package natsapi

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// P-8: one session's requests draw from its own bucket only. The bucket is
// keyed by the scope the request's subject names (which the server lets a
// session publish to only for its own scope), not by anything the client
// states, so a session that exhausts its burst leaves another's whole.
func TestLimiterPerCaller(t *testing.T) {
	l := NewLimiter(time.Hour, 3)
	h := l.Wrap(func(context.Context, []byte) (any, error) { return "ok", nil })
	call := func(s api.Scope) error {
		ctx := context.WithValue(t.Context(), subjectKey{}, s.Subject("register.begin"))
		_, err := h(ctx, nil)
		return err
	}
	a, b := api.HostScope("h-aaaa"), api.HostScope("h-bbbb")
	for i := range 3 {
		if err := call(a); err != nil {
			t.Fatalf("request %d of a's burst: %v", i, err)
		}
	}
	if err := call(a); !errors.Is(err, api.ErrRateLimited) {
		t.Fatalf("a past its burst: %v, want ErrRateLimited", err)
	}
	for i := range 3 {
		if err := call(b); err != nil {
			t.Fatalf("request %d of b's burst after a exhausted its own: %v", i, err)
		}
	}
}
