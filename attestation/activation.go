package attestation

import (
	"crypto"
	"crypto/rand"
	"crypto/subtle"
	"fmt"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
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

// maxEKPublicArea bounds an EK's TPMT_PUBLIC (an RSA 4096 key's is under
// 600 bytes).
const maxEKPublicArea = 1024

// EKPublicKey decodes an EK's public area (TPMT_PUBLIC, TPM 2.0 Part 2
// §12.2.4) and returns its key. It must be a restricted decryption key, as
// every EK template is (TCG EK Credential Profile §2.1.5).
func EKPublicKey(area []byte) (crypto.PublicKey, error) {
	if len(area) == 0 || len(area) > maxEKPublicArea {
		return nil, fmt.Errorf("%w: EK public area of %d bytes", ErrMalformed, len(area))
	}
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](area)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public area: %w", ErrMalformed, err)
	}
	if !p.ObjectAttributes.Restricted || !p.ObjectAttributes.Decrypt || p.ObjectAttributes.SignEncrypt {
		return nil, fmt.Errorf("%w: EK public area is not a restricted decryption key", ErrMalformed)
	}
	switch p.Type {
	case tpm2.TPMAlgRSA:
		d, err := p.Parameters.RSADetail()
		if err != nil {
			return nil, fmt.Errorf("%w: EK: %w", ErrMalformed, err)
		}
		u, err := p.Unique.RSA()
		if err != nil {
			return nil, fmt.Errorf("%w: EK: %w", ErrMalformed, err)
		}
		return tpm2.RSAPub(d, u)
	case tpm2.TPMAlgECC:
		d, err := p.Parameters.ECCDetail()
		if err != nil {
			return nil, fmt.Errorf("%w: EK: %w", ErrMalformed, err)
		}
		u, err := p.Unique.ECC()
		if err != nil {
			return nil, fmt.Errorf("%w: EK: %w", ErrMalformed, err)
		}
		return tpm2.ECDSAPub(d, u)
	}
	return nil, fmt.Errorf("%w: EK of algorithm %#x", ErrMalformed, p.Type)
}

// NewActivationForEK is NewActivation for an EK given by its public area,
// whose name algorithm and symmetric scheme the TPM uses to recover the
// secret (TPM 2.0 Part 1 §24; go-tpm's CreateCredential follows them, where
// go-attestation assumes the low range's SHA-256 and AES-128). The
// challenge's Credential and Secret are the bare TPM2B contents.
func NewActivationForEK(ekArea []byte, ak attest.AttestationParameters) (*Activation, error) {
	ekPub, err := EKPublicKey(ekArea)
	if err != nil {
		return nil, err
	}
	if err := (&attest.ActivationParameters{EK: ekPub, AK: ak}).CheckAKParameters(); err != nil {
		return nil, fmt.Errorf("%w: AK parameters: %s", ErrAttestation, err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ak.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public: %w", ErrAttestation, err)
	}
	name, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, fmt.Errorf("%w: AK name: %w", ErrAttestation, err)
	}
	ekPublic, err := tpm2.Unmarshal[tpm2.TPMTPublic](ekArea)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public area: %w", ErrMalformed, err)
	}
	kem, err := tpm2.ImportEncapsulationKey(ekPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: EK: %w", ErrMalformed, err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	cred, encSecret, err := tpm2.CreateCredential(rand.Reader, kem, name.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("%w: make credential: %w", ErrAttestation, err)
	}
	return &Activation{Secret: secret, Challenge: attest.EncryptedCredential{Credential: cred, Secret: encSecret}}, nil
}
