package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// A NATS handshake has one chance: nats.go reports every handshake that
// fails to the workload (its asynchronous error callback), a refused
// signature included, and a signature that arrives after the server's
// authorization timeout is TPM time thrown away. So a workload asks for a
// turn before it dials (agent/client does, before each reconnect), and the
// turnstile lets handshakes through only as fast as the TPM can sign them
// within their budget (api.NATSSignBudget). Turns go round-robin between
// workloads, as the queue's jobs do: another uid's flood of turns costs a
// workload at most one turn a round.

// turnLead is what a handshake may take between its turn and its signature
// request (dial, TLS, the server's INFO): the budget a turn is given against
// is NATSSignBudget less this.
const turnLead = 500 * time.Millisecond

// turnExpiry is how long a turn given counts as coming. nats.go first waits
// for the old connection's goroutines, so a request may come well after
// turnLead; a caller that does not come at all (its server was down) frees
// its place after this.
const turnExpiry = 2 * time.Second

// turnPoll is how often waiters look again whether a turn freed up by
// itself (a turn given expired, the job in flight ran on).
const turnPoll = 50 * time.Millisecond

// turnstile is guarded by its queue's mu.
type turnstile struct {
	waiters map[string][]chan struct{}
	ring    []string               // workloads with waiters, in release order
	given   map[string][]time.Time // per workload, when each turn given stops counting
}

func newTurnstile() turnstile {
	return turnstile{waiters: map[string][]chan struct{}{}, given: map[string][]time.Time{}}
}

// Turn waits until a signature request of workload sent now is expected to
// finish within api.NATSSignBudget, or ctx ends.
func (q *tpmQueue) Turn(ctx context.Context, workload string) error {
	ch := make(chan struct{})
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errShuttingDown
	}
	if len(q.turns.waiters[workload]) >= q.perLoad {
		q.mu.Unlock()
		q.stats.busy.Add(1)
		return &RetryError{Err: ErrBusy, After: time.Second}
	}
	q.turns.add(workload, ch)
	q.releaseTurns()
	q.mu.Unlock()
	tick := time.NewTicker(turnPoll)
	defer tick.Stop()
	for {
		select {
		case <-ch:
			return q.afterTurn()
		case <-ctx.Done():
			q.mu.Lock()
			removed := q.turns.remove(workload, ch)
			q.mu.Unlock()
			if !removed { // given while ctx ended: take it
				return q.afterTurn()
			}
			// The line moves: ask again at once.
			return &RetryError{Err: fmt.Errorf("%w: no turn for a NATS handshake yet: %w", ErrDeadline, ctx.Err()), After: minRetryAfter}
		case <-tick.C:
			q.mu.Lock()
			q.releaseTurns()
			q.mu.Unlock()
		}
	}
}

// afterTurn tells a turn given from one the queue's close released.
func (q *tpmQueue) afterTurn() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errShuttingDown
	}
	return nil
}

// releaseTurns gives turns, round-robin, while a signature request sent now
// is expected to finish within its budget. Before the first job is
// measured it lets one handshake through at a time. q.mu is held.
func (q *tpmQueue) releaseTurns() {
	t := &q.turns
	now := time.Now()
	t.expire(now)
	for len(t.ring) > 0 && q.roomForTurn() {
		w := t.ring[0]
		t.ring = t.ring[1:]
		chs := t.waiters[w]
		close(chs[0])
		if len(chs) > 1 {
			t.waiters[w] = chs[1:]
			t.ring = append(t.ring, w)
		} else {
			delete(t.waiters, w)
		}
		t.given[w] = append(t.given[w], now.Add(turnExpiry))
	}
}

// roomForTurn: the jobs waiting, the turns given whose requests are on their
// way, and one more would all be signed within the budget, each job counted
// at its mean plus its deviation: a turn given is a promise, and a line of
// jobs that runs long makes its last ones miss the budget. The TPM stays
// busy all the same: a turn is given as soon as a job ends. q.mu is held.
func (q *tpmQueue) roomForTurn() bool {
	coming := q.depth
	for _, g := range q.turns.given {
		coming += len(g)
	}
	if !q.est.known() {
		return coming == 0 && q.running.IsZero()
	}
	wait := q.inFlightLeft() + time.Duration(coming)*q.est.cautious()
	return wait+q.est.tail() <= api.NATSSignBudget-turnLead
}

// arrived counts a signature request of w against the oldest turn w was
// given. q.mu is held.
func (t *turnstile) arrived(w string) {
	if g := t.given[w]; len(g) > 1 {
		t.given[w] = g[1:]
	} else {
		delete(t.given, w)
	}
}

// expire forgets turns given whose callers did not come in time.
func (t *turnstile) expire(now time.Time) {
	for w, g := range t.given {
		i := 0
		for i < len(g) && g[i].Before(now) {
			i++
		}
		if i == len(g) {
			delete(t.given, w)
		} else {
			t.given[w] = g[i:]
		}
	}
}

func (t *turnstile) add(w string, ch chan struct{}) {
	if len(t.waiters[w]) == 0 {
		t.ring = append(t.ring, w)
	}
	t.waiters[w] = append(t.waiters[w], ch)
}

// remove takes a waiter out; false if it was given its turn already.
func (t *turnstile) remove(w string, ch chan struct{}) bool {
	chs := t.waiters[w]
	i := slices.Index(chs, ch)
	if i < 0 {
		return false
	}
	chs = slices.Delete(chs, i, i+1)
	if len(chs) > 0 {
		t.waiters[w] = chs
		return true
	}
	delete(t.waiters, w)
	t.ring = slices.DeleteFunc(t.ring, func(x string) bool { return x == w })
	return true
}

// waiting is the number of handshakes waiting for a turn.
func (t *turnstile) waiting() int {
	n := 0
	for _, chs := range t.waiters {
		n += len(chs)
	}
	return n
}

// closeAll releases every waiter: the queue is closing.
func (t *turnstile) closeAll() {
	for w, chs := range t.waiters {
		for _, ch := range chs {
			close(ch)
		}
		delete(t.waiters, w)
	}
	t.ring = nil
}
