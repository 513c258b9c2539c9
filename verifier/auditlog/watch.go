package auditlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Alerter raises tamper and trouble signals (alert.Publisher): published,
// counted, logged and audited.
type Alerter interface {
	Alert(kind string, e audit.Event)
}

// watchState is what Watch's goroutine and the writer share about alerts,
// the stream's usage and the checkpoint.
type watchState struct {
	mu       sync.Mutex
	alerter  Alerter
	pending  []pendingAlert // raised before an alerter was given
	seen     map[string]bool
	near     bool // the near-limit alert is raised (until usage falls back)
	written  audit.Checkpoint
	hasCP    bool
	stop     chan struct{}
	stopped  chan struct{}
	started  bool
	bytes    atomic.Uint64
	maxBytes atomic.Int64
}

type pendingAlert struct {
	kind string
	ev   audit.Event
}

func (w *watchState) init() {
	w.seen = map[string]bool{}
	w.stop, w.stopped = make(chan struct{}), make(chan struct{})
}

func (w *watchState) setWritten(cp audit.Checkpoint) {
	w.mu.Lock()
	w.written, w.hasCP = cp, true
	w.mu.Unlock()
}

func (w *watchState) lastWritten() (audit.Checkpoint, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written, w.hasCP
}

// raise hands an alert to the alerter, or keeps it until Watch gives one.
func (a *Log) raise(kind string, e audit.Event) {
	e.Actor = "verifier"
	a.watch.mu.Lock()
	al := a.watch.alerter
	if al == nil {
		a.watch.pending = append(a.watch.pending, pendingAlert{kind, e})
	}
	a.watch.mu.Unlock()
	if al != nil {
		al.Alert(kind, e)
	}
}

// noteTamper raises err (from a comparison with cp) as an alert, once for
// each checkpoint and kind.
func (a *Log) noteTamper(cp audit.Checkpoint, err error) {
	kind := AlertTruncated
	if errors.Is(err, audit.ErrRewritten) {
		kind = AlertRewritten
	} else if !errors.Is(err, audit.ErrTruncated) {
		a.log.Warn("audit: cannot compare the stream with the checkpoint", "error", err)
		return
	}
	key := fmt.Sprintf("%s/%d/%s", kind, cp.Seq, cp.Hash)
	a.watch.mu.Lock()
	seen := a.watch.seen[key]
	a.watch.seen[key] = true
	a.watch.mu.Unlock()
	if seen {
		return
	}
	a.log.Error("audit trail tampered with", "kind", kind, "error", err)
	a.raise(kind, audit.Event{Reason: err.Error()})
}

func (a *Log) noteInvalidCheckpoint(err error) {
	a.log.Error("audit checkpoint does not verify", "error", err)
	a.raise(AlertCheckpointInvalid, audit.Event{Reason: err.Error()})
}

// Watch gives the writer its alerter, raises what Open found, and starts
// looking at the stream every Config.WatchEvery: its usage (AlertNearLimit
// past Config.NearLimit of max bytes), its head against the checkpoint
// (AlertTruncated, AlertRewritten), and writing the checkpoint. Close stops
// it. Call it once.
func (a *Log) Watch(al Alerter) {
	a.watch.mu.Lock()
	a.watch.alerter = al
	pending := a.watch.pending
	a.watch.pending = nil
	start := !a.watch.started
	a.watch.started = true
	a.watch.mu.Unlock()
	for _, p := range pending {
		al.Alert(p.kind, p.ev)
	}
	if !start {
		return
	}
	go func() {
		defer close(a.watch.stopped)
		t := time.NewTicker(a.cfg.WatchEvery)
		defer t.Stop()
		for {
			a.watchOnce()
			select {
			case <-a.watch.stop:
				return
			case <-t.C:
			}
		}
	}()
}

// watchOnce looks at the stream once.
func (a *Log) watchOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := a.stream.Info(ctx)
	if err != nil {
		a.log.Warn("audit: stream info", "error", err)
		return
	}
	a.noteUsage(info.State.Bytes, info.Config.MaxBytes)
	if cp, ok := a.watch.lastWritten(); ok {
		if err := a.compare(ctx, cp); err != nil {
			a.noteTamper(cp, err)
		}
	}
	a.checkpoint()
}

// noteUsage records the stream's size and raises AlertNearLimit when it
// passes NearLimit of max bytes (once, until it falls back 5% below).
func (a *Log) noteUsage(bytes uint64, maxBytes int64) {
	a.watch.bytes.Store(bytes)
	a.watch.maxBytes.Store(maxBytes)
	if maxBytes <= 0 {
		return
	}
	share := float64(bytes) / float64(maxBytes)
	a.watch.mu.Lock()
	raise := share >= a.cfg.NearLimit && !a.watch.near
	switch {
	case raise:
		a.watch.near = true
	case share < a.cfg.NearLimit-0.05:
		a.watch.near = false
	}
	a.watch.mu.Unlock()
	if raise {
		reason := fmt.Sprintf("the audit stream holds %d of its %d bytes (%.0f%%): when full, connects are refused; export the trail and raise its limit",
			bytes, maxBytes, share*100)
		a.log.Warn("audit stream near its limit", "bytes", bytes, "max_bytes", maxBytes)
		a.raise(AlertNearLimit, audit.Event{Reason: reason})
	}
}

// Usage is the stream's size and its max bytes (0 until Watch first looked;
// max -1: no bound).
func (a *Log) Usage() (bytes uint64, maxBytes int64) {
	if a == nil {
		return 0, 0
	}
	return a.watch.bytes.Load(), a.watch.maxBytes.Load()
}

// checkpoint writes the writer's head to the checkpoint file when it moved
// since the last one.
func (a *Log) checkpoint() {
	if a.cfg.CheckpointFile == "" {
		return
	}
	head := a.durable.Load()
	if head == nil || head.Seq == 0 {
		return
	}
	if last, ok := a.watch.lastWritten(); ok && last.Seq == head.Seq && last.Hash == head.Hash {
		return
	}
	if err := a.writeCheckpoint(*head); err != nil {
		a.log.Error("audit checkpoint not written", "error", err)
	}
}

// stopWatch stops Watch's goroutine, if it runs, and waits for it.
func (a *Log) stopWatch() {
	a.watch.mu.Lock()
	started := a.watch.started
	a.watch.started = true // no Watch after Close
	a.watch.mu.Unlock()
	close(a.watch.stop)
	if started {
		<-a.watch.stopped
	}
}
