package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
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

// countHandler counts the records logged at Warn or above.
type countHandler struct{ n *atomic.Int64 }

func (h countHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h countHandler) Handle(context.Context, slog.Record) error    { h.n.Add(1); return nil }
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h countHandler) WithGroup(string) slog.Handler                { return h }

// TestRefusalsLoggedOncePerMinute: any local workload can make the TPM
// refuse it as often as it likes; the log gets one line a minute per
// workload and reason, while each refusal is still answered.
func TestRefusalsLoggedOncePerMinute(t *testing.T) {
	busy := &RetryError{Err: ErrBusy, After: time.Second}
	overloaded := &RetryError{Err: ErrOverloaded, After: time.Second}
	tests := []struct {
		name     string
		workload []string
		errs     []error
		logged   int64
	}{
		{"same-reason", []string{"a", "a", "a", "a"}, []error{busy, busy, busy, busy}, 1},
		{"two-reasons", []string{"a", "a", "a", "a"}, []error{busy, overloaded, busy, overloaded}, 2},
		{"two-workloads", []string{"a", "b", "a", "b"}, []error{busy, busy, busy, busy}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			a := &Agent{log: slog.New(countHandler{&n})}
			for i, err := range tc.errs {
				w := httptest.NewRecorder()
				a.tpmErr(w, &caller{workload: tc.workload[i]}, err)
				if w.Code < 400 {
					t.Fatalf("refusal %d answered %d", i, w.Code)
				}
			}
			if n.Load() != tc.logged {
				t.Fatalf("%d lines logged for %d refusals, want %d", n.Load(), len(tc.errs), tc.logged)
			}
		})
	}
}

// TestTurnRequestWithBodyRefused: a turn request has no body; one with a
// body is refused at once (400), not held: the server would not notice its
// client leave while the body is unread.
func TestTurnRequestWithBodyRefused(t *testing.T) {
	q := learned(100 * time.Millisecond) // idle: a turn would be given at once
	a := &Agent{log: slog.New(slog.DiscardHandler), queue: q}
	w := httptest.NewRecorder()
	a.natsTurn(w, httptest.NewRequest(http.MethodPost, api.AgentPathNATSTurn, strings.NewReader("{}")), &caller{workload: "w"})
	if w.Code != http.StatusBadRequest {
		t.Fatalf("turn request with a body: %d, want 400", w.Code)
	}
	if len(q.turns.given) != 0 {
		t.Fatal("a turn was given to a request with a body")
	}
}
