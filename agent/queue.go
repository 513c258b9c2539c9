package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Queue errors.
var (
	// ErrBusy: the caller's workload already has as many requests waiting
	// as it may.
	ErrBusy = errors.New("agent: too many requests waiting for the TPM; retry later")
	// ErrDeadline: the request's deadline passed before the TPM was free,
	// or too little of it was left for a signature to finish in time; it
	// is refused rather than signed late.
	ErrDeadline = errors.New("agent: deadline passed while waiting for the TPM")
	// ErrOverloaded: the TPM cannot sign before the request's deadline, by
	// what the jobs ahead of it are expected to take; it is refused at once.
	ErrOverloaded = errors.New("agent: the TPM cannot sign before the request's deadline; retry later")
)

// RetryError is a refusal that says when the TPM is expected to have room
// for the caller. Use errors.As; it wraps ErrBusy, ErrDeadline or
// ErrOverloaded.
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("%v (retry in %v)", e.Err, e.After.Round(time.Millisecond))
}

func (e *RetryError) Unwrap() error { return e.Err }

// minRetryAfter is the shortest wait a refusal names: less would only bring
// the caller back to find the same queue.
const minRetryAfter = 100 * time.Millisecond

// errShuttingDown answers jobs the queue will not run because it is closing.
var errShuttingDown = errors.New("agent: shutting down")

// tpmQueue is the one queue in front of the TPM. Each workload has its own
// FIFO and the worker serves the workloads round-robin, so one busy workload
// cannot starve another. The queue measures how long a job takes and never
// spends TPM time on a request nobody will wait for: it refuses at once a
// request whose deadline the jobs ahead of it would pass (ErrOverloaded),
// and at the head of the line one whose deadline passed or is too close for
// a signature to finish (ErrDeadline). In front of it is a turnstile (see
// Turn) that paces NATS handshakes to what the TPM can sign in time.
//
// The queue owns its worker: start launches it and close stops it and waits
// for it, so that nothing runs on the TPM once close returns and the TPM can
// be closed after it.
type tpmQueue struct {
	mu      sync.Mutex
	wake    chan struct{}
	stop    chan struct{} // closed by close: the worker returns
	done    chan struct{} // closed by the worker as it returns
	fifos   map[string][]*job
	ring    []string // workloads with waiting jobs, in service order
	perLoad int
	depth   int
	started bool
	closed  bool
	est     signEstimate
	running time.Time // when the job in flight started; zero while idle
	turns   turnstile

	stats queueStats
}

// queueStats counts what the queue refused and what it ran too late, for
// the agent's metrics: TPM time spent on a request nobody waits for any more
// is the waste a slow TPM cannot afford.
type queueStats struct {
	busy       atomic.Uint64 // refused: the workload had too many waiting
	deadline   atomic.Uint64 // refused at the head: deadline passed or too close
	overloaded atomic.Uint64 // refused on arrival: the queue ahead is too long
	late       atomic.Uint64 // ran, and finished after the request's deadline
}

type job struct {
	ctx      context.Context
	workload string
	fn       func() error
	turn     bool // a NATS handshake's signature: it uses a turn given
	done     chan error
}

func newTPMQueue(perWorkload int) *tpmQueue {
	return &tpmQueue{
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		fifos: map[string][]*job{}, perLoad: perWorkload, turns: newTurnstile(),
	}
}

// start launches the worker; close stops it. It does nothing on a queue
// already started or closed.
func (q *tpmQueue) start() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started || q.closed {
		return
	}
	q.started = true
	go q.run()
}

// Do runs fn on the TPM worker for workload, waiting at most until ctx ends.
func (q *tpmQueue) Do(ctx context.Context, workload string, fn func() error) error {
	return q.do(&job{ctx: ctx, workload: workload, fn: fn, done: make(chan error, 1)})
}

// DoNATS is Do for the signature over a NATS handshake's nonce: once
// admitted, it uses the oldest turn its workload was given (see Turn).
func (q *tpmQueue) DoNATS(ctx context.Context, workload string, fn func() error) error {
	return q.do(&job{ctx: ctx, workload: workload, fn: fn, done: make(chan error, 1), turn: true})
}

func (q *tpmQueue) do(j *job) error {
	if err := q.enqueue(j); err != nil {
		return err
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return <-j.done // the worker or close answers every job, expired ones with ErrDeadline
}

// enqueue puts j at the back of its workload's FIFO, unless the queue
// refuses it.
func (q *tpmQueue) enqueue(j *job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errShuttingDown
	}
	w := j.workload
	if len(q.fifos[w]) >= q.perLoad {
		q.stats.busy.Add(1)
		return &RetryError{Err: ErrBusy, After: max(minRetryAfter, q.waitFor(w))}
	}
	if err := q.admit(j); err != nil {
		q.stats.overloaded.Add(1)
		return err
	}
	if len(q.fifos[w]) == 0 {
		q.ring = append(q.ring, w)
	}
	q.fifos[w] = append(q.fifos[w], j)
	q.depth++
	if j.turn {
		// Its turn becomes this job: counted once, as a job. A refused
		// request or an assertion uses none. A workload held to one turn
		// (it wasted some) may have its next now.
		q.turns.arrived(w)
		q.releaseTurns()
	}
	return nil
}

