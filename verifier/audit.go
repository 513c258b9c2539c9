package verifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// The audit trail: every enrollment, registration, connect decision,
// revocation, rotation and alert is an Event in a JetStream stream. Events
// are hash-chained (each names the hash of the one before), signed by the
// verifier's issuer key, and appended with expected-last-sequence, so that
// several verifiers keep one chain. Deny is the default result: an event is
// "allow" or "ok" only when the code that records it says so.

const (
	auditStream  = "TPMAUTHN_AUDIT"
	auditSubject = "tpmauthn.audit"
)

// Event is one audit record.
type Event struct {
	Seq        uint64    `json:"seq"` // its stream sequence
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
	Prev       string    `json:"prev"`            // hash of the event before; "" for the first
	Hash       string    `json:"hash"`            // SHA-256 of this event with hash and sig empty
	Sig        string    `json:"sig"`             // issuer key's signature over hash (nkeys, base64url)
}

// denyByDefault makes a fresh event whose result is "deny".
func denyByDefault(kind string) Event { return Event{Kind: kind, Result: "deny"} }

func (e *Event) digest() (string, error) {
	c := *e
	c.Hash, c.Sig = "", ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
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
	lastSeq  uint64
	lastHash string
	appended func(time.Duration)
}

// auditItem is an event to append, or (flushed set) a marker that is
// signalled once everything queued before it is appended.
type auditItem struct {
	ev      Event
	flushed chan struct{}
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

// readHead loads the last event's sequence and hash.
func (a *auditLog) readHead(ctx context.Context) error {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	a.lastSeq, a.lastHash = info.State.LastSeq, ""
	if a.lastSeq == 0 {
		return nil
	}
	m, err := a.stream.GetMsg(ctx, a.lastSeq)
	if err != nil {
		return fmt.Errorf("audit stream: last event: %w", err)
	}
	var e Event
	if err := json.Unmarshal(m.Data, &e); err != nil {
		return fmt.Errorf("audit stream: last event does not decode: %w", err)
	}
	a.lastHash = e.Hash
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
	if a == nil {
		return
	}
	w := make(chan struct{})
	select {
	case a.ch <- &auditItem{flushed: w}:
	case <-a.done:
		return
	}
	select {
	case <-w:
	case <-a.done:
	}
}

func (a *auditLog) close() {
	if a == nil {
		return
	}
	a.flush()
	close(a.done)
}

func (a *auditLog) run() {
	for {
		select {
		case <-a.done:
			return
		case it := <-a.ch:
			if it.flushed != nil {
				close(it.flushed)
				continue
			}
			if err := a.append(it.ev); err != nil {
				a.log.Error("audit append failed", "kind", it.ev.Kind, "error", err)
			}
		}
	}
}

// append chains, signs and publishes one event with expected-last-sequence;
// when another verifier appended first it re-reads the head and retries.
// While the server is away (a restart) it keeps retrying the same event, so
// nothing is lost; a retry whose first attempt did land is recognized by its
// hash at the head and not appended twice.
func (a *auditLog) append(e Event) error {
	conflicts := 0
	for {
		select {
		case <-a.done:
			return errors.New("audit: closed with an event unwritten")
		default:
		}
		start := time.Now()
		e.Seq, e.Prev = a.lastSeq+1, a.lastHash
		h, err := e.digest()
		if err != nil {
			return err
		}
		sig, err := a.key.Sign([]byte(h))
		if err != nil {
			return err
		}
		e.Hash, e.Sig = h, b64(sig)
		b, err := json.Marshal(&e)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ack, err := a.js.Publish(ctx, auditSubject, b, jetstream.WithExpectLastSequence(a.lastSeq))
		cancel()
		if err == nil {
			a.lastSeq, a.lastHash = ack.Sequence, h
			if a.appended != nil {
				a.appended(time.Since(start))
			}
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			if nc := a.js.Conn(); nc.IsClosed() || nc.IsDraining() {
				return fmt.Errorf("audit: connection closed with an event unwritten: %w", err)
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
		if a.lastHash == h {
			return nil // an earlier attempt landed after all
		}
	}
}

// readRaw returns up to max raw events from sequence from.
func (a *auditLog) readRaw(ctx context.Context, from uint64, max int) ([]RawEvent, error) {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := []RawEvent{}
	for seq := max64(from, info.State.FirstSeq); seq <= info.State.LastSeq && len(out) < max; seq++ {
		m, err := a.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			out = append(out, RawEvent{Seq: seq, Missing: true})
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, RawEvent{Seq: seq, Data: m.Data})
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
	Seq     uint64          `json:"seq"`
	Data    json.RawMessage `json:"data,omitempty"`
	Missing bool            `json:"missing,omitempty"` // deleted from the stream
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
// of the one before, hashes to what it says, and is signed by issuerKey (an
// account public key). firstPrev is the hash the first event must name (""
// from the stream's start). It returns the number of events checked.
func VerifyChain(events [][]byte, issuerKey string, firstPrev string) (int, error) {
	kp, err := nkeys.FromPublicKey(issuerKey)
	if err != nil {
		return 0, fmt.Errorf("audit key: %w", err)
	}
	prev := firstPrev
	var lastSeq uint64
	for i, raw := range events {
		var e Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return i, &ChainError{Seq: lastSeq + 1, Reason: "does not decode: " + err.Error()}
		}
		if i > 0 && e.Seq != lastSeq+1 {
			return i, &ChainError{Seq: lastSeq + 1, Reason: fmt.Sprintf("missing: the next event present is %d", e.Seq)}
		}
		if e.Prev != prev {
			return i, &ChainError{Seq: e.Seq, Reason: "does not follow the event before (prev hash mismatch)"}
		}
		h, err := e.digest()
		if err != nil || h != e.Hash {
			return i, &ChainError{Seq: e.Seq, Reason: "content does not match its hash (edited)"}
		}
		sig, err := decodeB64(e.Sig)
		if err != nil || kp.Verify([]byte(e.Hash), sig) != nil {
			return i, &ChainError{Seq: e.Seq, Reason: "signature does not verify with the verifier's key"}
		}
		prev, lastSeq = e.Hash, e.Seq
	}
	return len(events), nil
}

// VerifyRawEvents verifies events as read from the stream: a message deleted
// from the stream breaks the chain at its sequence.
func VerifyRawEvents(raws []RawEvent, issuerKey, firstPrev string) (int, error) {
	events := make([][]byte, 0, len(raws))
	for _, r := range raws {
		if r.Missing {
			if n, err := VerifyChain(events, issuerKey, firstPrev); err != nil {
				return n, err
			}
			return len(events), &ChainError{Seq: r.Seq, Reason: "deleted from the stream"}
		}
		events = append(events, r.Data)
	}
	return VerifyChain(events, issuerKey, firstPrev)
}
