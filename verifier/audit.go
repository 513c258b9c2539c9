package verifier

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// The audit trail: every enrollment, registration, connect decision,
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

const (
	auditStream  = "TPMAUTHN_AUDIT"
	auditSubject = "tpmauthn.audit"
)

// Event is one audit record.
type Event struct {
	Seq        uint64    `json:"seq"` // its number in the chain, from 1
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"`   // enroll, register, connect, revoke, offboard, release, alert.<kind>, ...
	Result     string    `json:"result"` // allow, deny, ok, error, alert
	Reason     string    `json:"reason,omitempty"`
	Host       string    `json:"host,omitempty"`
	EKHash     string    `json:"ek_hash,omitempty"`
	Workload   string    `json:"workload,omitempty"`
	Credential string    `json:"credential,omitempty"`
	Counter    uint32    `json:"counter,omitempty"`
	Server     string    `json:"server,omitempty"`
	Client     uint64    `json:"client,omitempty"`
	ClientAddr string    `json:"client_addr,omitempty"`
	Roles      []string  `json:"roles,omitempty"`
	Actor      string    `json:"actor,omitempty"` // who asked (operator, agent, verifier)
	// Session is what a session did, in its disconnect event.
	Session *SessionStats `json:"session,omitempty"`
	Prev    string        `json:"prev"` // hash of the event before; "" for the first
	Hash    string        `json:"hash"` // SHA-256 of this event with hash and sig empty
	// Sig is the issuer key's signature over Hash (nkeys, base64url), on the
	// last event of each stream message; "" on the others (see chain).
	Sig string `json:"sig"`
}

// SessionStats is a NATS session's lifetime and traffic as its server
// counted them (sent: from the client to the server).
type SessionStats struct {
	Start         time.Time `json:"start"`
	MsgsSent      int64     `json:"msgs_sent"`
	BytesSent     int64     `json:"bytes_sent"`
	MsgsReceived  int64     `json:"msgs_received"`
	BytesReceived int64     `json:"bytes_received"`
}

// denyByDefault makes a fresh event whose result is "deny".
func denyByDefault(kind string) Event { return Event{Kind: kind, Result: "deny"} }

// validUTF8 replaces invalid UTF-8 in the event's text (an error's text may
// quote bytes from a request): encoded, an invalid byte becomes U+FFFD, so
// the event read back would no longer hash to what was signed.
func (e *Event) validUTF8() {
	for _, f := range []*string{&e.Kind, &e.Result, &e.Reason, &e.Host, &e.EKHash, &e.Workload,
		&e.Credential, &e.Server, &e.ClientAddr, &e.Actor} {
		*f = strings.ToValidUTF8(*f, "\uFFFD")
	}
	cloned := false
	for i, r := range e.Roles {
		if utf8.ValidString(r) {
			continue
		}
		if !cloned { // the caller's slice stays as it was
			e.Roles, cloned = slices.Clone(e.Roles), true
		}
		e.Roles[i] = strings.ToValidUTF8(r, "\uFFFD")
	}
}

// unsealed is the event's encoding with hash and sig empty: what its hash
// is over.
func (e *Event) unsealed() ([]byte, error) {
	c := *e
	c.Hash, c.Sig = "", ""
	return json.Marshal(&c)
}

// hashOf is the hex SHA-256 of an event's unsealed encoding.
func hashOf(unsealed []byte) string {
	h := sha256.Sum256(unsealed)
	return hex.EncodeToString(h[:])
}

// auditLog appends events in one goroutine so that decisions do not wait for
// the stream; the chain head is cached and re-read on a sequence conflict.
type auditLog struct {
	js       jetstream.JetStream
	stream   jetstream.Stream
	key      nkeys.KeyPair
	log      *slog.Logger
	ch       chan *auditItem // pointers: a queue of 2^18 values would hold 72 MB
	done     chan struct{}
	lastMsg  uint64 // stream sequence of the last message
	lastSeq  uint64 // Seq of the last event
	lastHash string
	appended func(time.Duration)
	// collecting is how many events run has taken from ch for the batch it
	// is collecting or appending (the backlog counts them too).
	collecting atomic.Int64
}

