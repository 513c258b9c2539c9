package natstls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

func TestLoopback(t *testing.T) {
	for _, tc := range []struct {
		urls string
		want bool
	}{
		{"nats://127.0.0.1:4222", true},
		{"tls://localhost:4222", true},
		{"nats://[::1]:4222", true},
		{"127.0.0.5:4222", true},
		{"nats://127.0.0.1:4222,nats://127.0.0.1:4223", true},
		{"nats://127.0.0.1:4222,nats://10.0.0.2:4222", false},
		{"nats://10.0.0.2:4222", false},
		{"nats://0.0.0.0:4222", false},
		{"nats://nats.example.com:4222", false},
		{"nats://localhost.evil.example:4222", false},
		{"::bad::", false},
	} {
		if got := Loopback(tc.urls); got != tc.want {
			t.Errorf("Loopback(%q) = %v, want %v", tc.urls, got, tc.want)
		}
	}
}

func TestPin(t *testing.T) {
	ca, _ := newCA(t)
	p := Pin(ca)
	if !ValidPin(p) || !strings.HasPrefix(p, PinPrefix) {
		t.Fatalf("Pin %q is not valid", p)
	}
	for _, bad := range []string{"", "sha256-", p[:len(p)-1], strings.Replace(p, "sha256-", "sha1-", 1), p + "A"} {
		if ValidPin(bad) {
			t.Errorf("ValidPin(%q) = true", bad)
		}
	}
	if _, err := Options("tls://10.0.0.1:4222", Trust{Pin: "sha256-short"}); err == nil {
		t.Fatal("Options took a malformed pin")
	}
}

// TestOptionsRequireTLSBeyondLoopback: only loopback may be used in clear.
func TestOptionsRequireTLSBeyondLoopback(t *testing.T) {
	for _, tc := range []struct {
		url    string
		secure bool
	}{{"nats://127.0.0.1:4222", false}, {"nats://10.0.0.1:4222", true}, {"nats://a.example:4222,nats://127.0.0.1:1", true}} {
		o := apply(t, tc.url, Trust{})
		if o.Secure != tc.secure || o.TLSConfig == nil {
			t.Errorf("%s: Secure %v (TLS config %v), want %v", tc.url, o.Secure, o.TLSConfig != nil, tc.secure)
		}
	}
}

// TestPinnedHandshake runs real TLS handshakes against servers with
// certificates from the pinned CA and from another.
func TestPinnedHandshake(t *testing.T) {
	ca, caKey := newCA(t)
	other, otherKey := newCA(t)
	for _, tc := range []struct {
		name    string
		chain   func() tls.Certificate
		dial    string // the name the client dials
		wantErr string // "": the handshake succeeds
	}{
		{"pinned", func() tls.Certificate { return leaf(t, ca, caKey, "127.0.0.1") }, "127.0.0.1", ""},
		{"anotherCA", func() tls.Certificate { return leaf(t, other, otherKey, "127.0.0.1") }, "127.0.0.1", "pinned key"},
		// An IP address goes without SNI: the leaf must name the URL's.
		{"wrongName", func() tls.Certificate { return leaf(t, ca, caKey, "10.9.9.9") }, "127.0.0.1", "127.0.0.1"},
		{"dnsName", func() tls.Certificate { return leaf(t, ca, caKey, "10.9.9.9") }, "localhost", "localhost"},
		// A leaf with no CA in its chain: nothing to match the pin.
		{"noChain", func() tls.Certificate {
			c := leaf(t, ca, caKey, "127.0.0.1")
			c.Certificate = c.Certificate[:1]
			return c
		}, "127.0.0.1", "pinned key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveTLS(t, tc.chain())
			var pinned *x509.Certificate
			_, port, _ := net.SplitHostPort(addr)
			o := apply(t, "tls://"+net.JoinHostPort(tc.dial, port), Trust{Pin: Pin(ca), OnPinned: func(c *x509.Certificate) { pinned = c }})
			cfg := o.TLSConfig.Clone()
			cfg.ServerName = tc.dial
			c, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				c.Close()
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if pinned == nil || !pinned.Equal(ca) {
					t.Fatal("OnPinned did not get the pinned CA")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("handshake: %v, want an error with %q", err, tc.wantErr)
			}
			if pinned != nil {
				t.Fatal("OnPinned called on a refused server")
			}
		})
	}
}

func TestExplain(t *testing.T) {
	err := Explain("nats://10.0.0.1:4222", nats.ErrSecureConnWanted)
	if !errors.Is(err, nats.ErrSecureConnWanted) || !strings.Contains(err.Error(), "--nats-tls") {
		t.Fatalf("Explain: %v", err)
	}
}

func apply(t *testing.T, url string, tr Trust) *nats.Options {
	t.Helper()
	opts, err := Options(url, tr)
	if err != nil {
		t.Fatal(err)
	}
	o := nats.GetDefaultOptions()
	for _, f := range opts {
		if err := f(&o); err != nil {
			t.Fatal(err)
		}
	}
	return &o
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ca, key, err := pemca.New("test NATS CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

func leaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, ip string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "server"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(ip)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key}
}

func serveTLS(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String()
}
