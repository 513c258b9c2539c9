package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nkeys"
)

// An event with a field this version does not know is not verified, and the
// error says why rather than calling it edited.
func TestVerifyChainUnknownField(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pubKey, _ := kp.PublicKey()
	msg, _, err := Chain(Head{}, []Event{{Kind: "connect", Result: "allow"}}, kp)
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
	n.Sig = base64.RawURLEncoding.EncodeToString(sig)
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

// One signature a message: the last event's covers the ones before it
// through their hashes, so cutting, editing or extending a message is caught
// even though only its last event carries a signature.
func TestAuditOneSignatureCoversTheMessage(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	evs := make([]Event, 4)
	for i := range evs {
		evs[i] = Event{Time: time.Now().UTC(), Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d", i)}
	}
	msg, head, err := Chain(Head{}, evs, kp)
	last := head.Hash
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
	msg, _, err := Chain(Head{}, []Event{{Time: now, Kind: "connect", Result: "deny", Reason: "bad byte \xff\xfe here", Roles: roles}}, kp)
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

// digest is the hash an event should carry (what a forger recomputes).
func (e *Event) digest() (string, error) {
	b, err := e.unsealed()
	if err != nil {
		return "", err
	}
	return hashOf(b), nil
}

// M4: text an unauthenticated client chose (a CONNECT user name quoted
// twice in a reason) made each refused connect cost kilobytes of trail.
// Every field is bounded, says it was cut, and the event still verifies.
func TestAttackOversizedEventFieldsBounded(t *testing.T) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	huge := strings.Repeat("é", 6000) // 12 KB, two-byte runes
	msg, _, err := Chain(Head{}, []Event{{Kind: "connect", Result: "deny", Reason: huge + huge, Host: huge, EKHash: huge}}, kp)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg) > 4096 {
		t.Fatalf("an event of attacker-chosen text takes %d bytes", len(msg))
	}
	var e Event
	if err := json.Unmarshal(msg, &e); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(e.Reason, "bytes cut)") || len(e.Host) > maxField || !utf8.ValidString(e.Host) {
		t.Fatalf("reason %q…, host %d bytes", e.Reason[len(e.Reason)-20:], len(e.Host))
	}
	if n, err := VerifyChain([][]byte{msg}, pub, ""); err != nil || n != 1 {
		t.Fatalf("a bounded event: %d verified, %v", n, err)
	}
}
