package agent

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzSocketRequests feeds the socket API's request bodies what any local
// process may send. Parsing must never panic, and every body is answered
// with a status a client can act on: 400 for what does not parse or
// validate; 503 for a valid request (the TPM queue here is closed, so
// nothing is signed). Never 200, never 500.
func FuzzSocketRequests(f *testing.F) {
	for _, seed := range []string{
		`{"challenge":"AAAAAAAAAAAAAAAAAAAAAA"}`, `{"nonce":"abc"}`, `{"challenge":"***"}`, `{"nonce":""}`,
		`{"challenge":"AA"}`, `{"nonce":1}`, `{"x":1}`, `[`, `null`, "\xff", `{"challenge":"` + string(bytes.Repeat([]byte("A"), 5000)) + `"}`,
	} {
		f.Add([]byte(seed))
	}
	q := newTPMQueue(1)
	q.close()
	a := &Agent{log: slog.New(slog.DiscardHandler), queue: q, metrics: newAgentMetrics(q)}
	c := &caller{peer: &Peer{PID: 1}, workload: "w", cred: &Credential{ID: []byte("0123456789abcdef")}}
	f.Fuzz(func(t *testing.T, body []byte) {
		for name, h := range map[string]func(http.ResponseWriter, *http.Request, *caller){"assertion": a.assertion, "nats/sign": a.natsSign} {
			w := httptest.NewRecorder()
			h(w, httptest.NewRequest(http.MethodPost, "/v1/"+name, bytes.NewReader(body)), c)
			if w.Code != http.StatusBadRequest && w.Code != http.StatusServiceUnavailable {
				t.Fatalf("%s %q: status %d", name, body, w.Code)
			}
		}
	})
}