// auditItem is an event to append, or (flushed set) a marker that is
// signalled once everything queued before it is appended.
type auditItem struct {
	ev      Event
	flushed chan struct{}
	ok      bool // set before flushed is closed: everything before it was appended
}

// AuditConfig configures the stream.
type AuditConfig struct {
	Replicas int // default 1
	// AllowDelete lets the stream's messages be deleted through the API
	// (tests of tamper detection); by default deletion and purge are refused.
	AllowDelete bool
}

func openAudit(ctx context.Context, js jetstream.JetStream, key nkeys.KeyPair, cfg AuditConfig, log *slog.Logger) (*auditLog, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: auditStream, Subjects: []string{auditSubject}, Storage: jetstream.FileStorage,
		Replicas: max(cfg.Replicas, 1), DenyDelete: !cfg.AllowDelete, DenyPurge: !cfg.AllowDelete,
		Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardNew,
	})
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	a := &auditLog{js: js, stream: s, key: key, log: log, ch: make(chan *auditItem, 1<<18), done: make(chan struct{})}
	if err := a.readHead(ctx); err != nil {
		return nil, err
	}
	go a.run()
	return a, nil
}

// readHead loads the last message's sequence and its last event's number
// and hash.
func (a *auditLog) readHead(ctx context.Context) error {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	a.lastMsg, a.lastSeq, a.lastHash = info.State.LastSeq, 0, ""
	if a.lastMsg == 0 {
		return nil
	}
	m, err := a.stream.GetMsg(ctx, a.lastMsg)
	if err != nil {
		return fmt.Errorf("audit stream: last event: %w", err)
	}
	lines := bytes.Split(m.Data, []byte{'\n'})
	var e Event
	if err := json.Unmarshal(lines[len(lines)-1], &e); err != nil {
		return fmt.Errorf("audit stream: last event does not decode: %w", err)
	}
	a.lastSeq, a.lastHash = e.Seq, e.Hash
	return nil
}

// record queues an event. It blocks only when the queue is full.
func (a *auditLog) record(e Event) {
	if a == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	select {
	case a.ch <- &auditItem{ev: e}:
	case <-a.done:
	}
}

// flush waits until every event queued before it is appended.
func (a *auditLog) flush() {
	a.flushWithin(0)
}

