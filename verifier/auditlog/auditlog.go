// Package auditlog is the verifier's writer of the audit trail (see package
// audit for the record and its proof).
//
// Every enrollment, registration, connect decision,
// revocation, rotation and alert is an Event in a JetStream stream. Events
// are hash-chained (each names the hash of the one before), signed by the
// verifier's issuer key (the last event of each message: its hash covers the
// rest), and appended with expected-last-sequence, so that
// several verifiers keep one chain. Deny is the default result: an event is
// "allow" or "ok" only when the code that records it says so.
//
// A stream message holds one or more events, one JSON object per line: the
// writer appends whatever is queued in one message, because one JetStream
// round trip per event drained only ~110 events/s under load while connects
// ran at ~1,200/s. Pipelining single-event publishes instead would be unsafe
// with several writers: after a conflict, a later in-flight publish can land
// behind another verifier's event while naming a stale hash. Event.Seq counts
// events; a message's stream sequence is RawEvent.Msg.
package auditlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/audit"
)

// The stream and the subject it takes.
const (
	Stream  = audit.StreamName
	Subject = audit.Subject
)

// Log appends events in one goroutine so that decisions do not wait for
// the stream; the chain head is cached and re-read on a sequence conflict.
type Log struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	key      audit.Signer
	pub      string // key's public key: checkpoints are verified with it
	cfg      Config
	log      *slog.Logger
	ch       chan *item // pointers: a queue of 2^18 values would hold 72 MB
	done     chan struct{}
	lastMsg  uint64     // stream sequence of the last message
	head     audit.Head // the last event's number and hash
	appended func(time.Duration)
	stopped  chan struct{} // closed when run returns
	closing  sync.Once
	// collecting is how many events run has taken from ch for the batch it
	// is collecting or appending (the backlog counts them too).
	collecting atomic.Int64

	// durable is the last head this writer appended or read back: what a
	// checkpoint signs (see checkpoint.go).
	durable atomic.Pointer[audit.Checkpoint]
	health  health     // append failures (health.go)
	watch   watchState // limits, checkpoints and alerts (watch.go)
}

// item is an event to append, or (flushed set) a marker that is
// signalled once everything queued before it is appended.
type item struct {
	ev      audit.Event
	flushed chan struct{}
	ok      bool       // set before flushed is closed: everything before it was appended
	acked   chan error // RecordDurable's: the append's result (buffered)
}

