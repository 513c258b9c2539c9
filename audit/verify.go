package audit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nkeys"
)

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
		sig, err := base64.RawURLEncoding.DecodeString(e.Sig)
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

// VerifyKept verifies events as read from a stream whose limits (max age,
// max bytes) may have dropped its oldest messages. When the first message
// read is the stream's first (message 1), the chain must start at event 1,
// as VerifyRawEvents checks. When it is a later one, the messages before it
// are gone and the chain is checked from the oldest event kept, whose
// predecessor's hash is taken as given: an aged-out prefix is not tampering.
// What such a trail cannot show is that nobody cut it on purpose; a
// checkpoint taken before (CheckRaw) can. from is the first event's number.
func VerifyKept(raws []RawEvent, issuerKey string) (n int, from uint64, err error) {
	if len(raws) == 0 {
		return 0, 0, nil
	}
	first := raws[0]
	var e Event
	if first.Missing || json.Unmarshal(first.Data, &e) != nil || first.Msg <= 1 {
		n, err = VerifyRawEvents(raws, issuerKey, "")
		return n, 1, err
	}
	n, err = VerifyRawEvents(raws, issuerKey, e.Prev)
	return n, e.Seq, err
}
