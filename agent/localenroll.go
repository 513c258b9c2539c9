package agent

import (
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/tpmauthn/tpmauthn/attestation"
)

// EnrollWithCA enrolls the host against a CA held in this process: it plays
// the verifier's part of enrollment (credential activation against the TPM's
// EK, then an AK certificate from ca) without a network. It serves
// development (tpmauthn-agent debug) and tests; fleets enroll with the
// verifier, which also checks the EK certificate chain.
func (a *Authenticator) EnrollWithCA(ca *x509.Certificate, caKey crypto.Signer) error {
	ak, err := a.AK()
	if err != nil {
		return err
	}
	ek, err := a.tpm.EK()
	if err != nil {
		return err
	}
	act, err := attestation.NewActivation(ek.Public, ak.AttestationParameters())
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	secret, err := a.tpm.ActivateCredential(ak, act.Challenge)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := attestation.CheckActivation(act.Secret, secret); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	info := a.tpm.Info()
	der, err := attestation.IssueAKCertificate(ca, caKey, attestation.AKCertRequest{
		AKPublic: ak.Public(),
		TPM:      attestation.NewTPMIdentity(info.Manufacturer, info.VendorString, info.FirmwareVersion1),
	})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return a.SetAKCertificate(der)
}
