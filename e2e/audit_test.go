package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

func wantBrokenAt(t *testing.T, what string, err error, seq uint64) {
	t.Helper()
	var ce *audit.ChainError
	if !errors.As(err, &ce) || ce.Seq != seq {
		t.Fatalf("%s: verify = %v, want the chain broken at event %d", what, err, seq)
	}
}

func TestAuditTrail(t *testing.T) {
	f := fleettest.New(t, fleettest.WithRoot(), func(f *fleettest.Fleet) { f.Config.Audit.AllowDelete = true })
	h := f.NewHost(t)
	for range 3 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
	if nc, err := nats.Connect(f.URL(), nats.Token("tpmauthn-join-forged"), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("forged token accepted")
	}
	// A burst of denials queues events faster than one append each, so
	// some messages hold several events and sign only the last. Each is
	// for another EK, so that the callout does not aggregate them (it
	// counts repeats of one reason from one address).
	burst := func() {
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				user := nats.UserInfo(fmt.Sprintf("%sburst%058x", api.EKUserPrefix, i), "")
				if nc, err := nats.Connect(f.URL(), user, nats.MaxReconnects(0)); err == nil {
					nc.Close()
				}
			})
		}
		wg.Wait()
	}
	burst()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "audit test"}, nil)
	f.Verifier.FlushAudit()

	var st api.Status
	f.MustAdmin(t, "status", nil, &st)
	var raws []audit.RawEvent
	f.MustAdmin(t, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raws)
	n, err := audit.VerifyRawEvents(raws, st.AuditKey, "")
	if err != nil || n != len(raws) {
		t.Fatalf("verify the real stream: %d of %d, %v", n, len(raws), err)
	}
	var kinds []string
	for _, e := range f.AuditEvents(t) {
		kinds = append(kinds, e.Kind+"/"+e.Result)
	}
	for _, want := range []string{"enroll/ok", "register/ok", "connect/allow", "connect.enroll/deny", "revoke/ok"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("audit lacks %s: %v", want, kinds)
		}
	}
	lines := make([][]byte, len(raws))
	k, firstSigned := -1, -1 // an unsigned event in the middle; the first signed one
	for i, r := range raws {
		lines[i] = r.Data
		var e audit.Event
		_ = json.Unmarshal(r.Data, &e)
		if e.Sig == "" && k < 0 && i > len(raws)/4 && raws[i+1].Msg == r.Msg {
			k = i
		}
		if e.Sig != "" && firstSigned < 0 {
			firstSigned = i
		}
	}
	if k < 0 {
		t.Fatalf("no stream message holds several events among %d: the burst was not batched", len(raws))
	}
	kseq := raws[k].Seq

	edited := slices.Clone(lines)
	edited[k] = bytes.Replace(lines[k], []byte(`"result":"`), []byte(`"result":"x`), 1)
	_, err = audit.VerifyChain(edited, st.AuditKey, "")
	wantBrokenAt(t, "edited line", err, kseq)

	removed := slices.Delete(slices.Clone(lines), k, k+1)
	_, err = audit.VerifyChain(removed, st.AuditKey, "")
	wantBrokenAt(t, "removed line", err, kseq)

	reordered := slices.Clone(lines)
	reordered[k], reordered[k+1] = reordered[k+1], reordered[k]
	_, err = audit.VerifyChain(reordered, st.AuditKey, "")
	wantBrokenAt(t, "reordered lines", err, kseq)

	// The tail of a message cut off: its last signed event is gone.
	_, err = audit.VerifyChain(lines[:k+1], st.AuditKey, "")
	wantBrokenAt(t, "message cut short", err, kseq-uint64(k-firstUnsignedBefore(raws, lines, k)))

	// Re-signed with another key: the signature gives it away.
	other, _ := nkeys.CreateAccount()
	otherPub, _ := other.PublicKey()
	_, err = audit.VerifyChain(lines, otherPub, "")
	wantBrokenAt(t, "another key", err, raws[firstSigned].Seq)

	// A message deleted from the stream: the chain breaks at its first event.
	kmsg := raws[k].Msg
	first := kseq
	for _, r := range raws {
		if r.Msg == kmsg {
			first = r.Seq
			break
		}
	}
	// The product's credentials may not delete it (TestAttackAuditStreamDestroyedWithProductCredentials):
	// an administrator outside the product does.
	stream, err := f.RootJS.Stream(context.Background(), audit.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(context.Background(), kmsg); err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raws)
	_, err = audit.VerifyRawEvents(raws, st.AuditKey, "")
	wantBrokenAt(t, "deleted message", err, first)
}

// firstUnsignedBefore is the index of the first of the unsigned events that
// end at index k (the events of k's message before it).
func firstUnsignedBefore(raws []audit.RawEvent, lines [][]byte, k int) int {
	i := k
	for i > 0 && raws[i-1].Msg == raws[k].Msg {
		var e audit.Event
		_ = json.Unmarshal(lines[i-1], &e)
		if e.Sig != "" {
			break
		}
		i--
	}
	return i
}

func TestAuditStreamRefusesDeletion(t *testing.T) {
	f := fleettest.New(t)
	f.NewHost(t) // an enrolled host: events in the stream
	f.Verifier.FlushAudit()
	stream := auditStream(t, f)
	if err := stream.DeleteMsg(context.Background(), 1); err == nil {
		t.Fatal("the audit stream let a message be deleted")
	}
}

// auditStream opens the audit stream as the verifier's own user would (the
// access an attacker on the verifier's host would have).
func auditStream(t *testing.T, f *fleettest.Fleet) jetstream.Stream {
	t.Helper()
	kp, err := keys.LoadNKey(verifierSeed(f))
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := kp.PublicKey()
	nc, err := nats.Connect(f.URL(), nats.Nkey(pk, kp.Sign))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	stream, err := js.Stream(context.Background(), "TPMAUTHN_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

func verifierSeed(f *fleettest.Fleet) string {
	p := keys.SysSeedFile(f.Config.DataDir)
	return p[:len(p)-len("sys.nk")] + "verifier.nk"
}

// TestSessionEndAudited: the end of a granted session is audited with the
// server's reason and what the session sent and received; a kicked one too.
func TestSessionEndAudited(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	cid, _ := nc.GetClientID()
	for range 3 {
		if err := nc.Publish("demo.audit", []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	var end *audit.Event
	eventually.Until(t, 5*time.Second, func() error {
		for _, e := range f.AuditEvents(t) {
			if e.Kind == "disconnect" && e.Client == cid {
				end = &e
				return nil
			}
		}
		return fmt.Errorf("no disconnect event for client %d in the audit trail after the session closed", cid)
	})
	if end.Credential != who.CredentialID || end.Workload != who.Workload || end.Session == nil {
		t.Fatalf("disconnect event %+v: want credential %s, workload %s and session stats", end, who.CredentialID, who.Workload)
	}
	if st := end.Session; st.MsgsSent != 3 || st.BytesSent != 30 || st.Start.IsZero() || end.Reason != "Client Closed" {
		t.Fatalf("session stats %+v, reason %q: want 3 messages, 30 bytes sent, a start time, \"Client Closed\"", st, end.Reason)
	}
}