// flushWithin waits until every event queued before it is appended, at most
// d (0: no limit), and reports whether they were.
func (a *auditLog) flushWithin(d time.Duration) bool {
	if a == nil {
		return true
	}
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	it := &auditItem{flushed: make(chan struct{})}
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

// auditWait bounds how long an operator action, an enrollment or a
// registration waits for its audit event to be appended.
const auditWait = 2 * time.Second

// recordNow queues an event that whoever asked must not hear "done" before
// it is appended: an operator action, an enrollment, a registration. They
// are rare; connect decisions, which are not, use record and do not wait.
// Within a request handler the wait (at most auditWait) happens after the
// handler returns, once its worker slot is free, so a slow JetStream does
// not hold the slots other requests need; elsewhere it happens here.
func (v *Verifier) recordNow(ctx context.Context, e Event) {
	v.audit.record(e)
	if w, ok := ctx.Value(auditWaitKey{}).(*atomic.Bool); ok {
		w.Store(true)
		return
	}
	v.waitAudit("kind", e.Kind)
}

// auditWaitKey marks a request's context: the handler waits for the audit
// trail before it answers if recordNow was called.
type auditWaitKey struct{}

// waitAudit waits until everything recorded so far is appended, at most
// auditWait in all. At most Workers wait at once (each wait queues a flush
// marker, and a wait that times out leaves it queued): while JetStream is
// stalled, requests cannot fill the audit queue with markers.
func (v *Verifier) waitAudit(what, name string) {
	timer := time.NewTimer(auditWait)
	defer timer.Stop()
	deadline := time.Now().Add(auditWait)
	select {
	case v.auditWaiters <- struct{}{}:
		defer func() { <-v.auditWaiters }()
		if left := time.Until(deadline); left > 0 && v.audit.flushWithin(left) {
			return
		}
	case <-timer.C:
	}
	v.log.Warn("audit event not appended within "+auditWait.String()+" (if it is still queued, it is appended when JetStream answers; a failed append is logged)", what, name)
}

// closeWait bounds how long closing waits for what is queued: a stream that
// refuses appends (full, or JetStream away) must not hang a shutdown. (A
// variable for tests.)
var closeWait = 10 * time.Second

func (a *auditLog) close() {
	if a == nil {
		return
	}
	if !a.flushWithin(closeWait) {
		a.log.Error("audit: closing with events not appended", "queued", len(a.ch)+int(a.collecting.Load()))
	}
	close(a.done)
}

// maxAuditBatch bounds the events of one message; maxAuditMsg its size,
// well under nats-server's default 1 MB max_payload.
const (
	maxAuditBatch = 512
	maxAuditMsg   = 512 << 10
)

// auditLinger is how long a batch waits for more events after its first
// before it is appended (unless a flush marker or a full batch ends it
// sooner): one signature and one JetStream round trip then serve every
// connect of those milliseconds, where with one client connecting at a time
// each event was a message of its own. A verifier killed without a shutdown
// loses at most what was queued, this window included.
const auditLinger = 5 * time.Millisecond

// run appends what is queued, up to maxAuditBatch events a message, waiting
// auditLinger for more after a batch's first event; a flush marker ends the
// batch at once and is signalled once it is appended.
func (a *auditLog) run() {
	batch := make([]Event, 0, maxAuditBatch)
	linger := time.NewTimer(auditLinger)
	linger.Stop()
	failed := false // an append failed since the last flush marker
	for {
		var it *auditItem
		select {
		case <-a.done:
			return
		case it = <-a.ch:
		}
		batch = batch[:0]
		linger.Reset(auditLinger)
	collect:
		for it != nil && it.flushed == nil {
			batch = append(batch, it.ev)
			a.collecting.Add(1)
			it = nil
			if len(batch) == maxAuditBatch {
				break
			}
			select {
			case it = <-a.ch:
			case <-linger.C:
				break collect
			case <-a.done:
				break collect
			}
		}
		linger.Stop()
		if len(batch) > 0 {
			if err := a.appendBatch(batch); err != nil {
				failed = true
				a.log.Error("audit append failed", "events", len(batch), "first_kind", batch[0].Kind, "error", err)
			}
			a.collecting.Add(-int64(len(batch)))
		}
		if it != nil {
			it.ok, failed = !failed, false
			close(it.flushed)
		}
	}
}

// append appends one event (a batch of one).
func (a *auditLog) append(e Event) error { return a.appendBatch([]Event{e}) }

// chain numbers, links and hashes events after the current head, signs the
// last one, and returns them as one message, a line each, and the last
// event's hash. Each event names the hash of the one before, so the one
// signature covers every event of the message (and all before it): an edit
// anywhere changes the hash the signature is over. One signature a message,
// not an event, because signing was a third of the audit's CPU per connect.
func (a *auditLog) chain(evs []Event) ([]byte, string, error) {
	msg := make([]byte, 0, len(evs)*768) // about an event's line
	seq, prev := a.lastSeq, a.lastHash
	for i := range evs {
		e := &evs[i]
		seq++
		e.Seq, e.Prev, e.Hash, e.Sig = seq, prev, "", ""
		e.validUTF8()
		b, err := json.Marshal(e) // hash and sig are empty: the unsealed encoding
		if err != nil {
			return nil, "", err
		}
		h := hashOf(b)
		if i == len(evs)-1 {
			sig, err := a.key.Sign([]byte(h))
			if err != nil {
				return nil, "", err
			}
			e.Sig = b64(sig)
		}
		e.Hash = h
		if i > 0 {
			msg = append(msg, '\n')
		}
		msg = appendSealed(msg, b, e)
		prev = h
	}
	return msg, prev, nil
}

// unsealedTail is how the JSON of an event with empty hash and sig ends
// (they are its last fields, never omitted).
const unsealedTail = `,"hash":"","sig":""}`

// appendSealed appends the event's line: the JSON that was hashed (unsealed)
// with its hash and signature filled in, without encoding it again.
func appendSealed(msg, unsealed []byte, e *Event) []byte {
	if !bytes.HasSuffix(unsealed, []byte(unsealedTail)) {
		b, _ := json.Marshal(e) // cannot fail: the same event just encoded
		return append(msg, b...)
	}
	msg = append(msg, unsealed[:len(unsealed)-len(unsealedTail)]...)
	msg = append(msg, `,"hash":"`...)
	msg = append(msg, e.Hash...)
	msg = append(msg, `","sig":"`...)
	msg = append(msg, e.Sig...)
	return append(msg, `"}`...)
}

// appendBatch chains, signs and publishes events as one message with
// expected-last-sequence; when another verifier appended first it re-reads
// the head and retries, re-chained. While the server is away (a restart) it
// keeps retrying, so nothing is lost; a retry whose first attempt did land is
// recognized by its last hash at the head and not appended twice.
func (a *auditLog) appendBatch(evs []Event) error {
	conflicts := 0
	for {
		select {
		case <-a.done:
			return errors.New("audit: closed with events unwritten")
		default:
		}
		start := time.Now()
		msg, last, err := a.chain(evs)
		if err != nil {
			return err
		}
		if len(msg) > maxAuditMsg && len(evs) > 1 {
			if err := a.appendBatch(evs[:len(evs)/2]); err != nil {
				return err
			}
			return a.appendBatch(evs[len(evs)/2:])
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := a.js.Publish(ctx, auditSubject, msg, jetstream.WithExpectLastSequence(a.lastMsg))
		cancel()
		if err == nil {
			a.lastMsg, a.lastSeq, a.lastHash = ack.Sequence, a.lastSeq+uint64(len(evs)), last
			if a.appended != nil {
				a.appended(time.Since(start))
			}
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			if nc := a.js.Conn(); nc.IsClosed() || nc.IsDraining() {
				return fmt.Errorf("audit: connection closed with events unwritten: %w", err)
			}
			a.log.Warn("audit append failed; retrying", "error", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if conflicts++; conflicts > 1000 {
			return errors.New("audit: could not append after 1000 sequence conflicts")
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = a.readHead(rctx)
		rcancel()
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if a.lastHash == last {
			return nil // an earlier attempt landed after all
		}
	}
}

// readRaw returns the events of whole messages from stream sequence from, at
// most max of them unless the first message alone holds more.
func (a *auditLog) readRaw(ctx context.Context, from uint64, max int) ([]RawEvent, error) {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := []RawEvent{}
	for seq := max64(from, info.State.FirstSeq); seq <= info.State.LastSeq && len(out) < max; seq++ {
		m, err := a.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			out = append(out, RawEvent{Msg: seq, Missing: true})
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
			out = append(out, RawEvent{Seq: n.Seq, Msg: seq, Data: line})
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

// RawEvent is an event as stored (for independent verification).
type RawEvent struct {
	Seq     uint64          `json:"seq"` // the event's number (0 if it does not decode, or Missing)
	Msg     uint64          `json:"msg"` // the stream message that holds it
	Data    json.RawMessage `json:"data,omitempty"`
	Missing bool            `json:"missing,omitempty"` // the message was deleted from the stream
}

// ChainError names the first event that breaks the chain.
type ChainError struct {
	Seq    uint64
	Reason string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at event %d: %s", e.Seq, e.Reason)
}

// VerifyChain checks a sequence of raw events (from the stream, or the lines
// of an export): each decodes, has the next sequence number, names the hash
// of the one before and hashes to what it says; the last event of every
// stream message is signed by issuerKey (an account public key), which
// covers the unsigned events before it through their hashes. So every
// unsigned event must be followed by a signed one, and the last event
// checked must be signed. firstPrev is the hash the first event must name
// ("" from the stream's start). It returns the number of events checked.
func VerifyChain(events [][]byte, issuerKey string, firstPrev string) (int, error) {
	kp, err := nkeys.FromPublicKey(issuerKey)
	if err != nil {
		return 0, fmt.Errorf("audit key: %w", err)
	}
	prev := firstPrev
	var lastSeq, unsignedFrom uint64
	pending := false // unsigned events not yet covered by a signature
	signed := 0      // events covered by a signature so far
	for i, raw := range events {
		var e Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return signed, &ChainError{Seq: lastSeq + 1, Reason: "does not decode: " + err.Error()}
		}
		switch {
		case i > 0 && e.Seq != lastSeq+1:
			return signed, &ChainError{Seq: lastSeq + 1, Reason: fmt.Sprintf("missing: the next event present is %d", e.Seq)}
		case i == 0 && firstPrev == "" && e.Seq != 1:
			return signed, &ChainError{Seq: 1, Reason: fmt.Sprintf("missing: the chain starts at event %d", e.Seq)}
		}
		if e.Prev != prev {
			return signed, &ChainError{Seq: e.Seq, Reason: "does not follow the event before (prev hash mismatch)"}
		}
		unsealed, err := e.unsealed()
		if err != nil || hashOf(unsealed) != e.Hash {
			if unknownFields(raw) {
				return signed, &ChainError{Seq: e.Seq, Reason: "has fields this version does not know (written by a newer verifier?): verify it with a tpmauthnctl as new as the verifier"}
			}
			return signed, &ChainError{Seq: e.Seq, Reason: "content does not match its hash (edited)"}
		}
		// The hash covers the decoded event, so the stored bytes must be
		// exactly its encoding: a duplicate or re-cased key ("Result"
		// beside "result") would otherwise show one thing to jq or a SIEM
		// and hash as another.
		if !bytes.Equal(appendSealed(nil, unsealed, &e), raw) { // the writer's encoding of it
			return signed, &ChainError{Seq: e.Seq, Reason: "is not byte for byte the event its hash covers (duplicate, re-cased or re-spaced keys: edited)"}
		}
		prev, lastSeq = e.Hash, e.Seq
		if e.Sig == "" {
			if !pending {
				pending, unsignedFrom = true, e.Seq
			}
			continue
		}
		sig, err := decodeB64(e.Sig)
		if err != nil || kp.Verify([]byte(e.Hash), sig) != nil {
			return signed, &ChainError{Seq: e.Seq, Reason: "signature does not verify with the verifier's key"}
		}
		signed, pending = i+1, false
	}
	if pending {
		return signed, &ChainError{Seq: unsignedFrom, Reason: fmt.Sprintf("events %d to %d are not covered by a signature (a stream message cut short, or an export that ends inside one)", unsignedFrom, lastSeq)}
	}
	return signed, nil
}

// VerifyRawEvents verifies events as read from the stream: a message deleted
// from the stream breaks the chain at the first event it held (the one after
// the last event before it; 1 at the stream's start).
func VerifyRawEvents(raws []RawEvent, issuerKey, firstPrev string) (int, error) {
	events := make([][]byte, 0, len(raws))
	var before uint64
	for _, r := range raws {
		if r.Missing {
			if n, err := VerifyChain(events, issuerKey, firstPrev); err != nil {
				return n, err
			}
			return len(events), &ChainError{Seq: before + 1, Reason: fmt.Sprintf("deleted from the stream (message %d)", r.Msg)}
		}
		events = append(events, r.Data)
		before = r.Seq
	}
	return VerifyChain(events, issuerKey, firstPrev)
}

// unknownFields reports whether an event carries fields this version's
// Event lacks: its hash covers them, so this version cannot check it, and
// saying "edited" would be a false alarm.
func unknownFields(raw []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var e Event
	return dec.Decode(&e) != nil && json.Unmarshal(raw, &e) == nil
}
