package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestTLSFleet runs the whole chain over TLS: the verifier's embedded
// server serves a certificate from its NATS CA, the join token pins that
// CA, the agent trusts nothing else to enroll, keeps the CA, and its
// workloads and restarts verify the server with it.
func TestTLSFleet(t *testing.T) {
	f := fleettest.New(t, fleettest.TLS())
	if !strings.HasPrefix(f.URL(), "tls://") {
		t.Fatalf("client URL %s: want tls://", f.URL())
	}
	caPEM, err := os.ReadFile(filepath.Join(f.Config.DataDir, "nats-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cas, err := pemca.ParseCertificates(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	token := f.Token(t, time.Hour, "demo")
	secret, pin := api.SplitJoinToken(token)
	if pin != natstls.Pin(cas[0]) || !strings.HasPrefix(secret, "tpmauthn-join-") {
		t.Fatalf("token %q: want the secret, then the NATS CA's pin %s", token, natstls.Pin(cas[0]))
	}

	h := fleettest.NewHost(t, f.TPM, f.URL(), token) // no --nats-ca: the pin only
	kept, err := os.ReadFile(filepath.Join(h.Config.DataDir, "nats-ca.pem"))
	if err != nil || string(kept) != string(natstls.EncodePEM(cas[0])) {
		t.Fatalf("the agent kept %q (%v), want the pinned NATS CA", kept, err)
	}
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("workload over TLS: %v", err)
	}
	cs, err := nc.TLSConnectionState()
	if err != nil || !cs.HandshakeComplete || len(cs.VerifiedChains) == 0 {
		t.Fatalf("workload connection: TLS %v, verified chains %d (%v)", cs.HandshakeComplete, len(cs.VerifiedChains), err)
	}
	nc.Close()

	// A restart: the token is spent, the host reconnects with its host
	// credential, verifying the server with the CA it kept.
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	nc, err = h.Connect(t)
	if err != nil {
		t.Fatalf("workload after the agent's restart: %v", err)
	}
	nc.Close()
}

// H6: an on-path attacker answers in the verifier's place (DNS, ARP, a
// rogue access point) with a TLS certificate of its own. The agent refuses
// before it sends anything: the join token never reaches the impostor,
// and stays valid at the real verifier.
func TestAttackJoinTokenToImpostorServer(t *testing.T) {
	f := fleettest.New(t, fleettest.TLS())
	token := f.Token(t, time.Hour, "demo")
	ca, caKey, err := pemca.New("impostor CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	imp := newImpostor(t, "127.0.0.1:0", serverCert(t, ca, caKey, "127.0.0.1"))

	err = startAgent(t, f, "tls://"+imp.addr, token)
	if err == nil || !strings.Contains(err.Error(), "pinned key") {
		t.Fatalf("agent start against the impostor: %v, want a refusal naming the pin", err)
	}
	eventually.Until(t, 5*time.Second, func() error {
		if imp.handshakes.Load() == 0 {
			return errors.New("the agent never reached the impostor's TLS handshake: the test proves nothing")
		}
		return nil
	})
	if got := imp.received(); strings.Contains(got, "CONNECT") || strings.Contains(got, "tpmauthn-join-") {
		t.Fatalf("the impostor received %q", got)
	}
	var tokens []record.Token
	f.MustAdmin(t, "token.list", struct{}{}, &tokens)
	if len(tokens) != 1 || tokens[0].State(time.Now()) != "valid" {
		t.Fatalf("tokens after the attempt: %+v, want the one token still valid", tokens)
	}
}

// H6: the attacker serves NATS in clear on the network path, where the
// verifier's server would offer TLS. The agent connects in clear only on
// loopback: beyond it, it sends neither its token nor a signed nonce.
func TestAttackCleartextServerBeyondLoopback(t *testing.T) {
	f := fleettest.New(t, fleettest.TLS())
	token := f.Token(t, time.Hour, "demo")
	ip := nonLoopbackIP(t)
	imp := newImpostor(t, net.JoinHostPort(ip, "0"), nil)

	err := startAgent(t, f, "nats://"+imp.addr, token)
	if err == nil || !strings.Contains(err.Error(), "offers no TLS") {
		t.Fatalf("agent start against a clear-text server at %s: %v, want a refusal", imp.addr, err)
	}
	if imp.accepted.Load() == 0 {
		t.Fatal("the agent never reached the impostor: the test proves nothing")
	}
	eventually.Until(t, 5*time.Second, func() error { // what the agent sent, if anything, has arrived
		if imp.served.Load() < imp.accepted.Load() {
			return errors.New("the impostor is still reading")
		}
		return nil
	})
	if got := imp.received(); strings.Contains(got, "CONNECT") {
		t.Fatalf("the impostor received %q", got)
	}
}

func startAgent(t *testing.T, f *fleettest.Fleet, url, token string) error {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{TPM: f.TPM.URI(), NATSURL: url, DataDir: filepath.Join(dir, "agent"),
		Socket: filepath.Join(dir, "agent.sock"), TokenFile: tokenFile, Hostname: "victim", Logger: fleettest.Logger(t, "agent")})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Start(t.Context())
	_ = a.Close()
	return err
}

// impostor speaks the first lines of NATS: INFO (TLS required when it has
// a certificate), then records what the client sends.
type impostor struct {
	addr       string
	accepted   atomic.Int64
	handshakes atomic.Int64
	served     atomic.Int64 // connections closed, all read
	got        atomic.Value // string
}

func newImpostor(t *testing.T, listen string, cert *tls.Certificate) *impostor {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	imp := &impostor{addr: ln.Addr().String()}
	imp.got.Store("")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			imp.accepted.Add(1)
			go imp.serve(c, cert)
		}
	}()
	return imp
}

func (imp *impostor) serve(c net.Conn, cert *tls.Certificate) {
	defer imp.served.Add(1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	info := `INFO {"server_id":"IMPOSTOR","version":"2.12.0","proto":1,"max_payload":1048576,"auth_required":true,"nonce":"bm9uY2Vub25jZQ"`
	if cert != nil {
		info += `,"tls_required":true`
	}
	if _, err := c.Write([]byte(info + "}\r\n")); err != nil {
		return
	}
	if cert != nil {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}})
		if err := tc.Handshake(); err != nil {
			imp.handshakes.Add(1) // the client refused our certificate
			return
		}
		imp.handshakes.Add(1)
		c = tc
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	imp.got.Store(imp.got.Load().(string) + line)
}

func (imp *impostor) received() string { return imp.got.Load().(string) }

func serverCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, ip string) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "tpmauthn NATS server"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(ip)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key}
}

// nonLoopbackIP is an address of this machine beyond loopback; the test
// needs one (every CI machine has a network interface).
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatal("this machine has no IPv4 address beyond loopback: the clear-text attack needs one")
	return ""
}
