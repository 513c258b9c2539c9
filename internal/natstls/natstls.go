package natstls

import (
	"github.com/tpmauthn/tpmauthn/internal/pemca"

	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
)

// PinPrefix starts every pin's text form.
const PinPrefix = "sha256-"

// ErrPinMismatch: no CA in the server's chain has the pinned public key.
var ErrPinMismatch = errors.New("the NATS server's certificate chain has no CA with the pinned key: not the verifier the join token came from (or its NATS CA changed)")

// Pin is the text form of a CA pin: PinPrefix + base64url(SHA-256 of the
// certificate's SubjectPublicKeyInfo). Re-issuing the CA with the same key
// keeps it.
func Pin(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return PinPrefix + base64.RawURLEncoding.EncodeToString(sum[:])
}

// ValidPin says whether s has a pin's form.
func ValidPin(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, PinPrefix))
	return strings.HasPrefix(s, PinPrefix) && err == nil && len(b) == sha256.Size
}

// Trust is how a client authenticates the server. At most one of Roots and
// Pin is used: Roots when set, else Pin, else the system's roots.
type Trust struct {
	Roots *x509.CertPool
	// Pin (see Pin) accepts a chain through the CA with that key, the
	// host name checked as usual; OnPinned then gets that CA, to keep as
	// the roots of later connections.
	Pin      string
	OnPinned func(ca *x509.Certificate)
}

// LoadRoots reads a PEM bundle of CA certificates.
func LoadRoots(file string) (*x509.CertPool, []*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("NATS CA bundle: %w", err)
	}
	certs, err := pemca.ParseCertificates(b)
	if err != nil {
		return nil, nil, fmt.Errorf("NATS CA bundle %s: %w", file, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}

// EncodePEM is the PEM form of certs.
func EncodePEM(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

// Loopback says whether every server of a NATS URL list (comma-separated,
// as nats.Connect takes it) is on this host's loopback: the only place a
// connection may go without TLS.
func Loopback(urls string) bool {
	for _, u := range strings.Split(urls, ",") {
		if !loopbackURL(strings.TrimSpace(u)) {
			return false
		}
	}
	return true
}

func loopbackURL(s string) bool {
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	return LoopbackHost(u.Hostname())
}

// LoopbackHost says whether host names this host's loopback interface.
func LoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Options returns the nats.go options for connecting to urls with t. TLS is
// required unless every URL is on loopback; on loopback a server that
// offers TLS is still verified.
func Options(urls string, t Trust) ([]nats.Option, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: t.Roots}
	if t.Roots == nil && t.Pin != "" {
		if !ValidPin(t.Pin) {
			return nil, fmt.Errorf("CA pin %q: want %s followed by 43 base64url characters", t.Pin, PinPrefix)
		}
		// The chain is checked in VerifyConnection, against the pinned CA
		// instead of the roots; the host name still is.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = verifyPinned(t.Pin, hosts(urls), t.OnPinned)
	}
	if Loopback(urls) {
		return []nats.Option{func(o *nats.Options) error { o.TLSConfig = cfg; return nil }}, nil
	}
	return []nats.Option{nats.Secure(cfg)}, nil
}

// hosts are the host parts of a URL list.
func hosts(urls string) []string {
	var out []string
	for _, s := range strings.Split(urls, ",") {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		if u, err := url.Parse(s); err == nil && u.Hostname() != "" {
			out = append(out, u.Hostname())
		}
	}
	return out
}

// verifyPinned accepts a chain whose leaf names the server and chains to a
// CA, presented by the server, whose key has the pin. The name is the
// connection's SNI; an IP address is sent without one, so then the leaf
// must name one of the URLs' addresses.
func verifyPinned(pin string, urlHosts []string, onPinned func(*x509.Certificate)) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the NATS server presented no certificate")
		}
		var ca *x509.Certificate
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			if c.IsCA && Pin(c) == pin {
				ca = c
			} else {
				inter.AddCert(c)
			}
		}
		if ca == nil {
			return ErrPinMismatch
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca)
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{
			DNSName: cs.ServerName, Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}); err != nil {
			return fmt.Errorf("the NATS server's certificate, with the pinned CA: %w", err)
		}
		if cs.ServerName == "" && !slices.ContainsFunc(urlHosts, func(h string) bool {
			return net.ParseIP(h) != nil && leaf.VerifyHostname(h) == nil
		}) {
			return fmt.Errorf("the NATS server's certificate, with the pinned CA: %w", x509.HostnameError{Certificate: leaf, Host: strings.Join(urlHosts, ",")})
		}
		if onPinned != nil {
			onPinned(ca)
		}
		return nil
	}
}

// Explain adds what to do to a connection error that TLS caused.
func Explain(urls string, err error) error {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("%w: %s is not on loopback and its server offers no TLS; credentials are never sent there in clear (serve NATS with TLS: tpmauthn-verifier --nats-tls on)", err, urls)
	case errors.As(err, &unknown):
		return fmt.Errorf("%w: the NATS server's certificate is not from a trusted CA (give the verifier's NATS CA with --nats-ca, or enroll with a join token that pins it)", err)
	case errors.As(err, &host):
		return fmt.Errorf("%w: connect by a name the certificate holds, or add this one to the verifier's --nats-tls-hosts", err)
	}
	return err
}
