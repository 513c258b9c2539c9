package audit

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// stream chains n messages of two events each, as the writer appends them,
// and returns them as read back (RawEvent) with the head of each message.
func stream(t *testing.T, kp nkeys.KeyPair, n int, salt string) ([]RawEvent, []Checkpoint) {
	t.Helper()
	var raws []RawEvent
	var heads []Checkpoint
	var head Head
	for i := range n {
		msg, next, err := Chain(head, []Event{{Kind: "connect", Result: DenyText, Reason: salt}, {Kind: "connect", Result: Allow, Reason: salt}}, kp)
		if err != nil {
			t.Fatal(err)
		}
		for j, line := range bytes.Split(msg, []byte{'\n'}) {
			raws = append(raws, RawEvent{Seq: head.Seq + uint64(j) + 1, Msg: uint64(i + 1), Data: line})
		}
		head = next
		heads = append(heads, Checkpoint{Msg: uint64(i + 1), Seq: next.Seq, Hash: next.Hash, Time: time.Now()})
	}
	return raws, heads
}

func TestCheckpointSignature(t *testing.T) {
	kp, _ := nkeys.CreateAccount()
	pub, _ := kp.PublicKey()
	other, _ := nkeys.CreateAccount()
	otherPub, _ := other.PublicKey()
	good := Checkpoint{Msg: 3, Seq: 7, Hash: "ab", Time: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)}
	if err := good.Sign(kp); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Checkpoint)
		key  string
		want error
	}{
		{"intact", func(*Checkpoint) {}, pub, nil},
		{"seqLowered", func(c *Checkpoint) { c.Seq = 6 }, pub, ErrBadCheckpoint},
		{"msgChanged", func(c *Checkpoint) { c.Msg = 2 }, pub, ErrBadCheckpoint},
		{"hashChanged", func(c *Checkpoint) { c.Hash = "ac" }, pub, ErrBadCheckpoint},
		{"timeChanged", func(c *Checkpoint) { c.Time = c.Time.Add(time.Second) }, pub, ErrBadCheckpoint},
		{"unsigned", func(c *Checkpoint) { c.Sig = "" }, pub, ErrBadCheckpoint},
		{"otherKey", func(*Checkpoint) {}, otherPub, ErrBadCheckpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			if err := c.Verify(tc.key); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
	// An event's signature (over a bare hash) is not a checkpoint's.
	sig, _ := kp.Sign([]byte(good.Hash))
	forged := good
	forged.Sig = Event{Sig: string(sig)}.Sig
	if forged.Verify(pub) == nil {
		t.Fatal("a signature over the bare hash verified as a checkpoint")
	}
}

// A trail must not be behind, or differ from, a checkpoint; a prefix that
// aged out of the stream is not tampering.
func TestCheckRaw(t *testing.T) {
	kp, _ := nkeys.CreateAccount()
	pub, _ := kp.PublicKey()
	raws, heads := stream(t, kp, 4, "") // events 1..8 in messages 1..4
	rewritten, _ := stream(t, kp, 4, "again")
	// Written again after the cut: the same numbers, other events.
	again := append(append([]RawEvent{}, raws[:4]...), rewritten[4:]...)
	for _, tc := range []struct {
		name string
		raws []RawEvent
		cp   Checkpoint
		want error
	}{
		{"atHead", raws, heads[3], nil},
		{"aheadOfCheckpoint", raws, heads[1], nil},
		{"cutBehindCheckpoint", raws[:4], heads[3], ErrTruncated},
		{"empty", nil, heads[0], ErrTruncated},
		{"recreatedFromOlderPrefix", again, heads[3], ErrRewritten},
		{"recreatedAheadOfCheckpoint", again, heads[2], ErrRewritten},
		{"checkpointAgedOut", raws[4:], heads[0], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckRaw(tc.raws, tc.cp); !errors.Is(err, tc.want) {
				t.Fatalf("CheckRaw = %v, want %v", err, tc.want)
			}
		})
	}
	// The rewritten trail verifies on its own (it is signed by the key):
	// only the checkpoint tells.
	if _, err := VerifyRawEvents(rewritten, pub, ""); err != nil {
		t.Fatalf("the rewritten chain: %v", err)
	}
}

// With its oldest messages dropped by the stream's limits, the trail is
// verified from the oldest event kept; a cut inside what is kept, or an
// edit, still breaks it.
func TestVerifyKept(t *testing.T) {
	kp, _ := nkeys.CreateAccount()
	pub, _ := kp.PublicKey()
	raws, _ := stream(t, kp, 4, "")
	n, from, err := VerifyKept(raws[4:], pub)
	if err != nil || n != 4 || from != 5 {
		t.Fatalf("kept from message 3: %d events from %d, %v; want 4 from 5", n, from, err)
	}
	// The same events as if the stream had started there: message 1 must
	// start the chain at event 1.
	renumbered := append([]RawEvent{}, raws[4:]...)
	for i := range renumbered {
		renumbered[i].Msg -= 2
	}
	var ce *ChainError
	if _, _, err := VerifyKept(renumbered, pub); !errors.As(err, &ce) || ce.Seq != 1 {
		t.Fatalf("a stream whose message 1 holds event 5: %v, want broken at 1", err)
	}
	edited := append([]RawEvent{}, raws[4:]...)
	edited[2].Data = bytes.Replace(edited[2].Data, []byte(`"result":"`), []byte(`"result":"x`), 1)
	if _, _, err := VerifyKept(edited, pub); !errors.As(err, &ce) || ce.Seq != 7 {
		t.Fatalf("edited event 7: %v, want broken at 7", err)
	}
}
