package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// watchClose connects and reports when the connection closes.
func watchClose(t *testing.T, s *stack, opts []nats.Option) (*nats.Conn, chan time.Time) {
	t.Helper()
	closed := make(chan time.Time, 1)
	nc, err := nats.Connect(s.v.ClientURL(), append(opts,
		nats.MaxReconnects(0), nats.NoReconnect(),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
		nats.ClosedHandler(func(*nats.Conn) { closed <- time.Now() }))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, closed
}

func waitClosed(t *testing.T, closed chan time.Time, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	select {
	case at := <-closed:
		d := at.Sub(since)
		if d > within {
			t.Fatalf("connection dropped %v after the command returned, want within %v", d, within)
		}
		return d
	case <-time.After(within + 2*time.Second):
		t.Fatalf("connection still open %v after the revocation", within+2*time.Second)
	}
	return 0
}

func TestRevokeLiveCredential(t *testing.T) {
	s := newStack(t)
	opts, err := client.NATSOptions(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	_, closed := watchClose(t, s, opts)
	who, _ := client.New(s.socket).WhoAmI(t.Context())
	s.admin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	d := waitClosed(t, closed, time.Now(), time.Second)
	t.Logf("revoke -> disconnect: %v", d)
	nc, err := s.connect(t)
	wantDenied(t, nc, err)
}

// credentialOptions connects as a credential by signing in-process with the
// agent's authenticator (the verifier sees the same assertions).
func credentialOptions(a *agent.Authenticator, id []byte) []nats.Option {
	return []nats.Option{nats.Nkey(b64url(id), func(nonce []byte) ([]byte, error) {
		as, err := a.Assert(id, attestation.NATSChallenge(nonce))
		if err != nil {
			return nil, err
		}
		return attestation.MarshalBundle(as)
	})}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestOffboardHostDropsEveryWorkload(t *testing.T) {
	s := newStack(t, withWorkloads(uidWorkload("billing", 1001), uidWorkload("copilot", 1002), uidWorkload("reports", 1003)))
	auth := s.ag.Authenticator()
	creds, err := auth.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	var closers []chan time.Time
	for _, c := range creds {
		if c.Name == "tpmauthn-agent" {
			continue
		}
		_, closed := watchClose(t, s, credentialOptions(auth, c.ID))
		closers = append(closers, closed)
	}
	if len(closers) != 3 {
		t.Fatalf("%d workload connections, want 3", len(closers))
	}
	who := s.ag.Authenticator()
	e, err := who.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	s.admin(t, "host.offboard", api.IDRequest{ID: e.HostID, Reason: "decommissioned"}, nil)
	now := time.Now()
	for _, c := range closers {
		waitClosed(t, c, now, time.Second)
	}
	var h record.Host
	s.admin(t, "host.show", api.IDRequest{ID: e.HostID}, &h)
	var cs []record.Credential
	s.admin(t, "credential.list", api.CredentialListRequest{Host: e.HostID}, &cs)
	for _, c := range cs {
		if c.Status != api.CredentialRevoked {
			t.Fatalf("credential %s (%s) is %s after offboarding", c.ID, c.Workload, c.Status)
		}
	}
	if h.Status != api.HostOffboarded || h.Reason != "decommissioned" {
		t.Fatalf("host after offboarding: %s %q", h.Status, h.Reason)
	}
}

// TestClonedKeyStoreQuarantined copies the TPM state and the agent's data
// directory, runs both copies and connects from both: the second use of a
// counter value quarantines the credential, raises an alert and is audited.
func TestClonedKeyStoreQuarantined(t *testing.T) {
	s := newStack(t)
	nc, err := s.connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(s.socket).WhoAmI(t.Context())

	alerts, err := s.op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ag.Close(); err != nil {
		t.Fatal(err)
	}
	clone := s.sw.Clone(t)
	cloneDir := t.TempDir()
	if err := os.CopyFS(cloneDir, os.DirFS(s.acfg.DataDir)); err != nil {
		t.Fatal(err)
	}
	s.startAgent(t)
	ccfg := s.acfg
	ccfg.TPM, ccfg.DataDir, ccfg.Socket = clone.URI(), cloneDir, filepath.Join(publicDir(t), "clone.sock")
	cloned, err := agent.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cloned.Start(context.Background()); err != nil {
		t.Fatalf("the copy: %v", err)
	}
	t.Cleanup(func() { _ = cloned.Close() })

	if nc, err = s.connect(t); err != nil {
		t.Fatalf("original after the copy: %v", err)
	}
	nc.Close()
	copyOpts, err := client.NATSOptions(ccfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	nc, err = nats.Connect(s.v.ClientURL(), append(copyOpts, nats.MaxReconnects(0))...)
	wantDenied(t, nc, err)

	m, err := alerts.NextMsg(5 * time.Second)
	if err != nil || !strings.HasSuffix(m.Subject, "counter_regression") {
		t.Fatalf("alert: %v %v", m, err)
	}
	var c record.Credential
	s.admin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Status != api.CredentialQuarantined {
		t.Fatalf("credential is %s, want quarantined", c.Status)
	}
	// Only that credential: the host's own credential still works.
	var h record.Host
	s.admin(t, "host.show", api.IDRequest{ID: who.Host}, &h)
	if h.Status != api.HostActive {
		t.Fatalf("host is %s: a tamper signal must quarantine one credential, not the host", h.Status)
	}
	nc, err = s.connect(t)
	wantDenied(t, nc, err)
	s.v.FlushAudit()
	events := readAudit(t, s)
	if !slices.ContainsFunc(events, func(e audit.Event) bool {
		return e.Kind == "alert.counter_regression" && e.Credential == who.CredentialID
	}) {
		t.Fatal("the alert is not in the audit trail")
	}
	// After review, an operator lifts the quarantine.
	s.admin(t, "credential.release", api.IDRequest{ID: who.CredentialID, Reason: "reviewed"}, nil)
	s.admin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Status != api.CredentialActive {
		t.Fatalf("after release: %s", c.Status)
	}
}

func readAudit(t *testing.T, s *stack) []audit.Event {
	t.Helper()
	var raw []audit.RawEvent
	s.admin(t, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raw)
	var out []audit.Event
	for _, r := range raw {
		var e audit.Event
		if err := json.Unmarshal(r.Data, &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// Ended connections leave the credential record at its next write (the
// servers' disconnect events), so the record holds the live sessions — the
// ones a revocation must kick — and not every connect of the JWT lifetime.
func TestEndedSessionsLeaveTheRecord(t *testing.T) {
	s := newStack(t)
	live, closed := watchClose(t, s, mustOptions(t, s))
	for range 5 {
		nc, err := s.connect(t)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
	time.Sleep(500 * time.Millisecond) // the disconnect events reach the verifier
	last, err := s.connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	who, err := client.New(s.socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var c record.Credential
	s.admin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	var got []uint64
	for _, r := range c.Sessions {
		got = append(got, r.Client)
	}
	liveID, _ := live.GetClientID()
	lastID, _ := last.GetClientID()
	if want := []uint64{liveID, lastID}; !slices.Equal(got, want) {
		t.Fatalf("sessions in the record: clients %v, want the two live ones %v (5 ended connects in between)", got, want)
	}
	s.admin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	waitClosed(t, closed, time.Now(), time.Second)
}

func mustOptions(t *testing.T, s *stack) []nats.Option {
	t.Helper()
	opts, err := client.NATSOptions(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}
