package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
)

// TestWatchBackoff: a refused host does not dial the verifier every few
// seconds (each try is a TPM signature and a callout), nor does an agent
// whose verifier lacks the endpoint.
func TestWatchBackoff(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want time.Duration
	}{
		{fmt.Errorf("x: %w", ErrHostRefused), 10 * time.Minute},
		{fmt.Errorf("x: %w", nats.ErrNoResponders), time.Minute},
		{&VerifierError{Code: api.CodeUpgradeAgent}, time.Minute},
		{nats.ErrTimeout, 5 * time.Second},
	} {
		if got := watchBackoff(tc.err); got != tc.want {
			t.Errorf("watchBackoff(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
