package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestRotationUnderLoad: a workload publishes continuously while an operator
// rotates its credential; sessions expire every 2 s, so it re-authorizes
// with the new credential mid-stream. No publish fails.
func TestRotationUnderLoad(t *testing.T) {
	f := fleettest.New(t, fleettest.SessionTTL(2*time.Second), func(f *fleettest.Fleet) { f.Config.RotationGrace = time.Second })
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 200 * time.Millisecond })
	c := client.New(h.Socket)
	before, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	opts := h.NATSOptions(t)
	var reconnects atomic.Int32
	nc, err := nats.Connect(f.URL(), append(opts, nats.ReconnectWait(50*time.Millisecond), nats.ReconnectJitter(0, 0),
		nats.ReconnectHandler(func(*nats.Conn) { reconnects.Add(1) }),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var received atomic.Int64
	if _, err := nc.Subscribe("demo.load", func(*nats.Msg) { received.Add(1) }); err != nil {
		t.Fatal(err)
	}
	var sent, failed int64
	// The load itself: a publish every 10 ms for 7 s, across the rotation
	// (after 1 s) and at least two session expiries.
	deadline := time.Now().Add(7 * time.Second)
	rotated := false
	for time.Now().Before(deadline) {
		if err := nc.Publish("demo.load", []byte("tick")); err != nil {
			failed++
		} else {
			sent++
		}
		if !rotated && time.Until(deadline) < 6*time.Second {
			f.MustAdmin(t, "credential.rotate", api.IDRequest{ID: before.CredentialID, Reason: "test"}, nil)
			rotated = true
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = nc.Flush()
	after, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d, failed %d, received %d, reconnects %d; credential %s -> %s (nkey %s)",
		sent, failed, received.Load(), reconnects.Load(), before.CredentialID, after.CredentialID, after.NKey)
	if failed != 0 {
		t.Fatalf("%d publishes failed across the rotation", failed)
	}
	if after.CredentialID == before.CredentialID || after.NKey != before.NKey {
		t.Fatalf("after rotation: credential %s (was %s), nkey %s (was %s): want a new credential, the same nkey",
			after.CredentialID, before.CredentialID, after.NKey, before.NKey)
	}
	if reconnects.Load() < 2 {
		t.Fatalf("only %d re-authorizations in 7 s with a 2 s session", reconnects.Load())
	}
	var newCred, oldCred record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: after.CredentialID}, &newCred)
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: before.CredentialID}, &oldCred)
	if newCred.Counter == 0 {
		t.Fatal("the new credential was never used to connect")
	}
	if oldCred.ReplacedBy != after.CredentialID || oldCred.Retires.IsZero() || time.Now().Before(oldCred.Retires) {
		t.Fatalf("old credential: replaced by %q, retires %v", oldCred.ReplacedBy, oldCred.Retires)
	}
	if received.Load() < sent*9/10 {
		t.Errorf("received %d of %d", received.Load(), sent)
	}
}

// TestSecondCredentialNeedsRotationProof: a workload's credential is
// replaced only through a rotation the old one signs.
func TestSecondCredentialNeedsRotationProof(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	auth := h.Agent.Authenticator()
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The agent's own session would be needed; an enrollment session by
	// host proof reaches the registration endpoints as well.
	e, err := auth.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	sess, err := nats.Connect(f.URL(), nats.UserInfo("host:"+e.HostID, b64url(e.Proof)), nats.CustomInboxPrefix(api.InboxForHost(e.HostID)))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	_, err = auth.RegisterWithVerifier(context.Background(), sess, "app")
	fleettest.WantCode(t, err, "conflict") // a second registration for workload app
}

