package attestation

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
)

// EKHash names an EK: hex SHA-256 of its PKIX public key encoding.
func EKHash(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("EK public key: %w", err)
	}
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:]), nil
}

// rotationLabel separates rotation proofs from every other signature.
const rotationLabel = "tpmauthn/rotate/v1\x00"

// RotationChallenge is what the replaced credential signs to vouch for its
// successor: the verifier's registration challenge and the new credential's
// ID, so the proof cannot be moved to another registration.
func RotationChallenge(challenge, newCredentialID []byte) []byte {
	h := sha256.New()
	h.Write([]byte(rotationLabel))
	h.Write(challenge)
	h.Write(newCredentialID)
	return h.Sum(nil)
}
