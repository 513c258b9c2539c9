package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Head is where a chain ends: its last event's number and hash ("" before
// the first event).
type Head struct {
	Seq  uint64
	Hash string
}

// Signer signs a message's last event hash: the verifier's issuer key (an
// nkeys.KeyPair).
type Signer interface {
	Sign(input []byte) ([]byte, error)
}

// Bounds of an event's text. Much of it is what an unauthenticated client
// chose (a CONNECT user name, an error quoting a request): unbounded, each
// refused connect could cost the trail kilobytes. A field is cut at its
// bound, and says so.
const (
	maxField  = 256  // names and identifiers
	maxReason = 1024 // the reason
)

// validUTF8 replaces invalid UTF-8 in the event's text (an error's text may
// quote bytes from a request): encoded, an invalid byte becomes U+FFFD, so
// the event read back would no longer hash to what was signed. It also cuts
// each field at its bound.
func (e *Event) validUTF8() {
	for _, f := range []*string{&e.Kind, &e.Result, &e.Reason, &e.Host, &e.EKHash, &e.Workload,
		&e.Credential, &e.Server, &e.ClientAddr, &e.Actor, &e.Person} {
		limit := maxField
		if f == &e.Reason {
			limit = maxReason
		}
		*f = bound(strings.ToValidUTF8(*f, "\uFFFD"), limit)
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

// bound cuts s to at most limit bytes (on a rune boundary) and says how much
// was cut.
func bound(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit - 32 // room for the note
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)-cut) + " bytes cut)"
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

// Chain numbers, links and hashes events after head, signs the last one,
// and returns them as one stream message, a line each, and the new head. Each event names the hash of the one before, so the one
// signature covers every event of the message (and all before it): an edit
// anywhere changes the hash the signature is over. One signature a message,
// not an event, because signing was a third of the audit's CPU per connect.
func Chain(head Head, evs []Event, key Signer) ([]byte, Head, error) {
	msg := make([]byte, 0, len(evs)*768) // about an event's line
	seq, prev := head.Seq, head.Hash
	for i := range evs {
		e := &evs[i]
		seq++
		e.Seq, e.Prev, e.Hash, e.Sig = seq, prev, "", ""
		e.validUTF8()
		b, err := json.Marshal(e) // hash and sig are empty: the unsealed encoding
		if err != nil {
			return nil, Head{}, err
		}
		h := hashOf(b)
		if i == len(evs)-1 {
			sig, err := key.Sign([]byte(h))
			if err != nil {
				return nil, Head{}, err
			}
			e.Sig = base64.RawURLEncoding.EncodeToString(sig)
		}
		e.Hash = h
		if i > 0 {
			msg = append(msg, '\n')
		}
		msg = appendSealed(msg, b, e)
		prev = h
	}
	return msg, Head{Seq: seq, Hash: prev}, nil
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
