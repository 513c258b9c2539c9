package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

// fileNATSCA keeps the CA the join token pinned, learned at enrollment:
// every later connection verifies the server with it.
const fileNATSCA = "nats-ca.pem"

// serverTrust is what the agent verifies the NATS server with: the
// configured bundle (--nats-ca), else the CA a join token pinned and the
// agent kept, else the system's roots.
type serverTrust struct {
	mu      sync.Mutex
	roots   *x509.CertPool
	rootPEM []byte
	fixed   bool // configured: never replaced by a pinned CA
	file    string
}

func loadServerTrust(cfg Config) (*serverTrust, error) {
	t := &serverTrust{file: filepath.Join(cfg.DataDir, fileNATSCA)}
	path := cfg.NATSCA
	t.fixed = path != ""
	if path == "" {
		path = t.file
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !t.fixed {
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("NATS CA: %w", err)
	}
	certs, err := pemca.ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("NATS CA %s: %w", path, err)
	}
	t.set(certs)
	return t, nil
}

func (t *serverTrust) set(certs []*x509.Certificate) {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	t.mu.Lock()
	t.roots, t.rootPEM = pool, natstls.EncodePEM(certs...)
	t.mu.Unlock()
}

// PEM is the bundle workloads verify the server with (nil: system roots).
func (t *serverTrust) PEM() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rootPEM
}

// options are a connection's TLS options; pin is a join token's CA pin,
// which the first enrollment uses instead of what the agent kept (the
// token is newer), unless the operator configured a bundle.
func (t *serverTrust) options(url, pin string, onErr func(error)) ([]nats.Option, error) {
	t.mu.Lock()
	tr := natstls.Trust{Roots: t.roots}
	fixed := t.fixed
	t.mu.Unlock()
	if pin != "" && !fixed {
		tr = natstls.Trust{Pin: pin, OnPinned: func(ca *x509.Certificate) {
			if err := t.keep(ca); err != nil {
				onErr(err)
			}
		}}
	}
	return natstls.Options(url, tr)
}

// keep makes a pinned CA the roots of later connections, on disk too.
func (t *serverTrust) keep(ca *x509.Certificate) error {
	t.mu.Lock()
	same := string(t.rootPEM) == string(natstls.EncodePEM(ca))
	t.mu.Unlock()
	if same {
		return nil
	}
	t.set([]*x509.Certificate{ca})
	return writeFileAtomic(t.file, natstls.EncodePEM(ca), 0o644)
}
