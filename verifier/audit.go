package verifier

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// auditWait bounds how long an operator action, an enrollment or a
// registration waits for its audit event to be appended.
const auditWait = 2 * time.Second

// recordNow queues an event that whoever asked must not hear "done" before
// it is appended: an operator action, an enrollment, a registration. They
// are rare; connect decisions, which are not, use record and do not wait.
// Within a request handler the wait (at most auditWait) happens after the
// handler returns, once its worker slot is free, so a slow JetStream does
// not hold the slots other requests need; elsewhere it happens here.
func (v *Verifier) recordNow(ctx context.Context, e audit.Event) {
	v.audit.Record(e)
	if w, ok := ctx.Value(auditWaitKey{}).(*atomic.Bool); ok {
		w.Store(true)
		return
	}
	v.waitAudit("kind", e.Kind)
}

// auditWaitKey marks a request's context: the handler waits for the audit
// trail before it answers if recordNow was called.
type auditWaitKey struct{}

// waitAudit waits until everything recorded so far is appended, at most
// auditWait in all. At most Workers wait at once (each wait queues a flush
// marker, and a wait that times out leaves it queued): while JetStream is
// stalled, requests cannot fill the audit queue with markers.
func (v *Verifier) waitAudit(what, name string) {
	timer := time.NewTimer(auditWait)
	defer timer.Stop()
	deadline := time.Now().Add(auditWait)
	select {
	case v.auditWaiters <- struct{}{}:
		defer func() { <-v.auditWaiters }()
		if left := time.Until(deadline); left > 0 && v.audit.FlushWithin(left) {
			return
		}
	case <-timer.C:
	}
	v.log.Warn("audit event not appended within "+auditWait.String()+" (if it is still queued, it is appended when JetStream answers; a failed append is logged)", what, name)
}
