package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// TestBusyTPMRefusals: a refusal for a busy TPM says when to come back, in
// the Retry-After header (whole seconds, rounded up) and retry_after_ms.
func TestBusyTPMRefusals(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	tests := []struct {
		name       string
		err        error
		status     int
		retryAfter string
		ms         int64
	}{
		{"overloaded", fmt.Errorf("sign: %w", &RetryError{Err: ErrOverloaded, After: 1200 * time.Millisecond}), http.StatusServiceUnavailable, "2", 1200},
		{"busy", &RetryError{Err: ErrBusy, After: 300 * time.Millisecond}, http.StatusTooManyRequests, "1", 300},
		{"too-close", &RetryError{Err: ErrDeadline, After: 3 * time.Second}, http.StatusServiceUnavailable, "3", 3000},
		{"deadline-no-hint", ErrDeadline, http.StatusServiceUnavailable, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			a.tpmErr(w, &caller{workload: "w"}, tc.err)
			var body api.AgentError
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status || w.Header().Get("Retry-After") != tc.retryAfter || body.RetryAfterMS != tc.ms || body.Error == "" {
				t.Fatalf("%d Retry-After %q %+v; want %d %q %d ms", w.Code, w.Header().Get("Retry-After"), body, tc.status, tc.retryAfter, tc.ms)
			}
		})
	}
}
