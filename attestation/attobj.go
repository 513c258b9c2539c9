package attestation

import (
	"fmt"
)

// TPMStatement is the `tpm` attestation statement (WebAuthn §8.3).
type TPMStatement struct {
	Ver      string   `cbor:"ver"`
	Alg      int      `cbor:"alg"`
	X5C      [][]byte `cbor:"x5c"`
	Sig      []byte   `cbor:"sig"`
	CertInfo []byte   `cbor:"certInfo"`
	PubArea  []byte   `cbor:"pubArea"`
}

// AttestationObject is WebAuthn §6.5.4 with the `tpm` format.
type AttestationObject struct {
	Fmt      string       `cbor:"fmt"`
	AttStmt  TPMStatement `cbor:"attStmt"`
	AuthData []byte       `cbor:"authData"`
}

// NewTPMAttestationObject assembles the attestation object of a registration:
// certInfo and sig from TPM2_Certify by the AK, pubArea the credential key's
// TPMT_PUBLIC, akCert the AK certificate (DER).
func NewTPMAttestationObject(authData, pubArea, certInfo, sig, akCert []byte) ([]byte, error) {
	b, err := encMode.Marshal(AttestationObject{
		Fmt: "tpm",
		AttStmt: TPMStatement{
			Ver: "2.0", Alg: coseES256, X5C: [][]byte{akCert},
			Sig: sig, CertInfo: certInfo, PubArea: pubArea,
		},
		AuthData: authData,
	})
	if err != nil {
		return nil, fmt.Errorf("encode attestation object: %w", err)
	}
	return b, nil
}
