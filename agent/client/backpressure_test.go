package client

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestAgentErrorRetryAfter(t *testing.T) {
	tests := []struct {
		name   string
		header string
		body   string
		want   time.Duration
		msg    string
	}{
		{"ms", "2", `{"error":"busy","retry_after_ms":1200}`, 1200 * time.Millisecond, "busy"},
		{"header-only", "3", `{"error":"busy"}`, 3 * time.Second, "busy"},
		{"none", "", `{"error":"no workload matches"}`, 0, "no workload matches"},
		{"not-json", "1", `oops`, time.Second, "503 Service Unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable", Header: http.Header{}}
			if tc.header != "" {
				resp.Header.Set("Retry-After", tc.header)
			}
			e := agentError(resp, []byte(tc.body))
			if e.RetryAfter != tc.want || e.Message != tc.msg || e.Status != http.StatusServiceUnavailable {
				t.Fatalf("agentError = %+v, want retry after %v, message %q", e, tc.want, tc.msg)
			}
		})
	}
}

// TestRetryBusy: a refusal with a wait is retried after it while the retry
// can finish in time; other errors, and refusals past the deadline or the
// retry bound, are returned as they are.
func TestRetryBusy(t *testing.T) {
	busy := &Error{Status: 503, Message: "busy", RetryAfter: 10 * time.Millisecond}
	longBusy := &Error{Status: 503, Message: "busy", RetryAfter: time.Hour}
	other := &Error{Status: 403, Message: "no workload matches"}
	tests := []struct {
		name     string
		deadline time.Duration // 0: none
		errs     []error       // f's answers in turn; nil ends
		calls    int
		want     error
	}{
		{"succeeds-after-two", time.Minute, []error{busy, busy, nil}, 3, nil},
		{"other-error", time.Minute, []error{other, nil}, 1, other},
		{"wait-past-deadline", time.Minute, []error{longBusy, nil}, 1, longBusy},
		{"no-deadline-bounded", 0, []error{busy, busy, busy, busy, busy, nil}, maxBusyRetries + 1, busy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			calls := 0
			err := retryBusy(ctx, func() error {
				calls++
				return tc.errs[calls-1]
			})
			if err != tc.want || calls != tc.calls {
				t.Fatalf("retryBusy = %v after %d calls, want %v after %d", err, calls, tc.want, tc.calls)
			}
		})
	}
}
