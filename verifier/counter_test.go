package verifier

import (
	"errors"
	"testing"

	"github.com/tpmauthn/tpmauthn/attestation"
)

func TestAcceptCounter(t *testing.T) {
	c := &Credential{}
	steps := []struct {
		n  uint32
		ok bool
	}{
		{1, true}, {3, true}, {2, true}, // 2 arrives late: inside the window, new
		{2, false}, {3, false}, {1, false}, // repeats
		{100, true}, {36, true}, {35, false}, // 35 is 65 below: outside the window
		{100, false}, {101, true}, {99, true}, {99, false},
	}
	for i, s := range steps {
		err := c.acceptCounter(s.n)
		if s.ok && err != nil {
			t.Fatalf("step %d: counter %d refused: %v", i, s.n, err)
		}
		if !s.ok && !errors.Is(err, attestation.ErrCounterRegression) {
			t.Fatalf("step %d: counter %d accepted (or wrong error %v)", i, s.n, err)
		}
	}
	if c.Counter != 101 {
		t.Fatalf("highest = %d", c.Counter)
	}
}
