package verifier

import (
	"cmp"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// clientTrust is how NATS clients of this fleet (the verifier, tpmauthnctl,
// agents) verify the servers: roots (nil: the system's), and the pin join
// tokens carry ("" when there is no CA of ours to pin).
type clientTrust struct {
	roots   *x509.CertPool
	rootPEM []byte
	pin     string
}

func (v *Verifier) loadTrust() error {
	switch {
	case v.cfg.NATSCA != "":
		pool, certs, err := natstls.LoadRoots(v.cfg.NATSCA)
		if err != nil {
			return fmt.Errorf("nats.ca: %w", err)
		}
		v.trust = clientTrust{roots: pool, rootPEM: natstls.EncodePEM(certs...)}
		if i := slices.IndexFunc(certs, func(c *x509.Certificate) bool { return c.IsCA }); i >= 0 {
			v.trust.pin = natstls.Pin(certs[i])
		}
	case v.cfg.NATSURL == "" && v.cfg.embeddedTLS() && v.cfg.NATSTLSCert == "":
		pool := x509.NewCertPool()
		pool.AddCert(v.keys.NATSCA)
		v.trust = clientTrust{roots: pool, rootPEM: natstls.EncodePEM(v.keys.NATSCA), pin: natstls.Pin(v.keys.NATSCA)}
	}
	return nil
}

// tlsOptions are the verifier's own connections' TLS options.
func (v *Verifier) tlsOptions() ([]nats.Option, error) {
	return natstls.Options(v.url, natstls.Trust{Roots: v.trust.roots})
}

// embeddedExtra is what the embedded server's configuration adds to the
// layout: its name, its tls block (clientTLS says whether there is one) and
// its cluster block.
func (v *Verifier) embeddedExtra() (extra string, clientTLS bool, err error) {
	name, err := v.serverName()
	if err != nil {
		return "", false, err
	}
	parts := []string{fmt.Sprintf("server_name: %q", name)}
	clientTLS = v.cfg.embeddedTLS()
	if !clientTLS && v.cfg.ClusterListen == "" {
		return parts[0], false, nil
	}
	cert, key, err := v.serverCert()
	if err != nil {
		return "", false, err
	}
	if clientTLS {
		// timeout: the TLS handshake's, in seconds; the auth callout has its own.
		parts = append(parts, fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  timeout: 2\n}", cert, key))
	}
	caFile := cmp.Or(v.cfg.NATSCA, keys.NATSCAFile(v.cfg.DataDir))
	if c := v.clusterBlock(cert, key, caFile); c != "" {
		parts = append(parts, c)
	}
	return strings.Join(parts, "\n"), clientTLS, nil
}

// serverCert is the embedded server's certificate: the operator's, or one
// issued (or re-issued) by the NATS CA.
func (v *Verifier) serverCert() (certFile, keyFile string, err error) {
	cert, key := v.cfg.NATSTLSCert, v.cfg.NATSTLSKey
	if cert == "" {
		hosts := v.cfg.NATSTLSHosts
		if len(hosts) == 0 {
			hosts = defaultTLSHosts(v.cfg.NATSListen)
		}
		if h, _, err := net.SplitHostPort(v.cfg.ClusterListen); err == nil && h != "" && !net.ParseIP(h).IsUnspecified() {
			hosts = append(hosts, h) // peers dial the routes by it
		}
		hosts = append(hosts, "localhost", "127.0.0.1", "::1")
		var err error
		if cert, key, err = keys.ServerCert(v.cfg.DataDir, v.keys, hosts, time.Now()); err != nil {
			return "", "", err
		}
		v.log.Info("NATS TLS certificate from the verifier's NATS CA", "names", hosts, "ca_pin", natstls.Pin(v.keys.NATSCA))
	}
	return cert, key, nil
}

// defaultTLSHosts: the listen host, this host's name, and, on a wildcard
// address, every address of this host's interfaces.
func defaultTLSHosts(listen string) []string {
	host, _, _ := net.SplitHostPort(listen)
	var out []string
	if name, err := os.Hostname(); err == nil && name != "" {
		out = append(out, name)
	}
	ip := net.ParseIP(host)
	if host != "" && (ip == nil || !ip.IsUnspecified()) {
		return append(out, host)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

// localURL is how this process reaches its embedded server: a wildcard
// listen address becomes loopback, which the certificate always names.
func localURL(addr net.Addr, tls bool) string {
	scheme := "nats"
	if tls {
		scheme = "tls"
	}
	host, port := "127.0.0.1", "4222"
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(ta.Port)
		switch {
		case ta.IP.To4() == nil && ta.IP.IsUnspecified():
			host = "::1"
		case !ta.IP.IsUnspecified():
			host = ta.IP.String()
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// writeClientFiles records, for tpmauthnctl, where and how to reach NATS.
func (v *Verifier) writeClientFiles() {
	if err := os.WriteFile(v.clientURLFile(), []byte(v.url+"\n"), 0o644); err != nil {
		v.log.Warn("cannot record the client URL for tpmauthnctl", "error", err)
	}
	if v.trust.rootPEM == nil {
		if err := os.Remove(keys.ClientCAFile(v.cfg.DataDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			v.log.Warn("cannot remove the old client CA file", "error", err)
		}
		return
	}
	if err := keys.WriteClientCA(v.cfg.DataDir, v.trust.rootPEM); err != nil {
		v.log.Warn("cannot record the NATS CA for tpmauthnctl", "error", err)
	}
}
