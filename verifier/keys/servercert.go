package keys

import (
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"

	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The embedded server's TLS certificate, issued by the NATS CA.
const (
	fileServerCert = "nats-server-cert.pem" // leaf, then the NATS CA: clients pin the CA
	fileServerKey  = "nats-server-key.pem"
	// ServerCertValidity is a server certificate's lifetime; one with less
	// than a third of it left is re-issued at start.
	ServerCertValidity = 397 * 24 * time.Hour
)

// The HTTP listener's certificate (--http-listen), from the same CA: files
// of their own, as it names other hosts than the NATS server's.
const (
	fileHTTPCert = "http-server-cert.pem"
	fileHTTPKey  = "http-server-key.pem"
)

// ServerCert returns the files of a TLS server certificate for hosts (DNS
// names and IP addresses), issued by the NATS CA. It keeps the one in dir
// while it names exactly these hosts, chains to this CA and has a third of
// its lifetime left; otherwise it issues a new one (written whole: a
// temporary file renamed over the old).
func ServerCert(dir string, k *Set, hosts []string, now time.Time) (certFile, keyFile string, err error) {
	return serverCertAt(filepath.Join(dir, fileServerCert), filepath.Join(dir, fileServerKey), k, hosts, now)
}

// HTTPServerCert is ServerCert for the verifier's HTTP listener, in files
// of its own. Browsers do not know the NATS CA: a listener people reach
// from their browsers needs a certificate from a CA they trust
// (http.tls_cert).
func HTTPServerCert(dir string, k *Set, hosts []string, now time.Time) (certFile, keyFile string, err error) {
	return serverCertAt(filepath.Join(dir, fileHTTPCert), filepath.Join(dir, fileHTTPKey), k, hosts, now)
}

func serverCertAt(certFile, keyFile string, k *Set, hosts []string, now time.Time) (string, string, error) {
	if current(certFile, keyFile, k.NATSCA, hosts, now) {
		return certFile, keyFile, nil
	}
	certPEM, keyPEM, err := issueServerCert(k, hosts, now)
	if err != nil {
		return "", "", fmt.Errorf("NATS server certificate: %w", err)
	}
	// The key first: a crash between the two leaves a certificate that no
	// longer matches, which the next start replaces.
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeAtomic(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

func current(certFile, keyFile string, ca *x509.Certificate, hosts []string, now time.Time) bool {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile) // the key matches the certificate
	if err != nil {
		return false
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || c.CheckSignatureFrom(ca) != nil {
		return false
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	slices.Sort(names)
	want := normalize(hosts)
	left := c.NotAfter.Sub(now)
	usages := slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) && slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	return slices.Equal(names, want) && left > ServerCertValidity/3 && usages
}

func normalize(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		}
		out = append(out, strings.ToLower(h))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func issueServerCert(k *Set, hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tpmauthn NATS server", Organization: []string{"tpmauthn"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ServerCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Client too: cluster routes are mutual TLS, each node both ends.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range normalize(hosts) {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.NATSCA, &key.PublicKey, k.NATSCAKey)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	var chain bytes.Buffer
	_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: k.NATSCA.Raw})
	return chain.Bytes(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// writeAtomic writes path whole or not at all (internal/atomicfile).
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	return atomicfile.Write(path, b, mode)
}

// NATSCAFile is the NATS CA's certificate in a data directory.
func NATSCAFile(dataDir string) string { return filepath.Join(dataDir, fileNATSCA) }

// ClientCAFile is where a verifier's data directory keeps the CA bundle
// its NATS clients verify the server with (tpmauthnctl reads it).
func ClientCAFile(dataDir string) string { return filepath.Join(dataDir, "client-ca.pem") }

// WriteClientCA records the CA bundle for tpmauthnctl (public: 0644).
func WriteClientCA(dataDir string, pemBytes []byte) error {
	return writeAtomic(ClientCAFile(dataDir), pemBytes, 0o644)
}
