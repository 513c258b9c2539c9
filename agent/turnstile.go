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
// workloads, as the queue's jobs do, and whether a workload has room counts
// its own jobs and turns and at most one a round of each other workload's:
// another workload's flood of signature requests or of turns costs it one
// job's time a round, not every turn. A workload whose turns expired unused
// gets one at a time until it has used as many (turnstile.wasted).

// turnLead is what a handshake may take between its turn and its signature
// request (dial, TLS, the server's INFO): the budget a turn is given against
// is NATSSignBudget less this.
const turnLead = 500 * time.Millisecond

// turnExpiry is how long a turn given counts as coming. nats.go first waits
// for the old connection's goroutines, so a request may come well after
// turnLead; a caller that does not come at all (its server was down) frees
// its place after this.
const turnExpiry = 2 * time.Second

// maxWasted bounds how many unused turns a workload pays back, one used
// turn each, before it may hold more than one turn again: a workload whose
// server was down a long while is not held to one turn at a time for long.
// One turn at a time still keeps the TPM busy (the next is given as the
// last one's request arrives, while its job runs).
const maxWasted = 16

// turnPoll is how often waiters look again whether a turn freed up by
// itself (a turn given expired, the job in flight ran on).
const turnPoll = 50 * time.Millisecond

// turnstile is guarded by its queue's mu.
type turnstile struct {
	waiters map[string][]chan struct{}
	ring    []string               // workloads with waiters, in release order
	given   map[string][]time.Time // per workload, when each turn given stops counting
	// wasted counts, per workload, turns that expired unused and are not
	// yet paid back by turns used (at most maxWasted). While it is not
	// zero the workload holds at most one turn: turns taken and never used
	// hold the TPM's room for turnExpiry at no TPM cost to their taker.
	wasted map[string]int
}

func newTurnstile() turnstile {
	return turnstile{waiters: map[string][]chan struct{}{}, given: map[string][]time.Time{}, wasted: map[string]int{}}
}

// Turn waits until a signature request of workload sent now is expected to
// finish within api.NATSSignBudget, or ctx ends.
func (q *tpmQueue) Turn(ctx context.Context, workload string) error {
	ch := make(chan struct{})
	if err := ctx.Err(); err != nil { // a past deadline: nobody will use it
		return turnRefused(err)
	}
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
			if !q.turns.remove(workload, ch) { // given as ctx ended: give it back
				q.turns.ungive(workload)
				q.releaseTurns()
			}
			q.mu.Unlock()
			return turnRefused(ctx.Err())
		case <-tick.C:
			q.mu.Lock()
			q.releaseTurns()
			q.mu.Unlock()
		}
	}
}

// turnRefused answers a turn request whose context ended before a turn:
// the line moves, so it may ask again at once.
func turnRefused(err error) error {
	return &RetryError{Err: fmt.Errorf("%w: no turn for a NATS handshake yet: %w", ErrDeadline, err), After: minRetryAfter}
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

// releaseTurns gives turns, round-robin, to each workload for which a
// signature request sent now is expected to finish within its budget.
// Before the first job is measured it lets one handshake through at a
// time. q.mu is held.
func (q *tpmQueue) releaseTurns() {
	t := &q.turns
	now := time.Now()
	t.expire(now)
	for {
		// The first in release order with room: a workload held back by
		// its own backlog does not hold back the others.
		i := slices.IndexFunc(t.ring, q.roomForTurn)
		if i < 0 {
			return
		}
		w := t.ring[i]
		t.ring = slices.Delete(t.ring, i, i+1)
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

// roomForTurn says whether workload w may have a turn: the job in flight,
// then the jobs that would run before w's new one (w's own waiting and
// promised, and of each other workload at most one a round, as the
// round-robin serves them, waiting or promised alike) and w's job itself
// would all be signed within the budget, each counted at its mean plus two
// deviations and the last at its tail (capped at the budget): a turn given
// is a promise, and a line of jobs that runs long makes its last ones miss
// the budget. A queue with nothing waiting, promised or running always has
// room, whatever the estimate: only signatures move the estimate back after
// a stall. The TPM stays busy all the same: a turn is given as soon as a
// job ends or a turn's request arrives. q.mu is held.
func (q *tpmQueue) roomForTurn(w string) bool {
	t := &q.turns
	if t.wasted[w] > 0 && len(t.given[w]) > 0 {
		return false
	}
	if q.depth == 0 && len(t.given) == 0 && q.running.IsZero() {
		return true
	}
	if !q.est.known() {
		return false
	}
	k := len(q.fifos[w]) + len(t.given[w])
	ahead := k
	for o, f := range q.fifos {
		if o != w {
			ahead += min(len(f)+len(t.given[o]), k+1)
		}
	}
	for o, g := range t.given {
		if _, queued := q.fifos[o]; o != w && !queued {
			ahead += min(len(g), k+1)
		}
	}
	budget := api.NATSSignBudget - turnLead
	wait := q.inFlightLeft() + time.Duration(ahead)*q.est.cautious()
	return wait+min(q.est.tail(), budget) <= budget
}

// arrived counts an admitted NATS signature request of w against the
// oldest turn w was given, and pays back one of w's wasted turns with it.
// q.mu is held.
func (t *turnstile) arrived(w string) {
	g := t.given[w]
	if len(g) == 0 { // a handshake without a turn (an agent's first connect)
		return
	}
	if len(g) > 1 {
		t.given[w] = g[1:]
	} else {
		delete(t.given, w)
	}
	if t.wasted[w] > 1 {
		t.wasted[w]--
	} else {
		delete(t.wasted, w)
	}
}

// ungive takes back a turn given to a request whose context ended as it
// was given: nobody will use it, and it was not wasted. q.mu is held.
func (t *turnstile) ungive(w string) {
	if g := t.given[w]; len(g) > 1 {
		t.given[w] = g[:len(g)-1]
	} else {
		delete(t.given, w)
	}
}

// expire forgets turns given whose callers did not come in time, and
// counts them against their workload (wasted).
func (t *turnstile) expire(now time.Time) {
	for w, g := range t.given {
		i := 0
		for i < len(g) && g[i].Before(now) {
			i++
		}
		if i > 0 {
			t.wasted[w] = min(t.wasted[w]+i, maxWasted)
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
