package tpm

import (
	"crypto"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
)

// keyEncodingEncrypted is go-attestation's marker for a key stored as a
// TPM-encrypted blob (attest.keyEncodingEncrypted, v0.6.4).
const keyEncodingEncrypted = 2

// AK is an attestation key: a restricted ECDSA P-256 signing key created by
// go-attestation under the SRK. Its persistent form is go-attestation's own
// blob (Blob), so that go-attestation can reload it for credential activation.
type AK struct {
	blob    []byte
	params  attest.AttestationParameters
	pub     crypto.PublicKey
	public  []byte // TPMT_PUBLIC
	private []byte // TPM2B_PRIVATE contents
}

// serializedAK is the subset of go-attestation's serializedKey (storage.go)
// that TPM2_Certify needs: go-attestation only certifies with empty qualifying
// data, and WebAuthn needs extraData = H(authData ‖ clientDataHash), which is
// known only after the key exists. TestAKBlobMatchesGoAttestation pins it.
type serializedAK struct {
	Encoding          int `json:"KeyEncoding"`
	Public            []byte
	CreateData        []byte
	CreateAttestation []byte
	CreateSignature   []byte
	KeyBlob           []byte
}

// ParseAK decodes an AK blob written by Blob. It does not touch the TPM.
func ParseAK(blob []byte) (*AK, error) {
	var s serializedAK
	if err := json.Unmarshal(blob, &s); err != nil {
		return nil, fmt.Errorf("%w: AK: %w", ErrBadBlob, err)
	}
	if s.Encoding != keyEncodingEncrypted || len(s.Public) == 0 || len(s.KeyBlob) == 0 {
		return nil, fmt.Errorf("%w: AK: not a TPM 2.0 encrypted key blob", ErrBadBlob)
	}
	params := attest.AttestationParameters{
		Public:            s.Public,
		CreateData:        s.CreateData,
		CreateAttestation: s.CreateAttestation,
		CreateSignature:   s.CreateSignature,
	}
	akPub, err := attest.ParseAKPublic(s.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: AK public: %w", ErrBadBlob, err)
	}
	return &AK{blob: blob, params: params, pub: akPub.Public, public: s.Public, private: s.KeyBlob}, nil
}

// Blob returns the AK's persistent form (go-attestation's opaque blob).
func (a *AK) Blob() []byte { return a.blob }

// Public returns the AK's public key.
func (a *AK) Public() crypto.PublicKey { return a.pub }

// AttestationParameters returns what the verifier needs to check the AK and
// build a credential-activation challenge.
func (a *AK) AttestationParameters() attest.AttestationParameters { return a.params }

// NewAK creates an ECDSA P-256 attestation key with go-attestation (which also
// persists the SRK at 0x81000001 if the TPM has none) and flushes it.
func (t *TPM) NewAK() (*AK, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	if err := t.keys.flushAll(t.tr); err != nil {
		return nil, err
	}
	ak, err := t.at.NewAK(&attest.AKConfig{Algorithm: attest.ECDSA})
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	blob, merr := ak.Marshal()
	cerr := ak.Close(t.at)
	if merr != nil {
		return nil, fmt.Errorf("create AK: marshal: %w", merr)
	}
	if cerr != nil {
		return nil, fmt.Errorf("create AK: flush: %w", cerr)
	}
	return ParseAK(blob)
}

// ActivateCredential runs TPM2_ActivateCredential (TPM 2.0 Part 3 §12.5) with
// the AK and the RSA EK, and returns the secret the verifier encrypted. It only
// succeeds on the TPM whose EK the challenge was made for and that holds the
// AK named in it.
func (t *TPM) ActivateCredential(ak *AK, ec attest.EncryptedCredential) ([]byte, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	if err := t.keys.flushAll(t.tr); err != nil {
		return nil, err
	}
	loaded, err := t.at.LoadAK(ak.blob)
	if err != nil {
		return nil, fmt.Errorf("activate credential: load AK: %w", err)
	}
	secret, err := loaded.ActivateCredential(t.at, ec)
	cerr := loaded.Close(t.at)
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("activate credential: flush AK: %w", cerr)
	}
	return secret, nil
}

// Certify runs TPM2_Certify (TPM 2.0 Part 3 §18.2): the AK signs a TPMS_ATTEST
// naming the credential key, with qualifying as extraData. It returns the raw
// TPMS_ATTEST and the signature in DER, the form of the WebAuthn `tpm`
// statement's certInfo and sig (WebAuthn §8.3).
func (t *TPM) Certify(k *Key, ak *AK, qualifying []byte) (certInfo, sig []byte, err error) {
	if err := t.lock(); err != nil {
		return nil, nil, err
	}
	defer t.mu.Unlock()
	kh, err := t.loaded(k)
	if err != nil {
		return nil, nil, err
	}
	akh, err := t.load(ak.public, ak.private)
	if err != nil {
		return nil, nil, fmt.Errorf("load AK: %w", err)
	}
	defer flush(t.tr, akh.Handle)
	rsp, err := tpm2.Certify{
		ObjectHandle:   authHandle(kh),
		SignHandle:     authHandle(akh),
		QualifyingData: tpm2.TPM2BData{Buffer: qualifying},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(t.tr)
	if err != nil {
		return nil, nil, fmt.Errorf("tpm2.Certify: %w", err)
	}
	es, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, nil, errors.New("tpm2.Certify: AK did not return an ECDSA signature")
	}
	sig, err = derSignature(es)
	if err != nil {
		return nil, nil, err
	}
	return rsp.CertifyInfo.Bytes(), sig, nil
}
