package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
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
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// watchClose connects and reports when the connection closes.
func watchClose(t *testing.T, f *fleettest.Fleet, opts []nats.Option) (*nats.Conn, chan time.Time) {
	t.Helper()
	closed := make(chan time.Time, 1)
	nc, err := nats.Connect(f.URL(), append(opts,
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
	f := fleettest.New(t)
	// The verifier's refusal is what is tested: the agent is not told
	// (TestRevokedCredentialAgentStops is the agent's side).
	h := f.NewHost(t, func(c *agent.Config) { c.NoCredentialsWatch, c.RotationCheck = true, time.Hour })
	_, closed := watchClose(t, f, h.NATSOptions(t))
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	d := waitClosed(t, closed, time.Now(), time.Second)
	t.Logf("revoke -> disconnect: %v", d)
	nc, err := h.Connect(t)
	wantDenied(t, nc, err)
}

// credentialOptions connects as a credential by signing in-process with the
// agent's authenticator (the verifier sees the same assertions).
func credentialOptions(a *agent.Authenticator, id []byte) []nats.Option {
	return []nats.Option{nats.Nkey(b64url(id), func(nonce []byte) ([]byte, error) {
		as, err := a.AssertForVerifier(id, attestation.NATSChallenge(nonce))
		if err != nil {
			return nil, err
		}
		return attestation.MarshalBundle(as)
	}), nats.CustomInboxPrefix(api.InboxForCredential(b64url(id)))}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestOffboardHostDropsEveryWorkload(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, fleettest.Workloads(fleettest.UIDWorkload("billing", 1001), fleettest.UIDWorkload("copilot", 1002), fleettest.UIDWorkload("reports", 1003)))
	auth := h.Agent.Authenticator()
	creds, err := auth.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	var closers []chan time.Time
	for _, c := range creds {
		if c.Name == "tpmauthn-agent" {
			continue
		}
		_, closed := watchClose(t, f, credentialOptions(auth, c.ID))
		closers = append(closers, closed)
	}
	if len(closers) != 3 {
		t.Fatalf("%d workload connections, want 3", len(closers))
	}
	who := h.Agent.Authenticator()
	e, err := who.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "host.offboard", api.IDRequest{ID: e.HostID, Reason: "decommissioned"}, nil)
	now := time.Now()
	for _, c := range closers {
		waitClosed(t, c, now, time.Second)
	}
	var hr record.Host
	f.MustAdmin(t, "host.show", api.IDRequest{ID: e.HostID}, &hr)
	var cs []record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{Host: e.HostID}, &cs)
	for _, c := range cs {
		if c.Status != api.CredentialRevoked {
			t.Fatalf("credential %s (%s) is %s after offboarding", c.ID, c.Workload, c.Status)
		}
	}
	if hr.Status != api.HostOffboarded || hr.Reason != "decommissioned" {
		t.Fatalf("host after offboarding: %s %q", hr.Status, hr.Reason)
	}
}

// TestClonedKeyStoreQuarantined copies the TPM state and the agent's data
// directory, runs both copies and connects from both: the second use of a
// counter value quarantines the credential, raises an alert and is audited.
func TestClonedKeyStoreQuarantined(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())

	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	clone := f.TPM.Clone(t)
	cloneDir := t.TempDir()
	if err := os.CopyFS(cloneDir, os.DirFS(h.Config.DataDir)); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	ccfg := h.Config
	ccfg.TPM, ccfg.DataDir, ccfg.Socket = clone.URI(), cloneDir, filepath.Join(fleettest.PublicDir(t), "clone.sock")
	cloned, err := agent.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := cloned.Start(context.Background()); err != nil {
		t.Fatalf("the copy: %v", err)
	}
	t.Cleanup(func() { _ = cloned.Close() })

	if nc, err = h.Connect(t); err != nil {
		t.Fatalf("original after the copy: %v", err)
	}
	nc.Close()
	copyOpts, err := client.NATSOptions(ccfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	nc, err = nats.Connect(f.URL(), append(copyOpts, nats.MaxReconnects(0))...)
	wantDenied(t, nc, err)

	m, err := alerts.NextMsg(5 * time.Second)
	if err != nil || !strings.HasSuffix(m.Subject, "counter_regression") {
		t.Fatalf("alert: %v %v", m, err)
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Status != api.CredentialQuarantined {
		t.Fatalf("credential is %s, want quarantined", c.Status)
	}
	// Only that credential: the host's own credential still works.
	var hr record.Host
	f.MustAdmin(t, "host.show", api.IDRequest{ID: who.Host}, &hr)
	if hr.Status != api.HostActive {
		t.Fatalf("host is %s: a tamper signal must quarantine one credential, not the host", hr.Status)
	}
	nc, err = h.Connect(t)
	wantDenied(t, nc, err)
	f.Verifier.FlushAudit()
	events := f.AuditEvents(t)
	if !slices.ContainsFunc(events, func(e audit.Event) bool {
		return e.Kind == "alert.counter_regression" && e.Credential == who.CredentialID
	}) {
		t.Fatal("the alert is not in the audit trail")
	}
	// After review, an operator lifts the quarantine.
	f.MustAdmin(t, "credential.release", api.IDRequest{ID: who.CredentialID, Reason: "reviewed"}, nil)
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Status != api.CredentialActive {
		t.Fatalf("after release: %s", c.Status)
	}
}

// Ended connections leave the credential record at its next write (the
// servers' disconnect events), so the record holds the live sessions — the
// ones a revocation must kick — and not every connect of the JWT lifetime.
func TestEndedSessionsLeaveTheRecord(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	live, closed := watchClose(t, f, h.NATSOptions(t))
	var ended []uint64
	for range 5 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := nc.GetClientID()
		ended = append(ended, id)
		nc.Close()
	}
	// The verifier has the servers' disconnect events (it audits them)
	// before the next connect writes the record.
	eventually.Until(t, 5*time.Second, func() error {
		events := f.AuditEvents(t)
		for _, id := range ended {
			if !slices.ContainsFunc(events, func(e audit.Event) bool { return e.Kind == "disconnect" && e.Client == id }) {
				return fmt.Errorf("no disconnect event for ended client %d in the audit trail", id)
			}
		}
		return nil
	})
	last, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	who, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	var got []uint64
	for _, r := range c.Sessions {
		got = append(got, r.Client)
	}
	liveID, _ := live.GetClientID()
	lastID, _ := last.GetClientID()
	if want := []uint64{liveID, lastID}; !slices.Equal(got, want) {
		t.Fatalf("sessions in the record: clients %v, want the two live ones %v (5 ended connects in between)", got, want)
	}
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	waitClosed(t, closed, time.Now(), time.Second)
}
