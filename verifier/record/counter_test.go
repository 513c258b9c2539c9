package record

import (
	"errors"
	"testing"
)

func TestAcceptCounter(t *testing.T) {
	c := &Credential{}
	steps := []struct {
		n  uint32
		ok bool
	}{
		{1, true}, {3, true}, {2, true}, // 2 arrives late: inside the window, new
		{2, false}, {3, false}, {1, false}, // repeats
		{300, true}, {44, true}, {43, false}, // 43 is 257 below: outside the window
		{300, false}, {301, true}, {299, true}, {299, false}, {46, true}, {46, false},
		{1000, true}, {999, true}, {998, true}, {999, false}, {300, false},
	}
	for i, s := range steps {
		err := c.AcceptCounter(s.n)
		if s.ok && err != nil {
			t.Fatalf("step %d: counter %d refused: %v", i, s.n, err)
		}
		if !s.ok && !errors.Is(err, ErrCounterRegression) {
			t.Fatalf("step %d: counter %d accepted (or wrong error %v)", i, s.n, err)
		}
	}
	if c.Counter != 1000 {
		t.Fatalf("highest = %d", c.Counter)
	}
}
