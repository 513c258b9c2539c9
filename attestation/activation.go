package attestation

import (
	"crypto"
	"crypto/subtle"
	"fmt"

	"github.com/google/go-attestation/attest"
)

// Activation is a credential-activation challenge (TPM 2.0 Part 1 §24,
// TPM2_MakeCredential done in software) and the secret it hides.
type Activation struct {
	Secret    []byte
	Challenge attest.EncryptedCredential
}

// NewActivation checks the AK's creation attestation (restricted, fixedTPM,
// fixedParent, sensitiveDataOrigin, self-certified; go-attestation's
// CheckAKParameters) and encrypts a fresh secret to the EK, bound to the AK's
// name. Only the TPM holding both keys can recover the secret.
func NewActivation(ekPub crypto.PublicKey, ak attest.AttestationParameters) (*Activation, error) {
	p := attest.ActivationParameters{EK: ekPub, AK: ak}
	secret, ec, err := p.Generate()
	if err != nil {
		// go-attestation wraps with %v: keep its text, use our sentinel.
		return nil, fmt.Errorf("%w: AK parameters: %s", ErrAttestation, err)
	}
	return &Activation{Secret: secret, Challenge: *ec}, nil
}

// CheckActivation compares the secret a TPM returned with the one expected,
// in constant time.
func CheckActivation(want, got []byte) error {
	if len(want) == 0 || subtle.ConstantTimeCompare(want, got) != 1 {
		return ErrActivationFailed
	}
	return nil
}
