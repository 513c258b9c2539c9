package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
)

// TestOperatorActionAuditedBeforeReply: an operator action returns only once
// its event is in the stream, even behind a long queue of connect events;
// and creating a join token is audited.
func TestOperatorActionAuditedBeforeReply(t *testing.T) {
	v := startLocal(t)
	for i := range 3000 {
		v.audit.Record(audit.Event{Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d", i)})
	}
	body, _ := json.Marshal(api.TokenCreateRequest{TTL: time.Hour, Roles: []string{"demo"}})
	if _, err := v.adminTokenCreate(t.Context(), body); err != nil {
		t.Fatal(err)
	}
	if n := v.AuditBacklog(); n != 0 {
		t.Fatalf("%d events still queued when the operator's command returned", n)
	}
	last, err := lastEvent(t, v)
	if err != nil {
		t.Fatal(err)
	}
	if last.Kind != "token.create" || last.Actor != "operator" || !slices.Equal(last.Roles, []string{"demo"}) {
		t.Fatalf("last event in the stream: %+v, want the token.create", last)
	}
}

// startLocal starts a verifier with an embedded server on a free port,
// stopped when the test ends.
func startLocal(tb testing.TB) *Verifier {
	tb.Helper()
	v, err := New(Config{DataDir: tb.TempDir(), NATSListen: "127.0.0.1:-1"})
	if err != nil {
		tb.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(v.Close)
	return v
}

// lastEvent is the last event in the audit stream.
func lastEvent(t *testing.T, v *Verifier) (audit.Event, error) {
	t.Helper()
	last, err := v.audit.LastSeq(t.Context())
	if err != nil {
		return audit.Event{}, err
	}
	raws, err := v.audit.ReadRaw(t.Context(), last, auditlog.MaxBatch)
	if err != nil {
		return audit.Event{}, err
	}
	if len(raws) == 0 {
		return audit.Event{}, errors.New("the audit stream is empty")
	}
	var e audit.Event
	err = json.Unmarshal(raws[len(raws)-1].Data, &e)
	return e, err
}

// An operator action waits for its audit event (at most auditWait) after
// its handler returns, with its worker slot given back: while JetStream
// refuses the append (here: the stream is full), another request still gets
// the only slot and its answer first.
func TestAuditWaitFreesTheWorkerSlot(t *testing.T) {
	v, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1", Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	type answer struct {
		subj string
		at   time.Time
	}
	answers := make(chan answer, 2)
	// One subscription: answers are seen in the order they were sent.
	if _, err := v.nc.Subscribe("test.>", func(m *nats.Msg) { answers <- answer{m.Subject, time.Now()} }); err != nil {
		t.Fatal(err)
	}
	if err := v.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	v.audit.Record(audit.Event{Kind: "connect", Result: "allow"}) // the stream holds at least one message
	v.FlushAudit()
	setMaxMsgs := func(full bool) {
		stream, err := v.st.js.Stream(t.Context(), auditlog.Stream)
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
		if _, err := v.st.js.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	setMaxMsgs(true)
	defer setMaxMsgs(false) // so that Close can append what waits

	action := v.handler("test.action", func(ctx context.Context, _ []byte) (any, error) {
		v.recordNow(ctx, audit.Event{Kind: "token.create", Result: "ok", Actor: "operator"})
		return "done", nil
	})
	read := v.handler("test.read", func(context.Context, []byte) (any, error) { return "read", nil })
	start := time.Now()
	action(fakeRequest{reply: "test.action"})
	read(fakeRequest{reply: "test.read"}) // takes the only slot once the action gives it back
	first, second := <-answers, <-answers
	if first.subj != "test.read" || first.at.Sub(start) > auditWait/2 {
		t.Fatalf("first answer: %s after %v; the read should answer at once: the operator action held the only worker slot while it waited for the audit trail",
			first.subj, first.at.Sub(start))
	}
	if second.subj != "test.action" || second.at.Sub(start) < auditWait {
		t.Fatalf("second answer %s after %v: the action should answer once its wait (%v) is over", second.subj, second.at.Sub(start), auditWait)
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
