package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// connectAs connects with the nkey seed in file and returns the connection
// and the asynchronous errors the server sends it (permission violations).
func connectAs(t *testing.T, url, file string) (*nats.Conn, <-chan error) {
	t.Helper()
	kp, err := keys.LoadNKey(file)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := kp.PublicKey()
	errs := make(chan error, 16)
	nc, err := nats.Connect(url, nats.Nkey(pk, kp.Sign), nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// TestAttackAuditStreamDestroyedWithProductCredentials (M3): the verifier's
// own user, its system user and the operator's user try every JetStream API
// call that deletes, purges, shrinks or replaces the audit stream. The
// server refuses each for its permissions, and the stream keeps every
// message and its configuration.
func TestAttackAuditStreamDestroyedWithProductCredentials(t *testing.T) {
	f := fleettest.New(t)
	f.NewHost(t)
	f.Verifier.FlushAudit()
	dir := f.Config.DataDir
	verifierNC, verifierErrs := connectAs(t, f.URL(), filepath.Join(dir, "verifier.nk"))
	sysNC, sysErrs := connectAs(t, f.URL(), keys.SysSeedFile(dir))
	opNC, opErrs := connectAs(t, f.URL(), filepath.Join(dir, "operator.nk"))

	js, _ := jetstream.New(verifierNC)
	stream, err := js.Stream(t.Context(), audit.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	before := stream.CachedInfo()
	if before.State.Msgs == 0 {
		t.Fatal("no audit events to lose")
	}
	shrunk := before.Config
	shrunk.MaxAge, shrunk.MaxBytes, shrunk.MaxMsgs = time.Second, 1, 1
	shrunkBody, _ := json.Marshal(shrunk)
	const s = audit.StreamName
	for _, tc := range []struct {
		name    string
		nc      *nats.Conn
		errs    <-chan error
		subject string
		body    string
	}{
		{"verifierDeletesStream", verifierNC, verifierErrs, "$JS.API.STREAM.DELETE." + s, ""},
		{"verifierPurgesStream", verifierNC, verifierErrs, "$JS.API.STREAM.PURGE." + s, "{}"},
		{"verifierDeletesMessage", verifierNC, verifierErrs, "$JS.API.STREAM.MSG.DELETE." + s, `{"seq":1,"no_erase":true}`},
		{"verifierShrinksLimits", verifierNC, verifierErrs, "$JS.API.STREAM.UPDATE." + s, string(shrunkBody)},
		{"verifierRestoresOverIt", verifierNC, verifierErrs, "$JS.API.STREAM.RESTORE." + s, "{}"},
		{"verifierRemovesPeer", verifierNC, verifierErrs, "$JS.API.STREAM.PEER.REMOVE." + s, `{"peer":"x"}`},
		{"sysPurgesAccount", sysNC, sysErrs, "$JS.API.ACCOUNT.PURGE." + keys.AccountAuth, ""},
		{"operatorDeletesStream", opNC, opErrs, "$JS.API.STREAM.DELETE." + s, ""},
		{"operatorPurgesStream", opNC, opErrs, "$JS.API.STREAM.PURGE." + s, "{}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.nc.Request(tc.subject, []byte(tc.body), time.Second)
			if err == nil {
				t.Fatalf("%s answered: %s", tc.subject, resp.Data)
			}
			if errors.Is(err, nats.ErrPermissionViolation) {
				return
			}
			select { // the violation may arrive asynchronously
			case aerr := <-tc.errs:
				if !errors.Is(aerr, nats.ErrPermissionViolation) || !strings.Contains(aerr.Error(), tc.subject) {
					t.Fatalf("%s: %v, then %v; want a permissions violation for it", tc.subject, err, aerr)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("%s: %v and no permissions violation", tc.subject, err)
			}
		})
	}
	after, err := js.Stream(context.Background(), audit.StreamName)
	if err != nil {
		t.Fatalf("the audit stream is gone: %v", err)
	}
	ai := after.CachedInfo()
	if ai.Created != before.Created || ai.State.FirstSeq != before.State.FirstSeq || ai.State.LastSeq < before.State.LastSeq ||
		ai.Config.MaxAge != before.Config.MaxAge || ai.Config.MaxBytes != before.Config.MaxBytes || !ai.Config.DenyDelete || !ai.Config.DenyPurge {
		t.Fatalf("the audit stream changed: before %+v %+v, after %+v %+v", before.State, before.Config, ai.State, ai.Config)
	}
	// And a restart of the verifier, which may no longer update the stream,
	// still opens it.
	f.Verifier.Close()
	f.Start(t)
	var st api.Status
	f.MustAdmin(t, "status", nil, &st)
}

// buildCtl builds tpmauthnctl.
func buildCtl(t *testing.T) string {
	t.Helper()
	bin := buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthnctl")
	return bin
}

// TestAttackAuditStreamRecreatedFromOldPrefix (M3): an administrator
// outside the product deletes the audit stream and re-creates it from an
// older prefix of its own messages. The prefix is a valid signed chain, so
// the chain alone says intact; the verifier's checkpoint (at its restart)
// and the operator's witness (tpmauthnctl audit verify) do not, and the
// chain goes on with the alert as its next event instead of restarting
// silently from the cut.
func TestAttackAuditStreamRecreatedFromOldPrefix(t *testing.T) {
	ctl := buildCtl(t)
	f := fleettest.New(t, fleettest.WithRoot())
	h := f.NewHost(t)
	for range 3 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
	f.Verifier.FlushAudit()
	witness := filepath.Join(t.TempDir(), "witness.json")
	verify := func() (string, error) {
		out, err := exec.Command(ctl, "--data-dir", f.Config.DataDir, "audit", "verify", "--witness", witness).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(); err != nil || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify before the attack: %v: %s", err, out)
	}

	ctx := context.Background()
	stream, err := f.RootJS.Stream(ctx, audit.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info := stream.CachedInfo()
	if info.State.LastSeq < 2 {
		t.Fatalf("%d messages: too few for a prefix", info.State.LastSeq)
	}
	var prefix [][]byte
	for seq := uint64(1); seq <= info.State.LastSeq/2; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		prefix = append(prefix, m.Data)
	}
	alerts, err := f.Root.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	f.Root.Flush()

	f.Verifier.Close() // a clean shutdown: the checkpoint has the head
	if err := f.RootJS.DeleteStream(ctx, audit.StreamName); err != nil {
		t.Fatalf("the administrator deletes the stream: %v", err)
	}
	if _, err := f.RootJS.CreateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	for _, data := range prefix {
		if _, err := f.RootJS.Publish(ctx, audit.Subject, data); err != nil {
			t.Fatal(err)
		}
	}
	// The chain alone cannot tell: the prefix verifies.
	recreated, err := f.RootJS.Stream(ctx, audit.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	var raws []audit.RawEvent
	for seq := uint64(1); seq <= uint64(len(prefix)); seq++ {
		m, err := recreated.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(m.Data), "\n") {
			raws = append(raws, audit.RawEvent{Msg: seq, Data: json.RawMessage(line)})
		}
	}
	if _, err := audit.VerifyRawEvents(raws, keys.Public(f.Verifier.Keys().Issuer), ""); err != nil {
		t.Fatalf("the re-created prefix does not verify on its own (the attack is not what it should be): %v", err)
	}

	f.Start(t)
	m, err := alerts.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal("no alert after restarting on a stream behind the checkpoint")
	}
	if m.Subject != "tpmauthn.alerts."+auditlog.AlertTruncated {
		t.Fatalf("alert on %s, want %s", m.Subject, auditlog.AlertTruncated)
	}
	f.Verifier.FlushAudit()
	events := f.AuditEvents(t)
	if len(events) <= len(raws) {
		t.Fatalf("%d events after the restart, the prefix had %d", len(events), len(raws))
	}
	firstNew := events[len(raws)]
	if firstNew.Kind != "alert."+auditlog.AlertTruncated || !strings.Contains(firstNew.Reason, "behind a checkpoint") {
		t.Fatalf("the event after the cut is %s %q, want the truncation alert", firstNew.Kind, firstNew.Reason)
	}

	out, err := verify()
	if err == nil || !(strings.Contains(out, "TRUNCATED") || strings.Contains(out, "REWRITTEN")) {
		t.Fatalf("audit verify after the stream was re-created from a prefix: %v: %s", err, out)
	}
	t.Logf("audit verify: %s", strings.TrimSpace(out))
}

// TestAttackAuditStreamFullFailsClosed (M4): once the audit stream refuses
// appends for its limits, the verifier grants no connection (it could not
// record it), says why in the refusal's event, and raises an alert; when an
// administrator raises the limit, the queued events are appended and
// connects are granted again. Nothing stalls meanwhile: refusals are
// answered at once.
func TestAttackAuditStreamFullFailsClosed(t *testing.T) {
	f := fleettest.New(t, fleettest.WithRoot())
	h := f.NewHost(t)
	f.Verifier.FlushAudit()
	alerts, err := f.Root.SubscribeSync("tpmauthn.alerts." + auditlog.AlertAppendFailing)
	if err != nil {
		t.Fatal(err)
	}
	f.Root.Flush()
	ctx := context.Background()
	stream, err := f.RootJS.Stream(ctx, audit.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	full := stream.CachedInfo().Config
	full.MaxMsgs = int64(stream.CachedInfo().State.Msgs) // DiscardNew: the next append is refused
	if _, err := f.RootJS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	// Any event finds the stream full.
	if nc, err := nats.Connect(f.URL(), nats.Token("tpmauthn-join-forged"), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("forged token accepted")
	}
	if _, err := alerts.NextMsg(10 * time.Second); err != nil {
		t.Fatal("no audit_append_failing alert for a full stream")
	}
	start := time.Now()
	if nc, err := h.Connect(t); err == nil {
		nc.Close()
		t.Fatal("a connect was granted while the audit stream refused its event")
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("the refusal took %v: the connect path stalled on the audit trail", took)
	}

	full.MaxMsgs = -1 // the administrator makes room
	if _, err := f.RootJS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	var granted bool
	for range 50 {
		if nc, err := h.Connect(t); err == nil {
			nc.Close()
			granted = true
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !granted {
		t.Fatal("connects still refused after the stream has room again")
	}
	var refused bool
	for _, e := range f.AuditEvents(t) {
		if e.Kind == "connect" && e.Result == audit.DenyText && strings.Contains(e.Reason, "audit stream is full") {
			refused = true
		}
	}
	if !refused {
		t.Fatal("the refusal while the stream was full is not in the trail with its reason")
	}
}
