package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func TestConnectPublishReceive(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("demo.echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("demo.echo", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil || string(m.Data) != "hi" {
		t.Fatalf("receive: %v %v", m, err)
	}
	// The server names the connection workload@host.
	who, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Counter == 0 || len(c.Sessions) != 1 || c.Sessions[0].Client == 0 {
		t.Fatalf("credential after connect: counter %d sessions %+v", c.Counter, c.Sessions)
	}
}

// recordingSigner wraps NATSOptions' signer and keeps the last signature.
func recordingOptions(t *testing.T, socket string, rec *[]byte) []nats.Option {
	t.Helper()
	opts, err := client.NATSOptions(socket)
	if err != nil {
		t.Fatal(err)
	}
	var o nats.Options
	for _, opt := range opts {
		_ = opt(&o)
	}
	inner := o.SignatureCB
	return append(opts, nats.Nkey(o.Nkey, func(nonce []byte) ([]byte, error) {
		sig, err := inner(nonce)
		*rec = append([]byte(nil), sig...)
		return sig, err
	}), nats.MaxReconnects(0))
}

func fixedSigner(nkey string, sig []byte) nats.Option {
	return nats.Nkey(nkey, func([]byte) ([]byte, error) { return sig, nil })
}

func wantDenied(t *testing.T, nc *nats.Conn, err error) {
	t.Helper()
	if err == nil {
		nc.Close()
		t.Fatal("connect accepted")
	}
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect: %v, want an authorization violation", err)
	}
}

func TestReplayedBundleDenied(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	var sig []byte
	nc, err := nats.Connect(f.URL(), recordingOptions(t, h.Socket, &sig)...)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	nc, err = nats.Connect(f.URL(), fixedSigner(who.CredentialID, sig), nats.MaxReconnects(0))
	wantDenied(t, nc, err)
}

func TestUnknownCredentialDenied(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	var sig []byte
	nc, err := nats.Connect(f.URL(), recordingOptions(t, h.Socket, &sig)...)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	// A well-formed bundle naming a credential the verifier never registered.
	a, err := attestation.UnmarshalBundle(sig)
	if err != nil {
		t.Fatal(err)
	}
	unknown := make([]byte, 16)
	_, _ = rand.Read(unknown)
	a.CredentialID = unknown
	b, err := attestation.MarshalBundle(a)
	if err != nil {
		t.Fatal(err)
	}
	nc, err = nats.Connect(f.URL(), fixedSigner(base64.RawURLEncoding.EncodeToString(unknown), b), nats.MaxReconnects(0))
	wantDenied(t, nc, err)
	// Garbage in sig, and an nkey that is not the bundle's credential.
	nc, err = nats.Connect(f.URL(), fixedSigner("AAAAAAAAAAAAAAAAAAAAAA", []byte("garbage")), nats.MaxReconnects(0))
	wantDenied(t, nc, err)
}

func TestRevokedCredentialDenied(t *testing.T) {
	f := fleettest.New(t)
	// An agent that is not told (no credentials.watch, an hourly check)
	// still signs: the verifier refuses the revoked credential itself.
	h := f.NewHost(t, func(c *agent.Config) { c.NoCredentialsWatch, c.RotationCheck = true, time.Hour })
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	nc, err = h.Connect(t)
	wantDenied(t, nc, err)
}

// TestRevokedCredentialAgentStops: an agent that holds a credentials.watch
// stops signing with a revoked credential at once, and says why.
func TestRevokedCredentialAgentStops(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = time.Hour })
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	waitWatchHeld(t, f)
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "test"}, nil)
	eventually.Until(t, 10*time.Second, func() error {
		_, err := client.New(h.Socket).WhoAmI(t.Context())
		if err == nil {
			return errors.New("the agent still serves the revoked credential")
		}
		if !strings.Contains(err.Error(), "revoked") {
			return fmt.Errorf("the agent's refusal does not say revoked: %v", err)
		}
		return nil
	})
}

func TestRevokedHostDenied(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	f.MustAdmin(t, "host.revoke", api.IDRequest{ID: who.Host, Reason: "test"}, nil)
	nc, err := h.Connect(t)
	wantDenied(t, nc, err)
}

