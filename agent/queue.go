package agent

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Queue errors.
var (
	// ErrBusy: the caller's workload already has as many requests waiting
	// as it may.
	ErrBusy = errors.New("agent: too many requests waiting for the TPM; retry later")
	// ErrDeadline: the request's deadline passed before the TPM was free; it
	// is refused rather than signed late.
	ErrDeadline = errors.New("agent: deadline passed while waiting for the TPM")
)

// errShuttingDown answers jobs the queue will not run because it is closing.
var errShuttingDown = errors.New("agent: shutting down")

// tpmQueue is the one queue in front of the TPM. Each workload has its own
// FIFO and the worker serves the workloads round-robin, so one busy workload
// cannot starve another. A job whose deadline passed is refused, not run.
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

	stats queueStats
}

// queueStats counts what the queue refused and what it ran too late, for
// the agent's metrics: TPM time spent on a request nobody waits for any more
// is the waste a slow TPM cannot afford.
type queueStats struct {
	busy     atomic.Uint64 // refused: the workload had too many waiting
	deadline atomic.Uint64 // refused: the deadline passed while waiting
	late     atomic.Uint64 // ran, and finished after the request's deadline
}

type job struct {
	ctx  context.Context
	fn   func() error
	done chan error
}

func newTPMQueue(perWorkload int) *tpmQueue {
	return &tpmQueue{
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		fifos: map[string][]*job{}, perLoad: perWorkload,
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
	j := &job{ctx: ctx, fn: fn, done: make(chan error, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errShuttingDown
	}
	if len(q.fifos[workload]) >= q.perLoad {
		q.mu.Unlock()
		q.stats.busy.Add(1)
		return ErrBusy
	}
	if len(q.fifos[workload]) == 0 {
		q.ring = append(q.ring, workload)
	}
	q.fifos[workload] = append(q.fifos[workload], j)
	q.depth++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return <-j.done // the worker or close answers every job, expired ones with ErrDeadline
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
		if j.ctx.Err() != nil {
			q.stats.deadline.Add(1)
			j.done <- ErrDeadline
			continue
		}
		err := j.fn()
		if j.ctx.Err() != nil {
			q.stats.late.Add(1)
		}
		j.done <- err
	}
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
}
