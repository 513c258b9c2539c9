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

// TestAcceptCounterZero: a browser credential whose counter stays 0 (a
// synced passkey, a session key) is accepted every time; a TPM credential's
// 0 repeated is not, and a browser credential's counter that went above 0
// may not go back to 0.
func TestAcceptCounterZero(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     Credential
		steps []uint32
		ok    []bool
	}{
		{"synced", Credential{Person: "p", Kind: KindPasskey, Synced: true}, []uint32{0, 0, 0}, []bool{true, true, true}},
		{"sessionKey", Credential{Person: "p", Kind: KindSessionKey}, []uint32{0, 0}, []bool{true, true}},
		{"passkeyBack", Credential{Person: "p", Kind: KindPasskey}, []uint32{0, 5, 0, 4, 4}, []bool{true, true, false, true, false}},
		{"tpm", Credential{Host: "h", Person: "p"}, []uint32{0, 0}, []bool{false, false}},
		{"hostedPasskey", Credential{Host: "h", Person: "p", Kind: KindPasskey}, []uint32{0}, []bool{false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			for i, n := range tc.steps {
				err := c.AcceptCounter(n)
				if tc.ok[i] && err != nil {
					t.Fatalf("step %d: counter %d refused: %v", i, n, err)
				}
				if !tc.ok[i] && !errors.Is(err, ErrCounterRegression) {
					t.Fatalf("step %d: counter %d accepted (or wrong error %v)", i, n, err)
				}
			}
		})
	}
}