// Open creates the stream if it does not exist (it never changes an
// existing one: see openStream), reads the chain's head, compares it with
// the verifier's last checkpoint (cfg.CheckpointFile) and starts the writer.
// What the comparison finds is raised as an alert once Watch is called.
// Close stops it.
func Open(ctx context.Context, js jetstream.JetStream, key audit.Signer, cfg Config) (*Log, error) {
	cfg.setDefaults()
	s, err := openStream(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Log{js: js, stream: s, key: key, cfg: cfg, log: log, appended: cfg.OnAppend,
		ch: make(chan *item, 1<<18), done: make(chan struct{}), stopped: make(chan struct{})}
	if pk, ok := key.(interface{ PublicKey() (string, error) }); ok {
		a.pub, _ = pk.PublicKey()
	}
	a.watch.init()
	cp, haveCP := a.loadCheckpoint()
	if err := a.readHead(ctx); err != nil {
		return nil, err
	}
	if haveCP {
		a.compareAtStart(ctx, cp)
	}
	go func() {
		defer close(a.stopped)
		a.run()
	}()
	return a, nil
}

// readHead loads the last message's sequence and its last event's number
// and hash.
func (a *Log) readHead(ctx context.Context) error {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	a.lastMsg, a.head = info.State.LastSeq, audit.Head{}
	if a.lastMsg == 0 {
		a.durable.Store(&audit.Checkpoint{})
		return nil
	}
	if info.State.Msgs == 0 {
		// Every message aged out (max age, and a quiet spell longer than
		// it): the head is known only to the checkpoint, if it names this
		// very message. Otherwise the chain starts again at event 1, which
		// audit.VerifyKept accepts after a dropped prefix.
		if cp, ok := a.watch.lastWritten(); ok && cp.Msg == a.lastMsg {
			a.head = audit.Head{Seq: cp.Seq, Hash: cp.Hash}
		} else {
			a.log.Warn("audit stream: every event aged out and no checkpoint names the last one; the chain starts again at event 1",
				"last_msg", a.lastMsg)
		}
		a.durable.Store(&audit.Checkpoint{Msg: a.lastMsg, Seq: a.head.Seq, Hash: a.head.Hash})
		return nil
	}
	m, err := a.stream.GetMsg(ctx, a.lastMsg)
	if err != nil {
		return fmt.Errorf("audit stream: last event: %w", err)
	}
	lines := bytes.Split(m.Data, []byte{'\n'})
	var e audit.Event
	if err := json.Unmarshal(lines[len(lines)-1], &e); err != nil {
		return fmt.Errorf("audit stream: last event does not decode: %w", err)
	}
	a.head = audit.Head{Seq: e.Seq, Hash: e.Hash}
	a.durable.Store(&audit.Checkpoint{Msg: a.lastMsg, Seq: e.Seq, Hash: e.Hash})
	return nil
}

// Flush waits until every event queued before it is appended.
func (a *Log) Flush() {
	a.FlushWithin(0)
}

// FlushWithin waits until every event queued before it is appended, at most
// d (0: no limit), and reports whether they were.
func (a *Log) FlushWithin(d time.Duration) bool {
	if a == nil {
		return true
	}
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	it := &item{flushed: make(chan struct{})}
	select {
	case a.ch <- it:
	case <-a.done:
		return false
	case <-timeout:
		return false
	}
	select {
	case <-it.flushed:
		return it.ok
	case <-a.done:
	case <-timeout:
	}
	return false
}

// closeWait bounds how long closing waits for what is queued: a stream that
// refuses appends (full, or JetStream away) must not hang a shutdown. (A
// variable for tests.)
var closeWait = 10 * time.Second

// Close appends what is queued (waiting at most closeWait), stops the
// writer and waits for it. Events recorded after Close are dropped. A second
// Close waits for the first.
func (a *Log) Close() {
	if a == nil {
		return
	}
	a.closing.Do(func() {
		if !a.FlushWithin(closeWait) {
			a.log.Error("audit: closing with events not appended", "queued", a.Backlog())
		}
		a.stopWatch()
		a.checkpoint() // a clean shutdown leaves the head it reached
		close(a.done)
	})
	<-a.stopped
}

// Backlog is the number of events recorded but not yet appended.
func (a *Log) Backlog() int {
	if a == nil {
		return 0
	}
	return len(a.ch) + int(a.collecting.Load())
}

// LastSeq is the stream sequence of the last message in the stream.
func (a *Log) LastSeq(ctx context.Context) (uint64, error) {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// MaxBatch bounds the events of one message; maxMsg its size,
// well under nats-server's default 1 MB max_payload.
const (
	MaxBatch = 512
	maxMsg   = 512 << 10
)

// linger is how long a batch of queued-only events (Record: nobody waits
// for them, e.g. a session's end) waits for an event someone does wait for
// (RecordDurable, a flush) to share its message. One client connecting
// again and again otherwise makes two messages a connect, its grant and the
// previous session's end, and each message costs a signature, a JetStream
// write and its ack (measured at one client: 5,926 messages for 3,000
// connects). A variable for tests.
var linger = 50 * time.Millisecond

// run appends what is queued: a group commit. It takes every event queued
// when it is free (up to MaxBatch a message) and appends them as one
// message, one signature and one JetStream round trip; events that arrive
// meanwhile form the next batch. One client at a time thus waits for one
// round trip, not for a batching window, and a thousand connecting at once
// share a few appends. A flush marker ends the batch and is signalled once
// it is appended; RecordDurable's events are told their append's result.
// A batch that nobody waits for lingers (see linger) until one that
// somebody waits for joins it.
func (a *Log) run() {
	batch := make([]audit.Event, 0, MaxBatch)
	acks := make([]chan error, 0, MaxBatch)
	failed := false // an append failed since the last flush marker
	wait := time.NewTimer(linger)
	wait.Stop()
	for {
		var it *item
		select {
		case <-a.done:
			return
		case it = <-a.ch:
		}
		batch, acks = batch[:0], acks[:0]
		lingering := false
		for {
			it = a.collect(it, &batch, &acks)
			if it != nil || len(acks) > 0 || len(batch) >= MaxBatch || linger <= 0 {
				break
			}
			if !lingering {
				lingering = true
				wait.Reset(linger)
			}
			select {
			case <-a.done:
				return
			case it = <-a.ch:
				continue
			case <-wait.C:
			}
			lingering = false
			break
		}
		if lingering {
			wait.Stop()
		}
		if len(batch) > 0 {
			err := a.AppendBatch(batch)
			if err != nil {
				failed = true
				a.log.Error("audit append failed", "events", len(batch), "first_kind", batch[0].Kind, "error", err)
			}
			for _, ack := range acks {
				ack <- err
			}
			a.collecting.Add(-int64(len(batch)))
		}
		if it != nil {
			it.ok, failed = !failed, false
			close(it.flushed)
		}
	}
}

// collect adds it and whatever else is queued to the batch, up to
// MaxBatch, and returns the flush marker that ended it (nil: none).
func (a *Log) collect(it *item, batch *[]audit.Event, acks *[]chan error) *item {
	for it != nil && it.flushed == nil {
		*batch = append(*batch, it.ev)
		if it.acked != nil {
			*acks = append(*acks, it.acked)
		}
		a.collecting.Add(1)
		it = nil
		if len(*batch) == MaxBatch {
			return nil
		}
		select {
		case it = <-a.ch:
		default:
		}
	}
	return it
}

// Append appends one event at once, outside the queue (a batch of one).
func (a *Log) Append(e audit.Event) error { return a.AppendBatch([]audit.Event{e}) }

// AppendBatch chains, signs and publishes events as one message with
// expected-last-sequence; when another verifier appended first it re-reads
// the head and retries, re-chained. While the server is away (a restart) it
// keeps retrying, so nothing is lost; a retry whose first attempt did land is
// recognized by its last hash at the head and not appended twice.
func (a *Log) AppendBatch(evs []audit.Event) error {
	conflicts, retries := 0, 0
	for {
		select {
		case <-a.done:
			return errors.New("audit: closed with events unwritten")
		default:
		}
		start := time.Now()
		msg, next, err := audit.Chain(a.head, evs, a.key)
		if err != nil {
			return err
		}
		if len(msg) > maxMsg && len(evs) > 1 {
			if err := a.AppendBatch(evs[:len(evs)/2]); err != nil {
				return err
			}
			return a.AppendBatch(evs[len(evs)/2:])
		}
		nc := a.js.Conn()
		reconnects := nc.Stats().Reconnects
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := a.js.Publish(ctx, Subject, msg, jetstream.WithExpectLastSequence(a.lastMsg))
		cancel()
		if err == nil {
			a.lastMsg, a.head = ack.Sequence, next
			a.durable.Store(&audit.Checkpoint{Msg: ack.Sequence, Seq: next.Seq, Hash: next.Hash})
			if a.health.succeeded() {
				a.log.Info("audit appends succeed again", "after_retries", retries)
			}
			if a.appended != nil {
				a.appended(time.Since(start))
			}
			return nil
		}
		if !wrongLastSequence(err) {
			if nc.IsClosed() || nc.IsDraining() {
				return fmt.Errorf("audit: connection closed with events unwritten: %w", err)
			}
			reconnect := nc.Stats().Reconnects != reconnects || !nc.IsConnected()
			if a.health.failed(err) {
				if reconnect {
					a.log.Warn("audit append interrupted by a reconnect; retrying", "events", len(evs), "error", err)
				} else {
					a.log.Error("audit append failed; retrying until it succeeds", "events", len(evs), "error", err)
				}
			}
			if a.health.shouldAlert(reconnect, a.cfg.FailClosedAfter) {
				go a.raise(AlertAppendFailing, audit.Event{Reason: "audit appends fail: " + err.Error()})
			}
			time.Sleep(retryWait(retries, a.health.full.Load() || a.health.jsFull.Load()))
			retries++
			continue
		}
		if conflicts++; conflicts > 1000 {
			return errors.New("audit: could not append after 1000 sequence conflicts")
		}
		before := a.head
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = a.readHead(rctx)
		rcancel()
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if a.head.Hash == next.Hash { // an earlier attempt landed after all (readHead set the head)
			if a.health.succeeded() {
				a.log.Info("audit appends succeed again (an attempt whose ack was lost had landed)", "after_retries", retries)
			}
			return nil
		}
		if a.head.Seq < before.Seq {
			// Other writers only move the head forward: it went back, so the
			// stream was cut or re-created under this writer.
			go a.noteTamper(audit.Checkpoint{Msg: 0, Seq: before.Seq, Hash: before.Hash, Time: time.Now().UTC()},
				fmt.Errorf("%w: the stream's head went back from event %d to %d while this verifier was appending",
					audit.ErrTruncated, before.Seq, a.head.Seq))
		}
	}
}

// ReadRaw returns the events of whole messages from stream sequence from, at
// most max of them unless the first message alone holds more.
func (a *Log) ReadRaw(ctx context.Context, from uint64, max int) ([]audit.RawEvent, error) {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := []audit.RawEvent{}
	for seq := max64(from, info.State.FirstSeq); seq <= info.State.LastSeq && len(out) < max; seq++ {
		m, err := a.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			out = append(out, audit.RawEvent{Msg: seq, Missing: true})
			continue
		}
		if err != nil {
			return nil, err
		}
		lines := bytes.Split(m.Data, []byte{'\n'})
		if len(out) > 0 && len(out)+len(lines) > max {
			break // whole messages only, and no more than max unless one message is
		}
		for _, line := range lines {
			var n struct {
				Seq uint64 `json:"seq"`
			}
			_ = json.Unmarshal(line, &n) // a line that does not decode fails verification
			out = append(out, audit.RawEvent{Seq: n.Seq, Msg: seq, Data: line})
		}
	}
	return out, nil
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// wrongLastSequence reports whether a publish lost the race for the stream's
// next sequence: JetStream says 10071 on a stream of one replica and 10164
// on a replicated one.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// RawMessage is a stream message as stored.
type RawMessage struct {
	Seq  uint64
	Data []byte
}

// ReadMessages returns the stream's messages from sequence from, as
// stored, up to about maxBytes of data (at least one message), and whether
// there are more. A message deleted from the stream is left out: the gap
// shows in the sequences.
func (a *Log) ReadMessages(ctx context.Context, from uint64, maxBytes int) ([]RawMessage, bool, error) {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("audit stream: %w", err)
	}
	var out []RawMessage
	size := 0
	seq := max64(from, info.State.FirstSeq)
	for ; seq <= info.State.LastSeq; seq++ {
		m, err := a.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("audit stream: message %d: %w", seq, err)
		}
		if len(out) > 0 && size+len(m.Data) > maxBytes {
			return out, true, nil
		}
		out = append(out, RawMessage{Seq: seq, Data: m.Data})
		size += len(m.Data)
	}
	return out, false, nil
}
