package fleettest

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// Request sends one request to a verifier endpoint on nc and returns the
// verifier's error code (the Nats-Service-Error-Code header), "" on
// success; then the reply is decoded into resp, unless resp is nil. A
// transport error fails t.
func Request(t testing.TB, nc *nats.Conn, subj string, req, resp any) string {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("%s: %v", subj, err)
	}
	m, err := nc.Request(subj, b, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subj, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return code
	}
	if resp != nil {
		if err := json.Unmarshal(m.Data, resp); err != nil {
			t.Fatalf("%s: %v", subj, err)
		}
	}
	return ""
}

// Admin calls an operator endpoint (api.SubjectAdminPrefix+op) on nc, an
// operator's connection: see Request.
func Admin(t testing.TB, nc *nats.Conn, op string, req, resp any) string {
	t.Helper()
	return Request(t, nc, api.SubjectAdminPrefix+op, req, resp)
}

// OperatorConn connects to url as the operator whose key the verifier keeps
// in dataDir (what tpmauthnctl does), and closes on cleanup.
func OperatorConn(t testing.TB, dataDir, url string) *nats.Conn {
	t.Helper()
	seed, _ := keys.OperatorFiles(dataDir)
	kp, err := keys.LoadNKey(seed)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := kp.PublicKey()
	nc, err := nats.Connect(url, ClientTLS(t, dataDir), nats.Nkey(pk, kp.Sign))
	if err != nil {
		t.Fatalf("operator connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// AuditEvents flushes the verifier's audit writer and reads the whole trail
// (up to 1000 events) through the operator endpoint.
func (f *Fleet) AuditEvents(t testing.TB) []audit.Event {
	t.Helper()
	f.Verifier.FlushAudit()
	var raw []audit.RawEvent
	f.MustAdmin(t, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raw)
	out := make([]audit.Event, 0, len(raw))
	for _, r := range raw {
		var e audit.Event
		if err := json.Unmarshal(r.Data, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// WantCode fails t unless err is the verifier's refusal with code, as the
// agent reports it.
func WantCode(t testing.TB, err error, code string) {
	t.Helper()
	var ve *agent.VerifierError
	if !errors.As(err, &ve) || ve.Code != code {
		t.Fatalf("error = %v, want verifier code %s", err, code)
	}
}

// Violations is a nats.ErrorHandler option that sends the connection's
// asynchronous errors (the server's permissions violations) to the channel
// it returns, for PublishRefused.
func Violations() (nats.Option, <-chan error) {
	errs := make(chan error, 16)
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}), errs
}

// PublishRefused sends a request on subj over nc (opened with Violations'
// option) and requires the server to refuse the publish: no answer, and a
// permissions violation naming subj.
func PublishRefused(t testing.TB, nc *nats.Conn, errs <-chan error, subj string) {
	t.Helper()
	if _, err := nc.Request(subj, []byte(`{}`), 500*time.Millisecond); err == nil {
		t.Fatalf("%s answered: the session may publish there", subj)
	}
	select {
	case err := <-errs:
		if msg := strings.ToLower(err.Error()); !strings.Contains(msg, "permissions violation") || !strings.Contains(msg, strings.ToLower(subj)) {
			t.Fatalf("%s: %v, want a permissions violation", subj, err)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("%s: no permissions violation reported", subj)
	}
}
