package callout

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Oldest first while nobody has waited long; newest first once the oldest
// has waited lifoAfter (it may be past saving).
func TestCalloutQueueOrder(t *testing.T) {
	msg := func(s string) *nats.Msg { return &nats.Msg{Subject: s} }
	done := make(chan struct{})
	now := time.Now()
	cases := []struct {
		name   string
		oldest time.Time
		want   []string
	}{
		{"fresh: first in, first out", now, []string{"a", "b", "c"}},
		{"congested: newest first", now.Add(-2 * lifoAfter), []string{"c", "b", "a"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			q := &calloutQueue{wake: make(chan struct{}, 1)}
			q.items = []queued{{msg("a"), c.oldest}, {msg("b"), c.oldest}, {msg("c"), c.oldest}}
			for _, want := range c.want {
				m, _, ok := q.pop(done)
				if !ok || m.Subject != want {
					t.Fatalf("popped %v, want %s", m.Subject, want)
				}
			}
		})
	}
}
