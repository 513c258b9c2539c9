package auditlog

import (
	"context"
	"errors"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// ErrClosed: the trail stopped before the event was appended.
var ErrClosed = errors.New("audit trail closed")

// RecordDurable queues e and waits until the message that holds it is
// stored, acknowledged by JetStream with the stream's replicas: what must
// not happen before its record exists (a connect's grant) waits for this.
// The writer appends everything queued at once (a group commit), so
// concurrent callers share one round trip. An error (the append failed,
// ctx ended, the trail closed) means the event may not be stored; it may
// still be appended later, so a caller that acts on the error records
// what it did instead.
func (a *Log) RecordDurable(ctx context.Context, e audit.Event) error {
	if a == nil {
		return ErrClosed
	}
	if err := a.Unavailable(); err != nil {
		return err
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	it := &item{ev: e, acked: make(chan error, 1)}
	select {
	case a.ch <- it:
	case <-a.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-it.acked:
		return err
	case <-a.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}
