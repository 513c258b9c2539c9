package natsapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func TestAuditWaitFreesTheWorkerSlot(t *testing.T) {
	e := testenv.New(t)
	srv := New(Config{Conn: e.NC, Workers: 1, Trail: e.Trail, Metrics: nopMetrics{}})
	defer srv.Close()
	type answer struct {
		subj string
		at   time.Time
	}
	answers := make(chan answer, 2)
	// One subscription: answers are seen in the order they were sent.
	if _, err := e.NC.Subscribe("test.>", func(m *nats.Msg) { answers <- answer{m.Subject, time.Now()} }); err != nil {
		t.Fatal(err)
	}
	if err := e.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	e.Trail.Record(audit.Event{Kind: "connect", Result: "allow"}) // the stream holds at least one message
	e.Audit.Flush()
	setMaxMsgs := func(full bool) {
		stream, err := e.JS.Stream(t.Context(), auditlog.Stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		cfg := info.Config
		cfg.MaxMsgs = -1
		if full {
			cfg.MaxMsgs = int64(info.State.Msgs) // and takes no more (DiscardNew)
		}
		if _, err := e.JS.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	setMaxMsgs(true)
	defer setMaxMsgs(false) // so that Close can append what waits

	action := srv.Handle("test.action", func(ctx context.Context, _ []byte) (any, error) {
		e.Trail.RecordNow(ctx, audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
		return "done", nil
	})
	read := srv.Handle("test.read", func(context.Context, []byte) (any, error) { return "read", nil })
	start := time.Now()
	action(fakeRequest{reply: "test.action"})
	read(fakeRequest{reply: "test.read"}) // takes the only slot once the action gives it back
	first, second := <-answers, <-answers
	if first.subj != "test.read" || first.at.Sub(start) > auditlog.WaitLimit/2 {
		t.Fatalf("first answer: %s after %v; the read should answer at once: the operator action held the only worker slot while it waited for the audit trail",
			first.subj, first.at.Sub(start))
	}
	if second.subj != "test.action" || second.at.Sub(start) < auditlog.WaitLimit {
		t.Fatalf("second answer %s after %v: the action should answer once its wait (%v) is over", second.subj, second.at.Sub(start), auditlog.WaitLimit)
	}
}

// fakeRequest is a micro.Request for calling a handler directly.
type fakeRequest struct{ reply string }

func (fakeRequest) Respond([]byte, ...micro.RespondOpt) error               { return nil }
func (fakeRequest) RespondJSON(any, ...micro.RespondOpt) error              { return nil }
func (fakeRequest) Error(string, string, []byte, ...micro.RespondOpt) error { return nil }
func (fakeRequest) Data() []byte                                            { return nil }
func (fakeRequest) Headers() micro.Headers                                  { return nil }
func (fakeRequest) Subject() string                                         { return "test" }
func (r fakeRequest) Reply() string                                         { return r.reply }

type nopMetrics struct{}

func (nopMetrics) Observe(string, string, time.Duration) {}

// Code: the first api.Error an error wraps names its code and the whole
// error is the message (what was wrong, for the operator); the libraries'
// errors map to theirs; anything else is internal and says nothing more. A
// message is one header line, whatever a requester put in it.
func TestCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code string
		msg  string
	}{
		{"sentinel", api.ErrTokenInvalid, api.CodeTokenInvalid, api.ErrTokenInvalid.Message},
		{"wrapped", fmt.Errorf("%w: token abc is used", api.ErrTokenInvalid), api.CodeTokenInvalid, "join token unknown, used or expired: token abc is used"},
		{"outer wins", fmt.Errorf("%w: %w", api.ErrBadRequest, api.ErrNotFound), api.CodeBadRequest, "bad request: not found"},
		{"unavailable", fmt.Errorf("%w: hosts get h-1: nats: timeout", api.ErrUnavailable), api.CodeUnavailable, api.ErrUnavailable.Message + ": hosts get h-1: nats: timeout"},
		{"attestation", fmt.Errorf("x: %w", attestation.ErrEKUntrusted), api.CodeEKUntrusted, "x: " + attestation.ErrEKUntrusted.Error()},
		{"transition", fmt.Errorf("x: %w", record.ErrTransition), api.CodeBadRequest, "x: " + record.ErrTransition.Error()},
		{"headerInjection", fmt.Errorf("%w: workload \"a\r\nNats-Service-Error-Code: 200\"", api.ErrBadRequest), api.CodeBadRequest,
			`bad request: workload "a  Nats-Service-Error-Code: 200"`},
		{"long", fmt.Errorf("%w: %s", api.ErrBadRequest, strings.Repeat("é", 1000)), api.CodeBadRequest,
			strings.ToValidUTF8(("bad request: " + strings.Repeat("é", 1000))[:maxErrorText], "") + "…"},
		{"other", errors.New("secret detail"), api.CodeInternal, "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := Code(tc.err)
			if code != tc.code || msg != tc.msg {
				t.Fatalf("Code(%v) = %s, %q; want %s, %q", tc.err, code, msg, tc.code, tc.msg)
			}
		})
	}
}

// M5: the operator API shared the worker slots of the v1 endpoints, which
// any enrollment session can flood. The verifier runs them as two Servers:
// one whose slots are all taken does not hold up the other.
func TestServersHaveTheirOwnSlots(t *testing.T) {
	e := testenv.New(t)
	v1 := New(Config{Conn: e.NC, Workers: 1, Trail: e.Trail, Metrics: nopMetrics{}})
	admin := New(Config{Conn: e.NC, Workers: 1, Trail: e.Trail, Metrics: nopMetrics{}})
	answers := make(chan string, 2)
	if _, err := e.NC.Subscribe("test.>", func(m *nats.Msg) { answers <- m.Subject }); err != nil {
		t.Fatal(err)
	}
	if err := e.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	flood := v1.Handle("test.flood", func(context.Context, []byte) (any, error) { <-release; return "late", nil })
	op := admin.Handle("test.op", func(context.Context, []byte) (any, error) { return "done", nil })
	flood(fakeRequest{reply: "test.flood"}) // takes v1's only slot, and keeps it
	op(fakeRequest{reply: "test.op"})
	select {
	case got := <-answers:
		if got != "test.op" {
			t.Fatalf("first answer %s, want the operator's", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the operator API waited for a slot of the flooded v1 endpoints")
	}
	close(release)
	if got := <-answers; got != "test.flood" {
		t.Fatalf("second answer %s", got)
	}
	v1.Close()
	admin.Close()
}
