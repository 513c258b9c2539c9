package audit

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nkeys"
)

// Outcomes of comparing a trail with a checkpoint (use errors.Is).
var (
	// ErrTruncated: the trail ends before a head a checkpoint saw, so it
	// was cut, or deleted and re-created from an older prefix.
	ErrTruncated = errors.New("audit trail truncated")
	// ErrRewritten: the trail holds the checkpoint's event number with
	// another hash, so it was re-created and written again from there.
	ErrRewritten = errors.New("audit trail rewritten")
	// ErrBadCheckpoint: a checkpoint's signature does not verify.
	ErrBadCheckpoint = errors.New("audit checkpoint does not verify")
)

// Checkpoint says where the chain ended at a time: its head event's number
// (Seq, which is also how many events the chain has held since event 1), its
// hash, and the stream message that holds it. The verifier signs one
// periodically and at shutdown and keeps it outside the stream;
// tpmauthnctl keeps the last head it verified as one. A trail read later
// must reach Seq and hold Hash there (Check): a stream deleted and re-created
// from an older prefix, or cut and written on from the cut, does not.
//
// A checkpoint protects only what happened before it, and only from whoever
// cannot rewrite the place it is kept. Whoever holds the issuer key (a
// compromised verifier) can sign any chain after it.
type Checkpoint struct {
	Msg  uint64    `json:"msg"`  // stream sequence of the message holding the head
	Seq  uint64    `json:"seq"`  // the head event's number
	Hash string    `json:"hash"` // the head event's hash
	Time time.Time `json:"time"` // when the checkpoint was taken
	Sig  string    `json:"sig,omitempty"`
}

// checkpointDomain separates a checkpoint's signature from an event's
// (which is over a bare hex hash): neither can be passed off as the other.
const checkpointDomain = "tpmauthn-audit-checkpoint/v1"

func (c *Checkpoint) signed() []byte {
	return []byte(checkpointDomain + "\n" + strconv.FormatUint(c.Msg, 10) + "\n" +
		strconv.FormatUint(c.Seq, 10) + "\n" + c.Hash + "\n" + c.Time.UTC().Format(time.RFC3339Nano))
}

// Sign signs c with key (the issuer key that signs the events).
func (c *Checkpoint) Sign(key Signer) error {
	sig, err := key.Sign(c.signed())
	if err != nil {
		return fmt.Errorf("sign audit checkpoint: %w", err)
	}
	c.Sig = base64.RawURLEncoding.EncodeToString(sig)
	return nil
}

// Verify checks c's signature with issuerKey (an account public key).
func (c *Checkpoint) Verify(issuerKey string) error {
	kp, err := nkeys.FromPublicKey(issuerKey)
	if err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(c.Sig)
	if err != nil || c.Sig == "" || kp.Verify(c.signed(), sig) != nil {
		return ErrBadCheckpoint
	}
	return nil
}

// Before reports whether c is behind o (an older head of the same chain).
func (c Checkpoint) Before(o Checkpoint) bool { return c.Seq < o.Seq }

// String names the checkpoint for people.
func (c Checkpoint) String() string {
	return fmt.Sprintf("event %d (stream message %d, %s, hash %.12s…)", c.Seq, c.Msg, c.Time.UTC().Format(time.RFC3339), c.Hash)
}

// CheckHead compares a trail's head (its last event's number and hash, and
// the event numbered cp.Seq if it still holds it) with a checkpoint: the
// head must not be behind cp, and the event cp names must have cp's hash.
// at is that event's hash, "" when the trail no longer holds it (its limits
// dropped it: not evidence of tampering by itself). It returns nil, or an
// error wrapping ErrTruncated or ErrRewritten.
func CheckHead(head Head, at string, cp Checkpoint) error {
	switch {
	case head.Seq < cp.Seq:
		return fmt.Errorf("%w: the trail ends at event %d, behind a checkpoint at %s: it was cut, or deleted and re-created from an older prefix",
			ErrTruncated, head.Seq, cp)
	case head.Seq == cp.Seq && head.Hash != cp.Hash,
		at != "" && at != cp.Hash:
		return fmt.Errorf("%w: the trail's event %d is not the one a checkpoint saw at %s: it was re-created and written again",
			ErrRewritten, cp.Seq, cp)
	}
	return nil
}

// CheckRaw compares events as read from the stream (whole messages, in
// order) with a checkpoint: see CheckHead.
func CheckRaw(raws []RawEvent, cp Checkpoint) error {
	var head Head
	var at string
	for _, r := range raws {
		if r.Missing {
			continue
		}
		var e Event
		if json.Unmarshal(r.Data, &e) != nil {
			continue // VerifyRawEvents names it
		}
		head = Head{Seq: e.Seq, Hash: e.Hash}
		if e.Seq == cp.Seq {
			at = e.Hash
		}
	}
	return CheckHead(head, at, cp)
}
