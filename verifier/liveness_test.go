package verifier

import (
	"testing"
	"time"
)

func TestSessionIndex(t *testing.T) {
	now := time.Now()
	ref := func(server string, client uint64, ttl time.Duration) SessionRef {
		return SessionRef{Server: server, Client: client, Expires: now.Add(ttl)}
	}
	a1, a2, b1 := ref("NA", 1, time.Hour), ref("NA", 2, time.Hour), ref("NB", 1, time.Minute)
	var x sessionIndex
	if x.end("NA", 1) {
		t.Fatal("end of a session never indexed reported as known")
	}
	x.add([]SessionRef{a1, a2, b1})
	if !x.end("NA", 1) || !x.ended(a1) || x.ended(a2) || x.ended(b1) {
		t.Fatal("end marked the wrong sessions")
	}
	x.add([]SessionRef{a1}) // re-reading a record keeps the mark
	if !x.ended(a1) {
		t.Fatal("re-indexing a session lost its ended mark")
	}
	if n := x.endServer("NB"); n != 1 || !x.ended(b1) || x.ended(a2) {
		t.Fatalf("endServer(NB) ended %d sessions", n)
	}
	x.sweep(now.Add(2 * time.Minute))
	if x.len() != 2 || x.ended(b1) {
		t.Fatalf("after the sweep %d sessions indexed, want the 2 unexpired", x.len())
	}
}
