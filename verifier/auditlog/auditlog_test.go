package auditlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
)

// env is a JetStream server of its own and an issuer key: what a writer needs.
type env struct {
	*jstest.Server
	js  jetstream.JetStream
	key nkeys.KeyPair
	pub string
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	srv := jstest.Start(tb)
	kp, err := nkeys.CreateAccount()
	if err != nil {
		tb.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return &env{Server: srv, js: srv.JS, key: kp, pub: pub}
}

// open starts a writer on the env's stream, closed when the test ends.
func (e *env) open(tb testing.TB) *Log {
	tb.Helper()
	a, err := Open(context.Background(), e.js, e.key, Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.Close)
	return a
}

// Two writers on one stream, each recording faster than one round trip per
// event: events are batched into messages, and the result is still one
// chain with every event in it, numbered 1..n.
func TestAuditBatchesTwoWriters(t *testing.T) {
	e := newEnv(t)
	first := e.open(t)
	other := e.open(t)
	const each = 600
	var wg sync.WaitGroup
	for w, a := range []*Log{first, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				a.Record(audit.Event{Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d-%d", w, i)})
			}
			a.Flush()
		}()
	}
	wg.Wait()
	raws, err := first.ReadRaw(context.Background(), 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	n, err := audit.VerifyRawEvents(raws, e.pub, "")
	if err != nil {
		t.Fatalf("chain of two batching writers: %v", err)
	}
	seen := map[string]bool{}
	msgs := map[uint64]bool{}
	for i, r := range raws {
		if r.Seq != uint64(i+1) {
			t.Fatalf("event %d has number %d", i+1, r.Seq)
		}
		msgs[r.Msg] = true
		seen[string(r.Data)] = true
	}
	if n != len(raws) || len(seen) != len(raws) || n < 2*each {
		t.Fatalf("%d events verified of %d read (%d distinct), want at least %d", n, len(raws), len(seen), 2*each)
	}
	if len(msgs) >= n {
		t.Fatalf("%d events in %d messages: nothing was batched", n, len(msgs))
	}
	t.Logf("%d events in %d messages", n, len(msgs))

	// Deleting a message breaks the chain at its first event.
	var victim audit.RawEvent
	for _, r := range raws {
		if r.Msg > 1 && r.Seq > 1 && raws[r.Seq-2].Msg != r.Msg {
			victim = r
			break
		}
	}
	var cut []audit.RawEvent
	for _, r := range raws {
		switch {
		case r.Msg != victim.Msg:
			cut = append(cut, r)
		case r.Seq == victim.Seq:
			cut = append(cut, audit.RawEvent{Msg: r.Msg, Missing: true})
		}
	}
	_, err = audit.VerifyRawEvents(cut, e.pub, "")
	var ce *audit.ChainError
	if !errors.As(err, &ce) || ce.Seq != victim.Seq {
		t.Fatalf("deleted message %d: %v, want broken at event %d", victim.Msg, err, victim.Seq)
	}
}

// A batch larger than a message may be is split, and stays one chain.
func TestAuditOversizedBatchSplits(t *testing.T) {
	e := newEnv(t)
	first := e.open(t)
	long := strings.Repeat("x", 4000) // cut to the reason's bound (1 KB)
	evs := make([]audit.Event, 1300)  // ~1300 × 1.3 KB: over maxMsg three times
	for i := range evs {
		evs[i] = audit.Event{Time: time.Now().UTC(), Kind: "connect", Result: "deny", Reason: long}
	}
	if err := first.AppendBatch(evs); err != nil {
		t.Fatal(err)
	}
	raws, err := first.ReadRaw(context.Background(), 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyRawEvents(raws, e.pub, ""); err != nil {
		t.Fatal(err)
	}
	msgs := map[uint64]bool{}
	for _, r := range raws {
		msgs[r.Msg] = true
	}
	if len(msgs) < 3 {
		t.Fatalf("%d events in %d messages: the batch was not split", len(raws), len(msgs))
	}
}

// A flush reports whether the events before it were appended: when the
// append fails (here: its connection is closed), an operator action must not
// be told its event is in the trail.
func TestAuditFlushReportsAFailedAppend(t *testing.T) {
	e := newEnv(t)
	nc, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(t.Context(), js, e.key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.Record(audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	if !a.FlushWithin(5 * time.Second) {
		t.Fatal("flush of an appended event reported failure")
	}
	nc.Close()
	a.Record(audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	if a.FlushWithin(5 * time.Second) {
		t.Fatal("flush reported success for an event whose append failed")
	}
	// The same when the failed append was done before the flush was asked
	// for (its marker then ends an empty batch).
	a.Record(audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	time.Sleep(50 * time.Millisecond) // the writer takes it alone: the batch is appended (and fails)
	if a.FlushWithin(5 * time.Second) {
		t.Fatal("flush reported success after an earlier failed append")
	}
}

// Closing does not hang on a stream that refuses appends: it waits
// closeWait, says what is lost, and returns.
func TestAuditCloseOnAFullStream(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 300 * time.Millisecond
	e := newEnv(t)
	a, err := Open(t.Context(), e.js, e.key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	a.Record(audit.Event{Kind: "connect", Result: "allow"})
	a.Flush()
	info, err := a.stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxMsgs = int64(info.State.Msgs) // full: DiscardNew refuses the next
	if _, err := e.js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	a.Record(audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	done := make(chan struct{})
	go func() { a.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs on an audit stream that refuses appends")
	}
}

// Close twice (or from two goroutines) is safe, and both wait.
func TestCloseTwice(t *testing.T) {
	e := newEnv(t)
	a, err := Open(t.Context(), e.js, e.key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	a.Record(audit.Event{Kind: "connect", Result: "allow"})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			a.Close()
			select {
			case <-a.stopped:
			default:
				t.Error("Close returned before the writer stopped")
			}
		})
	}
	wg.Wait()
	if n := a.Backlog(); n != 0 {
		t.Fatalf("%d events left unappended after Close", n)
	}
}

// RecordDurable returns once the event is in the stream, and says so when
// it cannot be (the append fails, or the caller's deadline passes first).
func TestRecordDurable(t *testing.T) {
	e := newEnv(t)
	nc, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(t.Context(), js, e.key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := range 3 {
		if err := a.RecordDurable(t.Context(), audit.Event{Kind: "connect", Result: "allow", Client: uint64(i + 1)}); err != nil {
			t.Fatalf("RecordDurable %d: %v", i, err)
		}
		raws, err := a.ReadRaw(t.Context(), 1, 100)
		if err != nil {
			t.Fatal(err)
		}
		var last audit.Event
		if err := json.Unmarshal(raws[len(raws)-1].Data, &last); err != nil || last.Client != uint64(i+1) {
			t.Fatalf("after RecordDurable %d the stream ends with %+v (%v)", i, last, err)
		}
	}
	nc.Close() // appends fail from now on
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if err := a.RecordDurable(ctx, audit.Event{Kind: "connect", Result: "allow"}); err == nil {
		t.Fatal("RecordDurable reported an event stored on a closed connection")
	}
}

// TestRetryWait: a full stream is asked rarely; a stream between leaders
// is asked again soon, so the trail resumes right after an election.
func TestRetryWait(t *testing.T) {
	for _, tc := range []struct {
		n    int
		full bool
		want time.Duration
	}{
		{0, false, 50 * time.Millisecond},
		{2, false, 200 * time.Millisecond},
		{3, false, 250 * time.Millisecond},
		{40, false, 250 * time.Millisecond},
		{0, true, 100 * time.Millisecond},
		{4, true, 1600 * time.Millisecond},
		{40, true, 2 * time.Second},
	} {
		if got := retryWait(tc.n, tc.full); got != tc.want {
			t.Errorf("retryWait(%d, full=%v) = %v, want %v", tc.n, tc.full, got, tc.want)
		}
	}
}

// An event nobody waits for (a session's end) rides in the message of the
// next event somebody waits for; alone, it is appended after linger.
func TestLinger(t *testing.T) {
	e := newEnv(t)
	a := e.open(t)
	a.Record(audit.Event{Kind: "session.end", Result: "ok", Client: 1})
	time.Sleep(linger / 5)
	if err := a.RecordDurable(t.Context(), audit.Event{Kind: "connect", Result: "allow", Client: 2}); err != nil {
		t.Fatal(err)
	}
	raws, err := a.ReadRaw(t.Context(), 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(raws) != 2 || raws[0].Msg != raws[1].Msg {
		t.Fatalf("the session's end and the grant are not one message: %+v", raws)
	}
	start := time.Now()
	a.Record(audit.Event{Kind: "session.end", Result: "ok", Client: 2})
	for len(raws) < 3 {
		if time.Since(start) > 5*time.Second {
			t.Fatal("a lone event was not appended")
		}
		time.Sleep(time.Millisecond)
		if raws, err = a.ReadRaw(t.Context(), 1, 100); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < linger/2 {
		t.Errorf("a lone event was appended after %v, before it lingered (%v)", took, linger)
	}
	if len(raws) != 3 || raws[2].Msg == raws[1].Msg {
		t.Fatalf("the lone event is not a message of its own: %+v", raws)
	}
}

// A server restart with an append on the wire loses its ack: the writer
// retries, the event lands, and that is no tamper signal (it was one at
// every restart). An outage that outlasts FailClosedAfter is one.
func TestAppendAcrossRestart(t *testing.T) {
	e := newEnv(t)
	a, al := openWatched(t, e, Config{FailClosedAfter: 10 * time.Second})

	e.Down()
	a.Record(audit.Event{Kind: "connect", Result: audit.Allow})
	deadline := time.Now().Add(10 * time.Second)
	for a.AppendFailures() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if a.AppendFailures() == 0 {
		t.Fatal("no append failed while the server was down")
	}
	e.Up(t)
	if !a.FlushWithin(15 * time.Second) {
		t.Fatal("the event queued across the restart was not appended")
	}
	if got := al.got(); len(got) != 0 {
		t.Fatalf("alerts %v for a restart shorter than FailClosedAfter", got)
	}
	if n := countEvents(t, a); n != 2 {
		t.Fatalf("%d events in the stream, want 2", n)
	}

	// Down for longer than FailClosedAfter: the alert comes.
	b, err := Open(t.Context(), e.js, e.key, Config{FailClosedAfter: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.Watch(al)
	e.Down()
	b.Record(audit.Event{Kind: "connect", Result: audit.Allow})
	deadline = time.Now().Add(15 * time.Second)
	for len(al.got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := al.got(); len(got) != 1 || got[0] != AlertAppendFailing {
		t.Fatalf("alerts %v after an outage longer than FailClosedAfter, want one %s", got, AlertAppendFailing)
	}
	e.Up(t)
	if !b.FlushWithin(15 * time.Second) {
		t.Fatal("the event queued across the outage was not appended")
	}
}

// openWatched opens a writer with cfg whose alerts are collected, and
// appends one event through it.
func openWatched(t *testing.T, e *env, cfg Config) (*Log, *alerts) {
	t.Helper()
	a, err := Open(t.Context(), e.js, e.key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	al := &alerts{}
	a.Watch(al)
	record(t, a, 1)
	return a, al
}

// countEvents is how many events the audit stream holds.
func countEvents(t *testing.T, a *Log) int {
	t.Helper()
	raws, err := a.ReadRaw(t.Context(), 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(raws)
}

// restartLosesAck is JetStream whose second publish lands but whose ack a
// server restart loses.
type restartLosesAck struct {
	jetstream.JetStream
	e *env
	t *testing.T
	n atomic.Int32
}

func (l *restartLosesAck) Publish(ctx context.Context, subj string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ack, err := l.JetStream.Publish(ctx, subj, data, opts...)
	if err == nil && l.n.Add(1) == 2 {
		l.e.Down()
		l.e.Up(l.t)
		for !l.e.NC.IsConnected() {
			time.Sleep(10 * time.Millisecond)
		}
		return nil, errors.New("nats: timeout (ack lost to a restart)")
	}
	return ack, err
}

// An append whose ack a restart lost, found at the head by the retry, ends
// the failure episode: the trail is not left "failing" (it would refuse
// grants once FailClosedAfter passed, and measure the next restart from
// the stale start and alert at once).
func TestLostAckThatLanded(t *testing.T) {
	e := newEnv(t)
	js := &restartLosesAck{JetStream: e.js, e: e, t: t}
	a, err := Open(t.Context(), js, e.key, Config{FailClosedAfter: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for range 2 {
		if err := a.RecordDurable(t.Context(), audit.Event{Kind: "connect", Result: audit.Allow}); err != nil {
			t.Fatal(err)
		}
	}
	if a.AppendFailures() == 0 {
		t.Fatal("the lost ack was not a failed attempt")
	}
	if a.Failing() {
		t.Fatal("the trail is still failing after its lost append was found at the head")
	}
	if n := countEvents(t, a); n != 2 {
		t.Fatalf("%d events in the stream, want 2 (the lost ack's batch once)", n)
	}
}

// Events dropped while appends fail raise the alert at once, even in an
// outage the grace for restarts would otherwise wait out. (Record's drop
// on a full queue is TestFullStreamUnavailable's; the queue holds 2^18.)
func TestDroppedEventsAlertDuringARestart(t *testing.T) {
	e := newEnv(t)
	a, al := openWatched(t, e, Config{FailClosedAfter: time.Minute})
	e.Down()
	a.Record(audit.Event{Kind: "disconnect", Result: audit.OK})
	deadline := time.Now().Add(10 * time.Second)
	for !a.Failing() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // no alert for the restart itself
	if got := al.got(); len(got) != 0 {
		t.Fatalf("alerts %v during a restart shorter than FailClosedAfter", got)
	}
	a.dropEvent(audit.Event{Kind: "disconnect", Result: audit.OK})
	deadline = time.Now().Add(5 * time.Second)
	for len(al.got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := al.got(); len(got) != 1 || got[0] != AlertAppendFailing {
		t.Fatalf("alerts %v once events were dropped, want one %s", got, AlertAppendFailing)
	}
	e.Up(t)
	if !a.FlushWithin(15 * time.Second) {
		t.Fatal("the queued event was not appended after the restart")
	}
}