// admit refuses a job whose deadline the jobs ahead of it would pass: it
// would only wait for ErrDeadline, or worse be signed when nobody waits. The
// refusal says when a request with the same time to live would fit. A job
// with nothing ahead of it is always admitted, and so is every job before
// the first is measured: refusals measure nothing, so an estimate blown up
// by one stalled job would otherwise refuse every request for good. q.mu is
// held.
func (q *tpmQueue) admit(j *job) error {
	dl, ok := j.ctx.Deadline()
	if !ok || !q.est.known() {
		return nil
	}
	wait := q.waitFor(j.workload)
	if wait == 0 {
		return nil
	}
	need := wait + q.est.tail()
	if left := time.Until(dl); need > left {
		return &RetryError{Err: ErrOverloaded, After: max(minRetryAfter, need-left)}
	}
	return nil
}

// waitFor is how long a new job of workload w is expected to wait before
// the TPM starts it: the job in flight, then w's own jobs, and from each
// other workload at most one job per round ahead of it (round-robin), so
// that another workload's flood adds at most one job a round to w's wait.
// q.mu is held.
func (q *tpmQueue) waitFor(w string) time.Duration {
	k := len(q.fifos[w])
	ahead := k
	for o, f := range q.fifos {
		if o != w {
			ahead += min(len(f), k+1)
		}
	}
	return q.inFlightLeft() + time.Duration(ahead)*q.est.typical()
}

// inFlightLeft is what the job in flight is expected to take still. q.mu is
// held.
func (q *tpmQueue) inFlightLeft() time.Duration {
	if q.running.IsZero() {
		return 0
	}
	return max(0, q.est.typical()-time.Since(q.running))
}

// TurnsWaiting is the number of handshakes waiting for a turn.
func (q *tpmQueue) TurnsWaiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.turns.waiting()
}

// Estimate is how long the queue expects a job to take.
func (q *tpmQueue) Estimate() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.est.typical()
}

// Depth is the number of jobs waiting.
func (q *tpmQueue) Depth() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.depth
}

// next takes the head job of the next workload in the ring.
func (q *tpmQueue) next() *job {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.ring) == 0 {
		return nil
	}
	w := q.ring[0]
	q.ring = q.ring[1:]
	f := q.fifos[w]
	j := f[0]
	if len(f) > 1 {
		q.fifos[w] = f[1:]
		q.ring = append(q.ring, w) // back of the line
	} else {
		delete(q.fifos, w)
	}
	q.depth--
	return j
}

// run serves jobs until close. It looks for the stop signal before each job,
// so close waits for at most the job in flight, not for the whole backlog.
func (q *tpmQueue) run() {
	defer close(q.done)
	for {
		select {
		case <-q.stop:
			return
		default:
		}
		j := q.next()
		if j == nil {
			select {
			case <-q.stop:
				return
			case <-q.wake:
				continue
			}
		}
		if err := q.tooLate(j); err != nil {
			q.stats.deadline.Add(1)
			j.done <- err
			continue
		}
		j.done <- q.runJob(j)
	}
}

// tooLate refuses a job at the head of the line whose deadline passed, or
// is closer than a job may take while other jobs wait: started, it would
// likely finish when nobody waits for it, and the TPM has better to do. Run
// alone, it costs nobody, and its measurement keeps the estimate honest.
func (q *tpmQueue) tooLate(j *job) error {
	if j.ctx.Err() != nil {
		return ErrDeadline
	}
	dl, ok := j.ctx.Deadline()
	q.mu.Lock()
	defer q.mu.Unlock()
	if ok && q.est.known() && q.depth > 0 && time.Until(dl) < q.est.tail() {
		return &RetryError{Err: ErrDeadline, After: max(minRetryAfter, q.waitFor(j.workload))}
	}
	return nil
}

// runJob runs j on the TPM, measures it, and lets the turnstile release
// the next handshake.
func (q *tpmQueue) runJob(j *job) error {
	start := time.Now()
	q.mu.Lock()
	q.running = start
	q.mu.Unlock()
	err := j.fn()
	took := time.Since(start)
	q.mu.Lock()
	q.running = time.Time{}
	if err == nil { // a failure may be fast or slow: it says nothing of the TPM's pace
		q.est.observe(took)
	}
	q.releaseTurns()
	q.mu.Unlock()
	if j.ctx.Err() != nil {
		q.stats.late.Add(1)
	}
	return err
}

// close refuses new jobs, stops the worker, waits for the job it is running,
// and answers every job still waiting with errShuttingDown. It is idempotent
// and safe on a queue that was never started.
func (q *tpmQueue) close() {
	q.mu.Lock()
	first := !q.closed
	q.closed = true
	started := q.started
	q.mu.Unlock()
	if first {
		close(q.stop)
	}
	if started {
		<-q.done
	}
	for j := q.next(); j != nil; j = q.next() {
		j.done <- errShuttingDown
	}
	q.mu.Lock()
	q.turns.closeAll()
	q.mu.Unlock()
}
