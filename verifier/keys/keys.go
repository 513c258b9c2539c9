// Package keys is the verifier's key material in its data directory (nkeys
// for the callout issuer, its sealing key and the NATS users; the fleet CA),
// created on first start and kept 0600, and the nats-server configuration
// block that declares it (ServerConfig). tpmauthnctl uses it to find the
// operator credential and to print that block, so it links no server code.
package keys

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

// Files in the verifier's data directory. Secrets are 0600.
const (
	fileCA        = "fleet-ca.pem"
	fileCAKey     = "fleet-ca-key.pem"
	fileNATSCA    = "nats-ca.pem" // issues the embedded server's TLS certificate only
	fileNATSCAKey = "nats-ca-key.pem"
	fileIssuer    = "issuer.nk"   // auth-callout issuer (account key)
	fileXKey      = "xkey.nk"     // curve key: callout requests are sealed to it
	fileVerifier  = "verifier.nk" // the verifier's own NATS user
	fileSys       = "sys.nk"      // system-account user, for kicks
	fileOperator  = "operator.nk" // tpmauthnctl's NATS user
	fileClientURL = "client-url"  // where tpmauthnctl finds the NATS server
	fleetCAYears  = 20
)

// IssuerFile is the issuer key's file: its public key verifies the audit
// trail.
const IssuerFile = fileIssuer

// Shared are the files every verifier of one fleet holds the same copy of
// (several verifiers on one cluster, or embedded servers forming one): copy
// these, never the JetStream store or the server name.
var Shared = []string{fileIssuer, fileXKey, fileVerifier, fileSys, fileOperator, fileCA, fileCAKey, fileNATSCA, fileNATSCAKey}

// Set is the verifier's key material. It is created on first start and
// never leaves the data directory.
type Set struct {
	FleetCA    *x509.Certificate
	FleetCAKey *ecdsa.PrivateKey
	// NATSCA issues the embedded server's TLS certificate and nothing else:
	// the fleet CA certifies AKs, which can sign a TLS handshake, so a host
	// could otherwise pose as the server to its neighbours.
	NATSCA    *x509.Certificate
	NATSCAKey *ecdsa.PrivateKey
	Issuer    nkeys.KeyPair // account key that signs callout responses and user JWTs
	XKey      nkeys.KeyPair // curve key for sealed callout requests
	Verifier  nkeys.KeyPair // user in AUTH
	Sys       nkeys.KeyPair // user in SYS
	Operator  nkeys.KeyPair // user in AUTH, admin subjects only
}

// LogValue keeps key material out of logs (slog.LogValuer).
func (k *Set) LogValue() slog.Value { return slog.StringValue("[REDACTED]") }

// LoadOrCreate reads the key material in dir, creating what is missing.
// It returns the names of the files it created.
func LoadOrCreate(dir string) (*Set, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data directory: %w", err)
	}
	var k Set
	var created []string
	var err error
	nk := []struct {
		file   string
		dst    *nkeys.KeyPair
		create func() (nkeys.KeyPair, error)
	}{
		{fileIssuer, &k.Issuer, nkeys.CreateAccount},
		{fileXKey, &k.XKey, nkeys.CreateCurveKeys},
		{fileVerifier, &k.Verifier, nkeys.CreateUser},
		{fileSys, &k.Sys, nkeys.CreateUser},
		{fileOperator, &k.Operator, nkeys.CreateUser},
	}
	for _, n := range nk {
		kp, made, err := loadOrCreateNKey(filepath.Join(dir, n.file), n.create)
		if err != nil {
			return nil, nil, err
		}
		*n.dst = kp
		if made {
			created = append(created, n.file)
		}
	}
	if k.Issuer, err = newFastKeyPair(k.Issuer); err != nil {
		return nil, nil, fmt.Errorf("issuer key: %w", err)
	}
	ca, key, made, err := loadOrCreateCA(dir)
	if err != nil {
		return nil, nil, err
	}
	k.FleetCA, k.FleetCAKey = ca, key
	if made {
		created = append(created, fileCA, fileCAKey)
	}
	k.NATSCA, k.NATSCAKey, made, err = pemca.LoadOrCreate(filepath.Join(dir, fileNATSCA), filepath.Join(dir, fileNATSCAKey),
		"tpmauthn NATS CA", fleetCAYears*365*24*time.Hour)
	if err != nil {
		return nil, nil, err
	}
	if made {
		created = append(created, fileNATSCA, fileNATSCAKey)
	}
	return &k, created, nil
}

// LoadNKey reads an nkey seed file.
func LoadNKey(path string) (nkeys.KeyPair, error) {
	seed, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return nil, fmt.Errorf("%s: not an nkey seed: %w", path, err)
	}
	return kp, nil
}

func loadOrCreateNKey(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, bool, error) {
	seed, err := os.ReadFile(path)
	if err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, false, fmt.Errorf("%s: not an nkey seed: %w", path, err)
		}
		return kp, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	kp, err := create()
	if err != nil {
		return nil, false, err
	}
	seed, err = kp.Seed()
	if err != nil {
		return nil, false, err
	}
	if err := writeSecret(path, append(seed, '\n')); err != nil {
		return nil, false, err
	}
	return kp, true, nil
}

func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, bool, error) {
	return pemca.LoadOrCreate(filepath.Join(dir, fileCA), filepath.Join(dir, fileCAKey), "tpmauthn fleet CA", fleetCAYears*365*24*time.Hour)
}

func writeSecret(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// Public returns a key pair's public key; nkeys only fails on a wiped pair.
func Public(kp nkeys.KeyPair) string {
	p, err := kp.PublicKey()
	if err != nil {
		panic(fmt.Sprintf("nkey public key: %v", err))
	}
	return p
}

// OperatorFiles returns where tpmauthnctl finds the operator credential and
// the client URL in a verifier's data directory.
func OperatorFiles(dataDir string) (seed, clientURL string) {
	return filepath.Join(dataDir, fileOperator), filepath.Join(dataDir, fileClientURL)
}

// LoginURLFile is where a verifier records, for tpmauthnctl login, the URL
// of its people's logins (its HTTP listener's public URL).
func LoginURLFile(dataDir string) string { return filepath.Join(dataDir, "login-url") }

// SysSeedFile is the system-account user seed in a data directory.
func SysSeedFile(dataDir string) string { return filepath.Join(dataDir, fileSys) }
