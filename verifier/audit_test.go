package verifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"
)

// Two writers on one stream, each recording faster than one round trip per
// event: events are batched into messages, and the result is still one
// chain with every event in it, numbered 1..n.
func TestAuditBatchesTwoWriters(t *testing.T) {
	v := startLocal(t)
	v.FlushAudit()
	other, err := openAudit(context.Background(), v.st.js, v.keys.Issuer, v.cfg.Audit, v.log)
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()
	const each = 600
	var wg sync.WaitGroup
	for w, a := range []*auditLog{v.audit, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				a.record(Event{Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d-%d", w, i)})
			}
			a.flush()
		}()
	}
	wg.Wait()
	raws, err := v.audit.readRaw(context.Background(), 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	n, err := VerifyRawEvents(raws, mustPub(t, v), "")
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
	var victim RawEvent
	for _, r := range raws {
		if r.Msg > 1 && r.Seq > 1 && raws[r.Seq-2].Msg != r.Msg {
			victim = r
			break
		}
	}
	var cut []RawEvent
	for _, r := range raws {
		switch {
		case r.Msg != victim.Msg:
			cut = append(cut, r)
		case r.Seq == victim.Seq:
			cut = append(cut, RawEvent{Msg: r.Msg, Missing: true})
		}
	}
	_, err = VerifyRawEvents(cut, mustPub(t, v), "")
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Seq != victim.Seq {
		t.Fatalf("deleted message %d: %v, want broken at event %d", victim.Msg, err, victim.Seq)
	}
}

// A batch larger than a message may be is split, and stays one chain.
func TestAuditOversizedBatchSplits(t *testing.T) {
	v := startLocal(t)
	v.FlushAudit()
	long := strings.Repeat("x", 4000)
	evs := make([]Event, 300) // ~300 × 4 KB: over maxAuditMsg
	for i := range evs {
		evs[i] = Event{Time: time.Now().UTC(), Kind: "connect", Result: "deny", Reason: long}
	}
	if err := v.audit.appendBatch(evs); err != nil {
		t.Fatal(err)
	}
	raws, err := v.audit.readRaw(context.Background(), 1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyRawEvents(raws, mustPub(t, v), ""); err != nil {
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

func mustPub(t *testing.T, v *Verifier) string {
	t.Helper()
	pub, err := v.keys.Issuer.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestOperatorActionAuditedBeforeReply: an operator action returns only once
// its event is in the stream, even behind a long queue of connect events;
// and creating a join token is audited.
func TestOperatorActionAuditedBeforeReply(t *testing.T) {
	v := startLocal(t)
	for i := range 3000 {
		v.audit.record(Event{Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d", i)})
	}
	body, _ := json.Marshal(TokenCreateRequest{TTL: time.Hour, Roles: []string{"demo"}})
	if _, err := v.adminTokenCreate(t.Context(), body); err != nil {
		t.Fatal(err)
	}
	if n := v.AuditBacklog(); n != 0 {
		t.Fatalf("%d events still queued when the operator's command returned", n)
	}
	last, err := lastEvent(t, v)
	if err != nil {
		t.Fatal(err)
	}
	if last.Kind != "token.create" || last.Actor != "operator" || !slices.Equal(last.Roles, []string{"demo"}) {
		t.Fatalf("last event in the stream: %+v, want the token.create", last)
	}
}

// An event with a field this version does not know is not verified, and the
// error says why rather than calling it edited.
func TestVerifyChainUnknownField(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pubKey, _ := kp.PublicKey()
	a := &auditLog{key: kp}
	msg, _, err := a.chain([]Event{{Kind: "connect", Result: "allow"}})
	if err != nil {
		t.Fatal(err)
	}
	// What a newer verifier writes: one more field, covered by hash and sig.
	type newer struct {
		Event
		Future string `json:"future"`
	}
	var first Event
	if err := json.Unmarshal(msg, &first); err != nil {
		t.Fatal(err)
	}
	n := newer{Event: Event{Seq: 2, Time: time.Now().UTC(), Kind: "connect", Result: "allow", Prev: first.Hash}, Future: "x"}
	body, _ := json.Marshal(&n)
	sum := sha256.Sum256(body)
	n.Hash = hex.EncodeToString(sum[:])
	sig, _ := kp.Sign([]byte(n.Hash))
	n.Sig = b64(sig)
	line, _ := json.Marshal(&n)

	_, err = VerifyChain([][]byte{msg, line}, pubKey, "")
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Seq != 2 || !strings.Contains(ce.Reason, "does not know") {
		t.Fatalf("newer event: %v, want a ChainError at 2 that says the field is unknown", err)
	}
	edited := bytes.Replace(msg, []byte(`"allow"`), []byte(`"deny"`), 1)
	if _, err = VerifyChain([][]byte{edited}, pubKey, ""); !errors.As(err, &ce) || !strings.Contains(ce.Reason, "edited") {
		t.Fatalf("edited event: %v, want 'edited'", err)
	}
}

// startLocal starts a verifier with an embedded server on a free port,
// stopped when the test ends.
func startLocal(tb testing.TB) *Verifier {
	tb.Helper()
	v, err := New(Config{DataDir: tb.TempDir(), NATSListen: "127.0.0.1:-1"})
	if err != nil {
		tb.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.Close)
	return v
}

// lastEvent is the last event in the audit stream.
func lastEvent(t *testing.T, v *Verifier) (Event, error) {
	t.Helper()
	info, err := v.audit.stream.Info(t.Context())
	if err != nil {
		return Event{}, err
	}
	raws, err := v.audit.readRaw(t.Context(), info.State.LastSeq, maxAuditBatch)
	if err != nil {
		return Event{}, err
	}
	if len(raws) == 0 {
		return Event{}, errors.New("the audit stream is empty")
	}
	var e Event
	err = json.Unmarshal(raws[len(raws)-1].Data, &e)
	return e, err
}

// One signature a message: the last event's covers the ones before it
// through their hashes, so cutting, editing or extending a message is caught
// even though only its last event carries a signature.
func TestAuditOneSignatureCoversTheMessage(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	a := &auditLog{key: kp}
	evs := make([]Event, 4)
	for i := range evs {
		evs[i] = Event{Time: time.Now().UTC(), Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d", i)}
	}
	msg, last, err := a.chain(evs)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(msg, []byte{'\n'})
	for i, l := range lines {
		var e Event
		if err := json.Unmarshal(l, &e); err != nil {
			t.Fatal(err)
		}
		if signed := e.Sig != ""; signed != (i == len(lines)-1) {
			t.Fatalf("event %d signed=%v: only the message's last event is signed", e.Seq, signed)
		}
		if i == len(lines)-1 && e.Hash != last {
			t.Fatalf("chain returned last hash %s, the last line says %s", last, e.Hash)
		}
	}
	if n, err := VerifyChain(lines, pub, ""); err != nil || n != 4 {
		t.Fatalf("intact message: %d verified, %v", n, err)
	}

	// rechain recomputes every hash after an edit, as a forger without the
	// key would, keeping the last signature.
	rechain := func(ls [][]byte, edit func(*Event)) [][]byte {
		out := make([][]byte, len(ls))
		prev := ""
		for i, l := range ls {
			var e Event
			_ = json.Unmarshal(l, &e)
			if i == 0 {
				edit(&e)
			}
			e.Prev = prev
			e.Hash, _ = e.digest()
			prev = e.Hash
			out[i], _ = json.Marshal(&e)
		}
		return out
	}
	var unsigned Event
	_ = json.Unmarshal(lines[0], &unsigned)
	unsigned.Seq, unsigned.Prev = 5, last
	unsigned.Hash, _ = unsigned.digest()
	appended, _ := json.Marshal(&unsigned)

	other, _ := nkeys.CreateAccount()
	otherPub, _ := other.PublicKey()
	for _, tc := range []struct {
		name   string
		lines  [][]byte
		key    string
		seq    uint64
		reason string
		valid  int // events before the break that a valid signature covers
	}{
		{"cut short", lines[:3], pub, 1, "not covered by a signature", 0},
		{"unsigned event appended", append(slices.Clip(lines), appended), pub, 5, "not covered by a signature", 4},
		{"edited and re-hashed", rechain(lines, func(e *Event) { e.Result = "deny" }), pub, 4, "signature does not verify", 0},
		{"edited", [][]byte{bytes.Replace(lines[0], []byte(`"allow"`), []byte(`"deny"`), 1), lines[1], lines[2], lines[3]}, pub, 1, "edited", 0},
		{"another key", lines, otherPub, 4, "signature does not verify", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := VerifyChain(tc.lines, tc.key, "")
			var ce *ChainError
			if !errors.As(err, &ce) || ce.Seq != tc.seq || !strings.Contains(ce.Reason, tc.reason) {
				t.Fatalf("got %v, want broken at event %d: %s", err, tc.seq, tc.reason)
			}
			if n != tc.valid {
				t.Fatalf("%d events reported verified, want %d (those a valid signature covers)", n, tc.valid)
			}
		})
	}
}

// What VerifyChain must refuse beyond a broken chain: a chain that does not
// start at event 1, a line whose bytes are not the encoding its hash covers,
// an empty input; and what chain must write so that it verifies: text with
// invalid UTF-8.
func TestVerifyChainStrictForm(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	sealed := func(e Event) []byte { // an unsigned event with a correct hash
		e.Hash, e.Sig = "", ""
		e.Hash, _ = e.digest()
		b, _ := json.Marshal(&e)
		return b
	}
	now := time.Now().UTC()
	roles := []string{"ok", "bad\xffrole"}
	a := &auditLog{key: kp}
	msg, _, err := a.chain([]Event{{Time: now, Kind: "connect", Result: "deny", Reason: "bad byte \xff\xfe here", Roles: roles}})
	if err != nil {
		t.Fatal(err)
	}
	if roles[1] != "bad\xffrole" {
		t.Fatal("chain changed the caller's roles")
	}
	if n, err := VerifyChain([][]byte{msg}, pub, ""); err != nil || n != 1 {
		t.Fatalf("an event whose reason had invalid UTF-8: %d verified, %v", n, err)
	}
	// Go takes the last of duplicate keys (so the hash matches); a reader
	// that tells "Result" from "result" sees "allow".
	dup := bytes.Replace(msg, []byte(`"result":"deny"`), []byte(`"Result":"allow","result":"deny"`), 1)
	for _, tc := range []struct {
		name   string
		lines  [][]byte
		seq    uint64
		reason string
	}{
		{"unsigned event numbered 0", [][]byte{sealed(Event{Seq: 0, Time: now, Kind: "connect", Result: "allow"})}, 1, "starts at event 0"},
		{"starts at event 2", [][]byte{sealed(Event{Seq: 2, Time: now, Kind: "connect", Result: "allow"})}, 1, "starts at event 2"},
		{"duplicate key", [][]byte{dup}, 1, "byte for byte"},
		{"re-spaced", [][]byte{bytes.Replace(msg, []byte(`,"kind"`), []byte(`, "kind"`), 1)}, 1, "byte for byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := VerifyChain(tc.lines, pub, "")
			var ce *ChainError
			if !errors.As(err, &ce) || ce.Seq != tc.seq || !strings.Contains(ce.Reason, tc.reason) || n != 0 {
				t.Fatalf("got %d verified, %v; want broken at event %d: %s", n, err, tc.seq, tc.reason)
			}
		})
	}
}

// A flush reports whether the events before it were appended: when the
// append fails (here: its connection is closed), an operator action must not
// be told its event is in the trail.
func TestAuditFlushReportsAFailedAppend(t *testing.T) {
	v := startLocal(t)
	kp := v.keys.Verifier
	nc, err := nats.Connect(v.ClientURL(), nats.Nkey(pub(kp), kp.Sign))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := openAudit(t.Context(), js, v.keys.Issuer, v.cfg.Audit, v.log)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	a.record(Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	if !a.flushWithin(5 * time.Second) {
		t.Fatal("flush of an appended event reported failure")
	}
	nc.Close()
	a.record(Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	if a.flushWithin(5 * time.Second) {
		t.Fatal("flush reported success for an event whose append failed")
	}
	// The same when the failed append was done before the flush was asked
	// for (its marker then ends an empty batch).
	a.record(Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	time.Sleep(50 * time.Millisecond) // > auditLinger: the batch is appended (and fails) alone
	if a.flushWithin(5 * time.Second) {
		t.Fatal("flush reported success after an earlier failed append")
	}
}

// Closing does not hang on a stream that refuses appends: it waits
// closeWait, says what is lost, and returns.
func TestAuditCloseOnAFullStream(t *testing.T) {
	defer func(d time.Duration) { closeWait = d }(closeWait)
	closeWait = 300 * time.Millisecond
	v := startLocal(t)
	v.audit.record(Event{Kind: "connect", Result: "allow"})
	v.FlushAudit()
	info, err := v.audit.stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxMsgs = int64(info.State.Msgs) // full: DiscardNew refuses the next
	if _, err := v.st.js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	v.audit.record(Event{Kind: "token.create", Result: "ok", Actor: "operator"})
	done := make(chan struct{})
	go func() { v.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs on an audit stream that refuses appends")
	}
}

// An operator action waits for its audit event (at most auditWait) after
// its handler returns, with its worker slot given back: while JetStream
// refuses the append (here: the stream is full), another request still gets
// the only slot and its answer first.
func TestAuditWaitFreesTheWorkerSlot(t *testing.T) {
	v, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1", Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	type answer struct {
		subj string
		at   time.Time
	}
	answers := make(chan answer, 2)
	// One subscription: answers are seen in the order they were sent.
	if _, err := v.nc.Subscribe("test.>", func(m *nats.Msg) { answers <- answer{m.Subject, time.Now()} }); err != nil {
		t.Fatal(err)
	}
	if err := v.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	v.audit.record(Event{Kind: "connect", Result: "allow"}) // the stream holds at least one message
	v.FlushAudit()
	setMaxMsgs := func(full bool) {
		info, err := v.audit.stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		cfg := info.Config
		cfg.MaxMsgs = -1
		if full {
			cfg.MaxMsgs = int64(info.State.Msgs) // and takes no more (DiscardNew)
		}
		if _, err := v.st.js.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	setMaxMsgs(true)
	defer setMaxMsgs(false) // so that Close can append what waits

	action := v.handler("test.action", func(ctx context.Context, _ []byte) (any, error) {
		v.recordNow(ctx, Event{Kind: "token.create", Result: "ok", Actor: "operator"})
		return "done", nil
	})
	read := v.handler("test.read", func(context.Context, []byte) (any, error) { return "read", nil })
	start := time.Now()
	action(fakeRequest{reply: "test.action"})
	read(fakeRequest{reply: "test.read"}) // takes the only slot once the action gives it back
	first, second := <-answers, <-answers
	if first.subj != "test.read" || first.at.Sub(start) > auditWait/2 {
		t.Fatalf("first answer: %s after %v; the read should answer at once: the operator action held the only worker slot while it waited for the audit trail",
			first.subj, first.at.Sub(start))
	}
	if second.subj != "test.action" || second.at.Sub(start) < auditWait {
		t.Fatalf("second answer %s after %v: the action should answer once its wait (%v) is over", second.subj, second.at.Sub(start), auditWait)
	}
}

// fakeRequest is a micro.Request for calling a handler directly.
type fakeRequest struct{ reply string }

func (fakeRequest) Respond([]byte, ...micro.RespondOpt) error               { return nil }
func (fakeRequest) RespondJSON(any, ...micro.RespondOpt) error              { return nil }
func (fakeRequest) Error(string, string, []byte, ...micro.RespondOpt) error { return nil }
func (fakeRequest) Data() []byte                                            { return nil }
func (fakeRequest) Headers() micro.Headers                                  { return nil }
func (fakeRequest) Subject() string                                         { return "test" }
func (r fakeRequest) Reply() string                                         { return r.reply }

// digest is the hash an event should carry (what a forger recomputes).
func (e *Event) digest() (string, error) {
	b, err := e.unsealed()
	if err != nil {
		return "", err
	}
	return hashOf(b), nil
}