// TestCredentialStatusOnlyForOwnHost: an agent reads only its own host's
// credential states: another host's scope is refused by the server, and a
// body naming another host on its own scope by the verifier.
func TestCredentialStatusOnlyForOwnHost(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	auth := h.Agent.Authenticator()
	e, err := auth.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	creds, err := auth.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	var hostCred []byte
	for _, c := range creds {
		if c.Name == "tpmauthn-agent" {
			hostCred = c.ID
		}
	}
	onErr, violations := fleettest.Violations()
	nc, err := nats.Connect(f.URL(), append(credentialOptions(auth, hostCred), onErr)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	own := api.HostScope(e.HostID).Subject(api.OpCredentialsStatus)
	var states []map[string]any
	if code := fleettest.Request(t, nc, own, map[string]string{"host_id": e.HostID}, &states); code != "" || len(states) < 2 {
		t.Fatalf("own host: code %q, %d states", code, len(states))
	}
	if code := fleettest.Request(t, nc, own, map[string]string{"host_id": "h-0123456789abcdef"}, &states); code != "not_found" {
		t.Fatalf("another host on its own scope: code %q, want not_found", code)
	}
	fleettest.PublishRefused(t, nc, violations, api.HostScope("h-0123456789abcdef").Subject(api.OpCredentialsStatus))
	// An agent of before host scopes is told to upgrade.
	if code := fleettest.Request(t, nc, "tpmauthn.v1.credentials.status", map[string]string{"host_id": e.HostID}, &states); code != api.CodeUpgradeAgent {
		t.Fatalf("the subject of before scopes: code %q, want %s", code, api.CodeUpgradeAgent)
	}
}

// TestReplacedCredentialDeletedAcrossRestart: the agent stops after a
// rotation but before the old credential retires; the next start deletes the
// old key blob once it has.
func TestReplacedCredentialDeletedAcrossRestart(t *testing.T) {
	const grace = 2 * time.Second
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.RotationGrace = grace })
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 100 * time.Millisecond })
	c := client.New(h.Socket)
	before, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "credential.rotate", api.IDRequest{ID: before.CredentialID, Reason: "test"}, nil)
	eventually.Until(t, 10*time.Second, func() error {
		after, err := c.WhoAmI(t.Context())
		if err == nil && after.CredentialID == before.CredentialID {
			err = errors.New("the agent still signs with the replaced credential")
		}
		return err
	})
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	oldFile := filepath.Join(h.Config.DataDir, "credentials", before.CredentialID+".json")
	if _, err := os.Stat(oldFile); err != nil {
		t.Fatalf("the replaced credential is gone before it retired: %v", err)
	}
	// What is tested is a start after the old credential retired, while
	// the agent was down: wait its grace out.
	time.Sleep(grace)
	h.Start(t)
	eventually.Until(t, 5*time.Second, func() error {
		if _, err := os.Stat(oldFile); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the replaced credential's key blob is still on disk after it retired and the agent restarted (stat: %v)", err)
		}
		return nil
	})
	if nc, err := h.Connect(t); err != nil {
		t.Fatalf("connect with the new credential after the restart: %v", err)
	} else {
		nc.Close()
	}
}

// TestInterruptedRotationReconciled: a rotation cut off after the new key
// was made but before the verifier registered it leaves the newest local
// credential unknown to the verifier. At the next start the agent picks it
// (newest) and is refused, until it asks the verifier which credential is
// current: then it signs with that one and deletes the stray.
func TestInterruptedRotationReconciled(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 100 * time.Millisecond })
	c := client.New(h.Socket)
	before, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	strayFile := strayAndRestart(t, h, before.Workload)
	eventually.Until(t, 10*time.Second, func() error {
		who, err := c.WhoAmI(t.Context())
		_, serr := os.Stat(strayFile)
		if err != nil || who.CredentialID != before.CredentialID || !errors.Is(serr, os.ErrNotExist) {
			return fmt.Errorf("after the restart: signing with %+v, %v (want %s); stray credential file: %v", who, err, before.CredentialID, serr)
		}
		return nil
	})
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("connect after the reconcile: %v", err)
	}
	nc.Close()
}

// TestInterruptedHostCredentialRotation: the same for the agent's own
// credential, with which it reaches the verifier: refused with the stray,
// it connects with the registered one and then reconciles.
func TestInterruptedHostCredentialRotation(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 100 * time.Millisecond })
	strayFile := strayAndRestart(t, h, "tpmauthn-agent")
	eventually.Until(t, 10*time.Second, func() error {
		if _, err := os.Stat(strayFile); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("after the restart the stray host credential is still on disk (stat: %v): the agent did not reach the verifier to reconcile", err)
		}
		return nil
	})
}

