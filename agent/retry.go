package agent

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
)

// transient says whether err may go away by itself: the verifier or its
// NATS server is not reachable yet, or its store is electing a leader.
// Refusals (a spent token, a revoked host, a TLS pin mismatch) are not.
func transient(err error) bool {
	var ve *VerifierError
	if errors.As(err, &ve) {
		return ve.Code == api.CodeUnavailable || ve.Code == api.CodeRateLimited
	}
	return errors.Is(err, nats.ErrNoServers) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// retryDelay is the wait before attempt n+1: 0.5 s doubling to 30 s.
func retryDelay(n int) time.Duration {
	return min(500*time.Millisecond<<min(n, 6), 30*time.Second)
}

// untilReachable runs f until it succeeds, fails for good, or ctx ends,
// saying at each transient failure what it waits for: an agent started
// before its verifier (or during a leader election) waits instead of
// exiting.
func (a *Agent) untilReachable(ctx context.Context, what string, f func(context.Context) error) error {
	for n := 0; ; n++ {
		err := f(ctx)
		if err == nil || !transient(err) || ctx.Err() != nil {
			return err
		}
		d := retryDelay(n)
		a.log.Warn("the verifier is not reachable yet; retrying", "step", what, "in", d, "error", err)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return err
		}
	}
}
