package attestation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

var (
	oidAIKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 3} // tcg-kp-AIKCertificate
	oidFIDOAAGUID     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 45724, 1, 1, 4}
)

// TPMIdentity is the TCG TPM identity that an AK certificate's SAN carries
// (TCG EK Credential Profile §3.1.2): values such as "id:49424D00".
type TPMIdentity struct {
	Manufacturer string // tpmManufacturer, "id:" + TPM_PT_MANUFACTURER in hex
	Model        string // tpmModel, the vendor string
	Version      string // tpmVersion, "id:" + TPM_PT_FIRMWARE_VERSION_1 in hex
}

// NewTPMIdentity formats the values read from a TPM's fixed properties.
func NewTPMIdentity(manufacturer uint32, vendorString string, firmware1 uint32) TPMIdentity {
	model := vendorString
	if model == "" {
		model = "unknown"
	}
	return TPMIdentity{
		Manufacturer: fmt.Sprintf("id:%08X", manufacturer),
		Model:        model,
		Version:      fmt.Sprintf("id:%08X", firmware1),
	}
}

// AKCertRequest describes the AK certificate to issue.
type AKCertRequest struct {
	AKPublic  crypto.PublicKey
	TPM       TPMIdentity
	NotBefore time.Time     // zero: now minus five minutes of clock skew
	Validity  time.Duration // zero: one year
}

// IssueAKCertificate issues an AK certificate with the profile WebAuthn
// §8.3.1 requires of a TPM attestation certificate: version 3, empty subject,
// a critical SAN directoryName with the TPM manufacturer, model and version,
// EKU tcg-kp-AIKCertificate, basic constraints CA=false; plus the FIDO AAGUID
// extension naming the tpmauthn authenticator. It returns DER.
func IssueAKCertificate(ca *x509.Certificate, caKey crypto.Signer, req AKCertRequest) ([]byte, error) {
	if req.AKPublic == nil || ca == nil || caKey == nil {
		return nil, errors.New("issue AK certificate: AK public key, CA and CA key are required")
	}
	san, err := tpmSAN(req.TPM)
	if err != nil {
		return nil, err
	}
	aaguid, err := asn1.Marshal(AAGUID[:])
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	nb := req.NotBefore
	if nb.IsZero() {
		nb = time.Now().Add(-5 * time.Minute)
	}
	validity := req.Validity
	if validity == 0 {
		validity = 365 * 24 * time.Hour
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             nb,
		NotAfter:              nb.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidAIKCertificate},
		BasicConstraintsValid: true,
		IsCA:                  false,
		ExtraExtensions: []pkix.Extension{
			{Id: oidSubjectAltName, Critical: true, Value: san},
			{Id: oidFIDOAAGUID, Value: aaguid},
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, req.AKPublic, caKey)
	if err != nil {
		return nil, fmt.Errorf("issue AK certificate: %w", err)
	}
	return der, nil
}

func tpmSAN(id TPMIdentity) ([]byte, error) {
	if id.Manufacturer == "" || id.Model == "" || id.Version == "" {
		return nil, errors.New("issue AK certificate: TPM manufacturer, model and version are required")
	}
	rdn := func(oid asn1.ObjectIdentifier, v string) []pkix.AttributeTypeAndValue {
		return []pkix.AttributeTypeAndValue{{Type: oid, Value: asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(v)}}}
	}
	name, err := asn1.Marshal(pkix.RDNSequence{
		rdn(oidTPMManufacturer, id.Manufacturer),
		rdn(oidTPMModel, id.Model),
		rdn(oidTPMVersion, id.Version),
	})
	if err != nil {
		return nil, fmt.Errorf("encode TPM SAN: %w", err)
	}
	return asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
}

// NewCA creates a self-signed ECDSA P-256 CA fit to issue AK certificates
// (the fleet CA, or a throwaway one for development).
func NewCA(commonName string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	return pemca.New(commonName, validity)
}
