// Package pemca keeps a certificate authority in two PEM files: a certificate
// and its EC private key (0600, created exclusively). The verifier's fleet CA
// and the agent's debug CA live this way.
package pemca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// LoadOrCreate reads a CA certificate and its EC key from PEM files, or,
// when the certificate does not exist, creates a CA named commonName and
// writes both (the key 0600, created exclusively). created says which.
func LoadOrCreate(certPath, keyPath, commonName string, validity time.Duration) (ca *x509.Certificate, key *ecdsa.PrivateKey, created bool, err error) {
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		ca, key, err = newCAFiles(certPath, keyPath, commonName, validity)
		return ca, key, err == nil, err
	}
	if err != nil {
		return nil, nil, false, err
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, nil, false, fmt.Errorf("%s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, false, fmt.Errorf("CA key: %w", err)
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, nil, false, fmt.Errorf("%s holds no PEM block", keyPath)
	}
	key, err = x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, false, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, nil, false, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return certs[0], key, false, nil
}

func newCAFiles(certPath, keyPath, commonName string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(certPath), 0o700); err != nil {
		return nil, nil, err
	}
	ca, key, err := New(commonName, validity)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", keyPath, err)
	}
	if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})); err != nil {
		f.Close()
		return nil, nil, err
	}
	if err := f.Close(); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// New creates a self-signed ECDSA P-256 CA fit to issue AK certificates
// (the fleet CA, or a throwaway one for development).
func New(commonName string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-5 * time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"tpmauthn"}},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// ParseCertificates parses every PEM CERTIFICATE block in b; it wants at
// least one.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}
