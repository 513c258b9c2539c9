package attestation

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// LoadOrCreateCA reads a CA certificate and its EC key from PEM files, or,
// when the certificate does not exist, creates a CA named commonName and
// writes both (the key 0600, created exclusively). created says which.
func LoadOrCreateCA(certPath, keyPath, commonName string, validity time.Duration) (ca *x509.Certificate, key *ecdsa.PrivateKey, created bool, err error) {
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
	ca, key, err := NewCA(commonName, validity)
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
