package callout

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

type trail struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (r *trail) Record(e audit.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

func (r *trail) events() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.evs...)
}

func TestDenialsAggregated(t *testing.T) {
	r := &trail{}
	d := newDenials(r, time.Hour)
	deny := func(addr, reason string) audit.Event {
		e := audit.Deny("connect")
		e.ClientAddr, e.Reason = addr, reason
		return e
	}
	for range 50 {
		d.record(deny("10.0.0.1", "join token unknown"))
	}
	d.record(deny("10.0.0.2", "join token unknown")) // another source
	d.record(deny("10.0.0.1", "EK not allowed"))     // another reason
	ok := audit.Event{Kind: "connect", Result: audit.Allow, ClientAddr: "10.0.0.1"}
	d.record(ok)
	d.record(ok) // allows are never aggregated
	if n := len(r.events()); n != 5 {
		t.Fatalf("%d events recorded during the window, want 5 (3 first denials, 2 allows)", n)
	}
	d.close()
	evs := r.events()
	var repeats []audit.Event
	for _, e := range evs {
		if e.Kind == "connect.repeat" {
			repeats = append(repeats, e)
		}
	}
	if len(repeats) != 1 || repeats[0].ClientAddr != "10.0.0.1" || !strings.HasPrefix(repeats[0].Reason, "49 more denials") {
		t.Fatalf("repeat events %+v, want one counting 49 from 10.0.0.1", repeats)
	}
	d.record(deny("10.0.0.1", "join token unknown")) // after close: recorded one by one
	d.record(deny("10.0.0.1", "join token unknown"))
	if n := len(r.events()); n != len(evs)+2 {
		t.Fatalf("denials after close dropped: %d events, want %d", n, len(evs)+2)
	}
}

func TestDenialWindowEnds(t *testing.T) {
	r := &trail{}
	d := newDenials(r, 50*time.Millisecond)
	e := audit.Deny("connect")
	e.ClientAddr, e.Reason = "10.0.0.1", "unknown credential"
	d.record(e)
	d.record(e)
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs := r.events()
		if len(evs) == 2 && evs[1].Kind == "connect.repeat" && strings.HasPrefix(evs[1].Reason, "1 more denials") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("window did not close with its count: %+v", evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.record(e) // a new window: recorded at once
	if n := len(r.events()); n != 3 {
		t.Fatalf("%d events, want the new window's first denial recorded", n)
	}
	d.close()
}
