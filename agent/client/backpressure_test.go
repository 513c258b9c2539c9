package client

import (
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
