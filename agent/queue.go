package agent

import (
	"context"
	"errors"
	"sync"
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

// tpmQueue is the one queue in front of the TPM. Each workload has its own
// FIFO and the worker serves the workloads round-robin, so one busy workload
// cannot starve another. A job whose deadline passed is refused, not run.
type tpmQueue struct {
	mu      sync.Mutex
	wake    chan struct{}
	fifos   map[string][]*job
	ring    []string // workloads with waiting jobs, in service order
	perLoad int
	depth   int
	closed  bool
}

type job struct {
	ctx  context.Context
	fn   func() error
	done chan error
}

func newTPMQueue(perWorkload int) *tpmQueue {
	return &tpmQueue{wake: make(chan struct{}, 1), fifos: map[string][]*job{}, perLoad: perWorkload}
}

// Do runs fn on the TPM worker for workload, waiting at most until ctx ends.
func (q *tpmQueue) Do(ctx context.Context, workload string, fn func() error) error {
	j := &job{ctx: ctx, fn: fn, done: make(chan error, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return errors.New("agent: shutting down")
	}
	if len(q.fifos[workload]) >= q.perLoad {
		q.mu.Unlock()
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
	return <-j.done // the worker answers every job, expired ones with ErrDeadline
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

// run serves jobs until ctx ends, then refuses what is left.
func (q *tpmQueue) run(ctx context.Context) {
	for {
		j := q.next()
		if j == nil {
			select {
			case <-ctx.Done():
				q.shutdown()
				return
			case <-q.wake:
				continue
			}
		}
		if j.ctx.Err() != nil {
			j.done <- ErrDeadline
			continue
		}
		j.done <- j.fn()
	}
}

func (q *tpmQueue) shutdown() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	for j := q.next(); j != nil; j = q.next() {
		j.done <- errors.New("agent: shutting down")
	}
}
