package freeport

import (
	"fmt"
	"net"
	"testing"
)

// TestPick: a picked port is below the ephemeral range, can be bound, and
// is not handed out twice.
func TestPick(t *testing.T) {
	low := ephemeralLow()
	seen := map[int]bool{}
	for range 2000 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p < lowest || p >= low {
			t.Fatalf("port %d outside [%d, %d)", p, lowest, low)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d not bindable: %v", p, err)
		}
		_ = l.Close()
	}
}
