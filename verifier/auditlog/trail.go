package auditlog

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Trail is the audit trail as the verifier's services use it: Record queues
// an event (connect decisions: nobody waits), RecordNow an event whoever
// asked must not hear "done" before it is appended (an operator action, an
// enrollment, a registration).
type Trail struct {
	*Log
	// waiters bounds the requests waiting for the trail at once: each wait
	// queues a flush marker, and a wait that times out leaves it queued, so
	// while JetStream is stalled requests cannot fill the queue with them.
	waiters chan struct{}
	log     *slog.Logger
}

// WaitLimit bounds how long an action waits for its event to be appended.
const WaitLimit = 2 * time.Second

// NewTrail wraps the writer for services; at most maxWaiters wait at once.
func NewTrail(l *Log, maxWaiters int, log *slog.Logger) *Trail {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Trail{Log: l, waiters: make(chan struct{}, max(maxWaiters, 1)), log: log}
}

// deferKey marks a request's context whose handler waits for the trail
// after it returns (DeferWait).
type deferKey struct{}

// DeferWait marks ctx as a request's: RecordNow within it does not wait
// itself but sets the flag, and the request's handler calls Wait once it
// has returned and given back its worker slot, so that a slow JetStream does
// not hold the slots other requests need.
func DeferWait(ctx context.Context) (context.Context, *atomic.Bool) {
	var flag atomic.Bool
	return context.WithValue(ctx, deferKey{}, &flag), &flag
}

// RecordNow queues e and waits until it is appended (at most WaitLimit), or,
// within a request marked by DeferWait, leaves the wait to its handler.
func (t *Trail) RecordNow(ctx context.Context, e audit.Event) {
	t.Record(e)
	if w, ok := ctx.Value(deferKey{}).(*atomic.Bool); ok {
		w.Store(true)
		return
	}
	t.Wait("kind", e.Kind)
}

// Wait waits until everything recorded so far is appended, at most WaitLimit in
// all; what and name say in the log what waited in vain.
func (t *Trail) Wait(what, name string) {
	timer := time.NewTimer(WaitLimit)
	defer timer.Stop()
	deadline := time.Now().Add(WaitLimit)
	select {
	case t.waiters <- struct{}{}:
		defer func() { <-t.waiters }()
		if left := time.Until(deadline); left > 0 && t.FlushWithin(left) {
			return
		}
	case <-timer.C:
	}
	t.log.Warn("audit event not appended within "+WaitLimit.String()+" (if it is still queued, it is appended when JetStream answers; a failed append is logged)", what, name)
}
