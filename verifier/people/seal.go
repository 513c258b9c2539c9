package people

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
)

// ErrSealed: a sealed refresh token does not open (another key, or
// altered).
var ErrSealed = errors.New("sealed refresh token does not open")

// sealInfo is the HKDF info of the refresh-token key: the key is used for
// nothing else.
const sealInfo = "tpmauthn/people/refresh-token/v1"

// Sealer seals the IdPs' refresh tokens at rest (in the person records):
// AES-256-GCM with a key derived (HKDF-SHA256) from a secret every verifier
// instance of the fleet holds, the person's ID as additional data (a
// sealed token copied into another person's record does not open).
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer derives the key from secret (at least 32 bytes of entropy).
func NewSealer(secret []byte) (*Sealer, error) {
	if len(secret) < 32 {
		return nil, fmt.Errorf("refresh-token key: want a secret of at least 32 bytes, have %d", len(secret))
	}
	key, err := hkdf.Key(sha256.New, secret, nil, sealInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("refresh-token key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal returns nonce ‖ ciphertext of token, bound to person.
func (s *Sealer) Seal(person, token string) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(token)+s.aead.Overhead())
	_, _ = rand.Read(nonce) // never fails (crypto/rand, Go 1.24)
	return s.aead.Seal(nonce, nonce, []byte(token), []byte(person))
}

// Open reverses Seal (ErrSealed if sealed for another person or key).
func (s *Sealer) Open(person string, sealed []byte) (string, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return "", ErrSealed
	}
	b, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(person))
	if err != nil {
		return "", ErrSealed
	}
	return string(b), nil
}

// LogValue keeps the key out of logs (slog.LogValuer).
func (s *Sealer) LogValue() slog.Value { return slog.StringValue("[REDACTED]") }
