package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// FuzzVerifyChain feeds VerifyChain what an export file may hold (JSON
// lines, from anywhere, and any hash to start from): it must never panic,
// and whatever it reports as verified is checked again here from the
// definitions. The fuzzer cannot forge a signature, so what it mostly finds
// are inputs that must fail; the seeds (a real signed chain) exercise the
// success path.
func FuzzVerifyChain(f *testing.F) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	evs := []Event{
		{Time: time.Unix(1, 0).UTC(), Kind: "connect", Result: "allow", Workload: "w"},
		{Time: time.Unix(2, 0).UTC(), Kind: "disconnect", Result: "ok", Reason: "Client Closed"},
	}
	msg, _, err := Chain(Head{}, evs, kp)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(msg, "")
	f.Add(bytes.Split(msg, []byte{'\n'})[0], "")
	f.Add(bytes.Split(msg, []byte{'\n'})[1], "")
	f.Add([]byte(`{"seq":1,"prev":"","hash":"","sig":""}`), "")
	f.Add([]byte("{}\n{}"), "x")
	f.Fuzz(func(t *testing.T, data []byte, firstPrev string) {
		lines := bytes.Split(data, []byte{'\n'})
		n, err := VerifyChain(lines, pub, firstPrev)
		if n < 0 || n > len(lines) {
			t.Fatalf("%d events reported verified of %d lines", n, len(lines))
		}
		if err != nil {
			return
		}
		if n != len(lines) {
			t.Fatalf("success with %d of %d lines verified", n, len(lines))
		}
		// What success must mean, checked here from the definitions: each
		// line is exactly the encoding of its event, numbered in turn, names
		// the hash before it, hashes (SHA-256 of its encoding with hash and
		// sig empty) to what it says, and the last is signed by the key.
		prev := firstPrev
		var e Event
		for i, line := range lines {
			e = decodeEvent(t, line)
			if canon, _ := json.Marshal(&e); !bytes.Equal(canon, line) {
				t.Fatalf("line %d verified but is not its event's encoding", i)
			}
			if (i > 0 || firstPrev == "") && e.Seq != decodeSeq(t, lines, i, firstPrev) {
				t.Fatalf("line %d verified with seq %d", i, e.Seq)
			}
			if e.Prev != prev {
				t.Fatalf("line %d verified naming prev %q, not %q", i, e.Prev, prev)
			}
			u := e
			u.Hash, u.Sig = "", ""
			b, _ := json.Marshal(&u)
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.Hash {
				t.Fatalf("line %d verified with a hash that is not its own", i)
			}
			prev = e.Hash
		}
		sig, err := base64.RawURLEncoding.DecodeString(e.Sig)
		if err != nil || kp.Verify([]byte(e.Hash), sig) != nil {
			t.Fatal("a chain verified whose last event is not signed by the key")
		}
	})
}

// decodeSeq is the number line i must carry: from 1 at the stream's start,
// else from the first line's own number.
func decodeSeq(t *testing.T, lines [][]byte, i int, firstPrev string) uint64 {
	if firstPrev == "" {
		return uint64(i + 1)
	}
	return decodeEvent(t, lines[0]).Seq + uint64(i)
}

func decodeEvent(t *testing.T, b []byte) Event {
	t.Helper()
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("a verified line does not decode: %v", err)
	}
	return e
}
