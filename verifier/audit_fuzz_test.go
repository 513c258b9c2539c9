package verifier

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// FuzzVerifyChain feeds VerifyChain what an export file may hold (JSON
// lines, from anywhere): it must never panic, and it may report success
// only for a chain that starts at event 1, is numbered without gaps and
// ends in an event signed by the key.
func FuzzVerifyChain(f *testing.F) {
	kp, err := nkeys.CreateAccount()
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	a := &auditLog{key: kp}
	evs := []Event{
		{Time: time.Unix(1, 0).UTC(), Kind: "connect", Result: "allow", Workload: "w"},
		{Time: time.Unix(2, 0).UTC(), Kind: "disconnect", Result: "ok", Reason: "Client Closed"},
	}
	msg, _, err := a.chain(evs)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(msg)
	f.Add(bytes.Split(msg, []byte{'\n'})[0])
	f.Add([]byte(`{"seq":1,"prev":"","hash":"","sig":""}`))
	f.Add([]byte("{}\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := bytes.Split(data, []byte{'\n'})
		n, err := VerifyChain(lines, pub, "")
		if n < 0 || n > len(lines) {
			t.Fatalf("%d events reported verified of %d lines", n, len(lines))
		}
		if err != nil {
			return
		}
		if n != len(lines) {
			t.Fatalf("success with %d of %d lines verified", n, len(lines))
		}
		first, last := decodeEvent(t, lines[0]), decodeEvent(t, lines[len(lines)-1])
		if first.Seq != 1 || last.Seq != uint64(len(lines)) || last.Sig == "" {
			t.Fatalf("success for a chain from %d to %d (last signed: %v) in %d lines", first.Seq, last.Seq, last.Sig != "", len(lines))
		}
	})
}

func decodeEvent(t *testing.T, b []byte) Event {
	t.Helper()
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("a verified line does not decode: %v", err)
	}
	return e
}
