package callout

import (
	"fmt"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Repeated denials are aggregated in the audit trail: the first denial of a
// reason from a client address is recorded at once, as every decision is;
// the same reason from the same address within denialWindow is only
// counted, and one <kind>.repeat event (connect.repeat, connect.enroll.repeat)
// with the count closes the window.
// Nothing is dropped: beyond maxDenialGroups distinct groups, denials are
// recorded one by one again, and Close records every open count.
const (
	denialWindow    = 10 * time.Second
	maxDenialGroups = 4096
)

type denialGroup struct {
	first audit.Event
	count int
	timer *time.Timer
}

type denials struct {
	trail  eventSink
	window time.Duration
	mu     sync.Mutex
	groups map[string]*denialGroup
	closed bool
}

// eventSink takes events (the audit trail).
type eventSink interface{ Record(audit.Event) }

func newDenials(trail eventSink, window time.Duration) *denials {
	return &denials{trail: trail, window: window, groups: map[string]*denialGroup{}}
}

// record records ev, or counts it if it repeats a denial of its window.
func (d *denials) record(ev audit.Event) {
	if ev.Result != audit.DenyText {
		d.trail.Record(ev)
		return
	}
	key := ev.ClientAddr + "\x00" + ev.Reason
	d.mu.Lock()
	if g := d.groups[key]; g != nil {
		g.count++
		d.mu.Unlock()
		return
	}
	if !d.closed && len(d.groups) < maxDenialGroups {
		g := &denialGroup{first: ev}
		d.groups[key] = g
		g.timer = time.AfterFunc(d.window, func() { d.flush(key) })
	}
	d.mu.Unlock()
	d.trail.Record(ev)
}

// flush ends key's window: its count, if any, becomes one event.
func (d *denials) flush(key string) {
	d.mu.Lock()
	g := d.groups[key]
	delete(d.groups, key)
	d.mu.Unlock()
	if g == nil || g.count == 0 {
		return
	}
	e := g.first
	e.Kind, e.Client, e.Time = e.Kind+".repeat", 0, time.Time{}
	e.Reason = fmt.Sprintf("%d more denials from %s within %s, each: %s", g.count, e.ClientAddr, d.window, g.first.Reason)
	d.trail.Record(e)
}

// close records every open count and stops aggregating.
func (d *denials) close() {
	d.mu.Lock()
	d.closed = true
	keys := make([]string, 0, len(d.groups))
	for k, g := range d.groups {
		g.timer.Stop()
		keys = append(keys, k)
	}
	d.mu.Unlock()
	for _, k := range keys {
		d.flush(k)
	}
}
