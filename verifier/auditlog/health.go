package auditlog

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// ErrUnavailable: the trail cannot take events (the stream is full, or
// JetStream has refused appends for longer than Config.FailClosedAfter).
// The connect path grants nothing then (fail closed).
var ErrUnavailable = errors.New("audit trail unavailable")

// health is the writer's append failures: since when appends fail, why,
// and whether the stream said it is full. The writer sets it, any
// goroutine reads it.
type health struct {
	since    atomic.Int64 // unix nanoseconds of the first failure since the last success; 0: appending
	full     atomic.Bool  // the last failure was the stream's limit
	jsFull   atomic.Bool  // the last failure was JetStream's store (store.Full)
	failures atomic.Uint64
	dropped  atomic.Uint64 // events Record gave up on (queue full while failing)
	alerted  atomic.Bool   // this episode's alert is raised

	mu      sync.Mutex
	lastErr string
	warned  time.Time // the last "dropping events" warning
}

// failed notes an append failure; it reports whether appends had been
// succeeding until now (a new episode: worth an alert).
func (h *health) failed(err error) bool {
	h.failures.Add(1)
	h.full.Store(streamFull(err))
	h.jsFull.Store(store.Full(err))
	h.mu.Lock()
	h.lastErr = err.Error()
	h.mu.Unlock()
	return h.since.CompareAndSwap(0, time.Now().UnixNano())
}

// succeeded notes an append; it reports whether appends had been failing.
func (h *health) succeeded() bool {
	h.full.Store(false)
	h.jsFull.Store(false)
	h.alerted.Store(false)
	return h.since.Swap(0) != 0
}

// shouldAlert decides, after a failure, whether to raise this episode's
// alert now: once an episode, at once unless the failure is the
// connection's (reconnect: the server restarted with the append in flight,
// its ack lost, which the retry mends), then only when the episode has
// lasted grace. Seen without it: a tamper signal at every server restart
// that caught an append on the wire.
func (h *health) shouldAlert(reconnect bool, grace time.Duration) bool {
	if h.alerted.Load() {
		return false
	}
	if since := h.since.Load(); reconnect && since != 0 && time.Since(time.Unix(0, since)) < grace {
		return false
	}
	return h.alerted.CompareAndSwap(false, true)
}

func (h *health) failing() bool { return h.since.Load() != 0 }

// streamFull reports whether JetStream refused an append for the stream's
// limits (DiscardNew: "maximum bytes exceeded", "maximum messages
// exceeded"), which only an operator ends.
func streamFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return strings.Contains(apiErr.Description, "maximum bytes exceeded") ||
		strings.Contains(apiErr.Description, "maximum messages exceeded")
}

// Unavailable returns nil while the trail takes events, or an error wrapping
// ErrUnavailable that says why not: the stream is full, JetStream's store is
// full (also wrapping store.ErrFull), or appends have failed for longer than
// Config.FailClosedAfter. The connect path refuses grants then: a grant must
// not outrun its record. A shorter failure (a server restart, a leader
// election) only queues events, as before.
//
// The reason does not change from one call to the next while the cause
// stays: the connect path groups repeated denials by their reason.
func (a *Log) Unavailable() error {
	if a == nil {
		return nil
	}
	since := a.health.since.Load()
	if since == 0 {
		return nil
	}
	a.health.mu.Lock()
	last := a.health.lastErr
	a.health.mu.Unlock()
	failedFor := time.Since(time.Unix(0, since)).Round(time.Millisecond)
	switch {
	case a.health.full.Load():
		return fmt.Errorf("%w: the audit stream is full (%s): export the trail and raise its limit", ErrUnavailable, last)
	case a.health.jsFull.Load():
		// Only an operator makes room, as for a full stream: no grant
		// waits for FailClosedAfter.
		return fmt.Errorf("%w: %w (%s)", ErrUnavailable, store.ErrFull, last)
	case failedFor >= a.cfg.FailClosedAfter:
		return fmt.Errorf("%w: appends have failed for more than %s (%s)", ErrUnavailable, a.cfg.FailClosedAfter, last)
	}
	return nil
}

// AppendFailures is how many appends have failed (each retry counts).
func (a *Log) AppendFailures() uint64 { return a.health.failures.Load() }

// Dropped is how many events Record gave up on because the queue was full
// while appends were failing.
func (a *Log) Dropped() uint64 { return a.health.dropped.Load() }

// Failing reports whether appends are failing now.
func (a *Log) Failing() bool { return a.health.failing() }

// Alerting reports whether appends are failing for more than a reconnect:
// the episode's alert is raised (another cause, events dropped, or past
// FailClosedAfter).
func (a *Log) Alerting() bool { return a.health.failing() && a.health.alerted.Load() }

// Record queues an event. When the queue is full it waits while the writer
// is appending (backpressure), but not while appends fail: then the event
// is dropped and counted (Dropped), so that a stream that refuses appends
// cannot stall every decision that records one. Those decisions are
// refusals: while appends fail, Unavailable refuses grants.
func (a *Log) Record(e audit.Event) {
	if a == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	it := &item{ev: e}
	select {
	case a.ch <- it:
		return
	case <-a.done:
		return
	default:
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if a.health.failing() {
			a.dropEvent(e)
			return
		}
		select {
		case a.ch <- it:
			return
		case <-a.done:
			return
		case <-tick.C:
		}
	}
}

// dropEvent counts an event Record gave up on and says so, at most once a
// minute.
func (a *Log) dropEvent(e audit.Event) {
	n := a.health.dropped.Add(1)
	a.health.mu.Lock()
	warn := time.Since(a.health.warned) >= time.Minute
	if warn {
		a.health.warned = time.Now()
	}
	a.health.mu.Unlock()
	if warn {
		a.log.Error("audit: queue full while appends fail; dropping events", "kind", e.Kind, "dropped", n)
	}
	// Events lost: the episode's alert now, whatever its cause (a restart
	// within FailClosedAfter would otherwise raise none).
	if a.health.alerted.CompareAndSwap(false, true) {
		go a.raise(AlertAppendFailing, audit.Event{Reason: fmt.Sprintf("audit appends fail and the queue is full: events dropped (%d so far)", n)})
	}
}

// retryWait is how long the writer waits before its n-th retry of a failed
// append. A full stream or JetStream store (which only an operator ends)
// is asked at most every 2 s; any other failure — most often a stream with
// no leader while Raft elects one, which answers at once — is retried
// within 250 ms, so the trail takes events again right after the election
// (the fault campaign measured up to 1.6 s lost to a doubling backoff).
func retryWait(n int, full bool) time.Duration {
	if full {
		return min(100*time.Millisecond<<min(n, 5), 2*time.Second)
	}
	return min(50*time.Millisecond<<min(n, 5), 250*time.Millisecond)
}