// TestCounterEqualDenied restores the agent's credential to an earlier
// state (a VM snapshot): the signature is valid and bound to the new nonce,
// but its counter equals the last accepted one.
func TestCounterEqualDenied(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	who, _ := client.New(h.Socket).WhoAmI(t.Context())
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)

	snapshot := t.TempDir()
	if err := os.Mkdir(filepath.Join(snapshot, "credentials"), 0o700); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(h.Config.DataDir, "credentials", who.CredentialID+".json")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(string(b), `"counter_reserved": 256`, `"counter_reserved": `+itoa(c.Counter-1), 1))
	if err := os.WriteFile(filepath.Join(snapshot, "credentials", who.CredentialID+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	clone, err := agent.NewAuthenticator(h.Agent.Authenticator().TPM(), snapshot)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := base64.RawURLEncoding.DecodeString(who.CredentialID)
	signer := nats.Nkey(who.CredentialID, func(nonce []byte) ([]byte, error) {
		a, err := clone.AssertForVerifier(id, attestation.NATSChallenge(nonce))
		if err != nil {
			return nil, err
		}
		ad, _ := attestation.ParseAuthenticatorData(a.AuthData)
		if ad.Counter != c.Counter {
			t.Errorf("clone signed counter %d, want %d", ad.Counter, c.Counter)
		}
		return attestation.MarshalBundle(a)
	})
	nc, err = nats.Connect(f.URL(), signer, nats.MaxReconnects(0))
	wantDenied(t, nc, err)
	// The credential is quarantined (a tamper signal): the real agent is
	// refused too until an operator reviews and releases it.
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &c)
	if c.Status != api.CredentialQuarantined {
		t.Fatalf("after a counter regression the credential is %s, want quarantined", c.Status)
	}
	nc, err = h.Connect(t)
	wantDenied(t, nc, err)
	f.MustAdmin(t, "credential.release", api.IDRequest{ID: who.CredentialID, Reason: "reviewed"}, nil)
	nc, err = h.Connect(t)
	if err != nil {
		t.Fatalf("the agent after release: %v", err)
	}
	nc.Close()
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestPermissionsOutsideRole(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	errs := make(chan error, 8)
	nc, err := h.Connect(t, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, subj := range []string{"billing.invoices", "demo.secret"} {
		if err := nc.Publish(subj, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.SubscribeSync("billing.>"); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	want := []string{`Publish to "billing.invoices"`, `Publish to "demo.secret"`, `Subscription to "billing.>"`}
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < len(want) {
		select {
		case err := <-errs:
			got = append(got, err.Error())
		case <-timeout:
			t.Fatalf("violations %q, want %d", got, len(want))
		}
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("no violation for %s in %q", w, got)
		}
	}
}

// TestSessionExpiryReauthorizes: the session JWT expires, the server closes
// the connection, nats.go reconnects, the agent signs the new nonce and the
// subscription carries on.
func TestSessionExpiryReauthorizes(t *testing.T) {
	f := fleettest.New(t, fleettest.SessionTTL(2*time.Second))
	h := f.NewHost(t)
	reconnected := make(chan time.Time, 4)
	opts := h.NATSOptions(t)
	start := time.Now()
	nc, err := nats.Connect(f.URL(), append(opts, nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectJitter(0, 0), nats.ReconnectHandler(func(*nats.Conn) { reconnected <- time.Now() }),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("demo.ttl")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-reconnected:
		t.Logf("re-authorized %v after connect (TTL 2s)", at.Sub(start).Round(time.Millisecond))
		if at.Sub(start) > 8*time.Second {
			t.Fatalf("re-authorized only after %v", at.Sub(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect after the session expired")
	}
	if err := nc.Publish("demo.ttl", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "after" {
		t.Fatalf("subscription after re-authorization: %v %v", m, err)
	}
}

func TestBurst100(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	opts := h.NATSOptions(t)
	var wg sync.WaitGroup
	var failed atomic.Int32
	var mu sync.Mutex
	var firstErr error
	conns := make([]*nats.Conn, 100)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := nats.Connect(f.URL(), append(opts, nats.MaxReconnects(0))...)
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			conns[i] = nc
		}()
	}
	wg.Wait()
	for _, nc := range conns {
		if nc != nil {
			nc.Close()
		}
	}
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of 100 connects failed; first: %v", n, firstErr)
	}
}
