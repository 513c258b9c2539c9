package keys

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"slices"
	"testing"
	"time"
)

func TestServerCert(t *testing.T) {
	dir := t.TempDir()
	k, _, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	hosts := []string{"nats.example.com", "10.0.0.7", "127.0.0.1"}
	certFile, keyFile, err := ServerCert(dir, k, hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf := load(t, certFile, keyFile)
	if err := leaf.CheckSignatureFrom(k.NATSCA); err != nil {
		t.Fatalf("not issued by the NATS CA: %v", err)
	}
	if leaf.CheckSignatureFrom(k.FleetCA) == nil {
		t.Fatal("issued by the fleet CA, which certifies AKs")
	}
	for _, h := range hosts {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("certificate does not name %s: %v", h, err)
		}
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || leaf.IsCA {
		t.Fatalf("usages %v, CA %v: want a TLS server (and route client) certificate only", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}

	for _, tc := range []struct {
		name  string
		hosts []string
		now   time.Time
		prep  func()
		same  bool
	}{
		{"unchanged", []string{"127.0.0.1", "NATS.example.com", "10.0.0.7"}, now, nil, true},
		{"otherNames", []string{"nats.example.com"}, now, nil, false},
		{"nearExpiry", hosts, now.Add(ServerCertValidity * 3 / 4), nil, false},
		{"keyReplaced", hosts, now, func() {
			// A crash between the key and the certificate writes.
			_, k2, _ := issueServerCert(k, hosts, now)
			if err := os.WriteFile(keyFile, k2, 0o600); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ServerCert(dir, k, hosts, now); err != nil { // reset
				t.Fatal(err)
			}
			before := load(t, certFile, keyFile)
			if tc.prep != nil {
				tc.prep()
			}
			if _, _, err := ServerCert(dir, k, tc.hosts, tc.now); err != nil {
				t.Fatal(err)
			}
			after := load(t, certFile, keyFile)
			if before.Equal(after) != tc.same {
				t.Fatalf("certificate kept: %v, want %v", before.Equal(after), tc.same)
			}
		})
	}
}

func load(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("chain of %d certificates, want the leaf and the NATS CA", len(pair.Certificate))
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The HTTP listener's certificate names other hosts: it has files of its
// own, so issuing it never replaces the NATS server's (nor the reverse).
func TestHTTPServerCertSeparate(t *testing.T) {
	dir := t.TempDir()
	k, _, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	natsCert, _, err := ServerCert(dir, k, []string{"nats.example.com"}, now)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(natsCert)
	httpCert, httpKey, err := HTTPServerCert(dir, k, []string{"login.example.com"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if httpCert == natsCert {
		t.Fatal("same file")
	}
	if after, _ := os.ReadFile(natsCert); !slices.Equal(before, after) {
		t.Fatal("the HTTP certificate replaced the NATS server's")
	}
	if leaf := load(t, httpCert, httpKey); leaf.VerifyHostname("login.example.com") != nil || leaf.CheckSignatureFrom(k.NATSCA) != nil {
		t.Fatal("HTTP certificate: wrong name or issuer")
	}
}