// strayAndRestart leaves what an interrupted rotation leaves, a newest
// credential of the workload the verifier never registered, restarts the
// agent and returns the stray's file.
func strayAndRestart(t *testing.T, h *fleettest.Host, workload string) string {
	t.Helper()
	auth := h.Agent.Authenticator()
	e, err := auth.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	_, stray, err := auth.Register(agent.RegisterOptions{Name: workload, RPID: e.RPID, Origin: e.Origin, Challenge: make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	return filepath.Join(h.Config.DataDir, "credentials", stray.IDString()+".json")
}

// TestRotationWithLostReplies rotates under deadlines from 0 to 24 ms, so
// that they expire at every step of a rotation, register.finish included
// (the verifier may then have registered the new credential without the
// agent hearing it). Whatever happened, the credential the verifier holds
// as current must still be on the host: an earlier version deleted the new
// key when the deadline cut off finish's reply, and failed this within a
// few iterations.
func TestRotationWithLostReplies(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	auth := h.Agent.Authenticator()
	who, hostCred, cur := rotationSubjects(t, h)
	nc, err := nats.Connect(f.URL(), credentialOptions(auth, hostCred.ID)...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	e, _ := auth.Enrollment()
	var ok, failed int
	for d := time.Duration(0); d <= 24*time.Millisecond; d += time.Millisecond {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		next, _, rerr := auth.RotateWithVerifier(ctx, nc, cur)
		cancel()
		if rerr == nil {
			cur, ok = next, ok+1
		} else {
			failed++
		}
		var cs []record.Credential
		f.MustAdmin(t, "credential.list", api.CredentialListRequest{Host: e.HostID}, &cs)
		for _, c := range cs {
			if c.Workload != who.Workload || c.ReplacedBy != "" || c.Status != api.CredentialActive {
				continue
			}
			id, _ := attestation.DecodeB64URL(c.ID)
			if _, err := auth.Credential(id); err != nil {
				t.Fatalf("deadline %v (rotation error: %v): the verifier's current credential %s is not on the host: %v", d, rerr, c.ID, err)
			}
			if c.ID != cur.IDString() {
				t.Fatalf("deadline %v: the verifier's current credential is %s, the caller was told %s", d, c.ID, cur.IDString())
			}
		}
	}
	t.Logf("%d rotations done, %d cut off by their deadline", ok, failed)
	if ok == 0 || failed == 0 {
		t.Fatalf("%d done, %d cut off: the deadlines missed the window they test", ok, failed)
	}
}

// rotationSubjects is the host's workload (as the socket names it), the
// host's own credential (the agent's connection to the verifier) and the
// workload's current credential.
func rotationSubjects(t *testing.T, h *fleettest.Host) (*client.WhoAmI, *agent.Credential, *agent.Credential) {
	t.Helper()
	who, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := h.Agent.Authenticator().Credentials()
	if err != nil {
		t.Fatal(err)
	}
	var hostCred, cur *agent.Credential
	for _, c := range creds {
		switch {
		case c.Name == "tpmauthn-agent":
			hostCred = c
		case c.IDString() == who.CredentialID:
			cur = c
		}
	}
	if hostCred == nil || cur == nil {
		t.Fatalf("the agent holds no host credential or none for %s", who.CredentialID)
	}
	return who, hostCred, cur
}

// TestRotateNow: `tpmauthnctl credential rotate` says "now", and now it is:
// the verifier answers the agent's credentials.watch, and the agent rotates
// although its periodic check is an hour away. Another host's agent cannot
// hold a watch on this host (its scope is refused; a body naming this host
// on its own scope is not_found).
func TestRotateNow(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = time.Hour })
	c := client.New(h.Socket)
	before, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The agent's watch is held before the operator acts.
	waitWatchHeld(t, f)
	start := time.Now()
	f.MustAdmin(t, "credential.rotate", api.IDRequest{ID: before.CredentialID, Reason: "test"}, nil)
	eventually.Until(t, 15*time.Second, func() error {
		after, err := c.WhoAmI(t.Context())
		if err == nil && after.CredentialID == before.CredentialID {
			err = errors.New("the agent still signs with the credential the operator rotated")
		}
		return err
	})
	t.Logf("credential.rotate to the agent signing with the new credential: %v", time.Since(start))
	// A revocation reaches it the same way: it stops signing at once.
	after, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitWatchHeld(t, f)
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: after.CredentialID, Reason: "test"}, nil)
	eventually.Until(t, 15*time.Second, func() error {
		if _, err := c.WhoAmI(t.Context()); err == nil {
			return errors.New("the agent still serves the revoked credential")
		}
		return nil
	})

	other := fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM)))
	oe, err := f.Enroll(t, other, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	onErr, violations := fleettest.Violations()
	nc, err := f.HostSession(oe, onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	victim := h.HostID(t)
	fleettest.PublishRefused(t, nc, violations, api.HostScope(victim).Subject(api.OpCredentialsWatch))
	code := fleettest.Request(t, nc, api.HostScope(oe.HostID).Subject(api.OpCredentialsWatch), api.CredentialsWatchRequest{HostID: victim, Wait: time.Second}, nil)
	if code != api.CodeNotFound {
		t.Fatalf("a watch of another host on the agent's own scope: %q, want %s", code, api.CodeNotFound)
	}
}

// waitWatchHeld waits until the verifier holds the one agent's
// credentials.watch: what the operator does next is answered on it.
func waitWatchHeld(t *testing.T, f *fleettest.Fleet) {
	t.Helper()
	eventually.Until(t, 10*time.Second, func() error {
		if n := f.Verifier.HeldWatches(); n != 1 {
			return fmt.Errorf("%d credentials watches held, want the agent's", n)
		}
		return nil
	})
}
