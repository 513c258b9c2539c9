package tpm

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
)

// ekCertIndices are the NV indices where a manufacturer stores EK
// certificates (TCG EK Credential Profile 2.x §2.2.1.4): the low range
// (RSA 2048, ECC P-256) and the high range H-1 to H-7.
var ekCertIndices = []uint32{
	0x01c00002, 0x01c0000a,
	0x01c00012, 0x01c00014, 0x01c00016, 0x01c00018, 0x01c0001a, 0x01c0001c, 0x01c0001e,
}

// ekPersistentFirst and ekPersistentLast bound the persistent handles
// reserved for EKs (TCG Registry of Reserved TPM 2.0 Handles §2.3.1).
const (
	ekPersistentFirst = 0x81010000
	ekPersistentLast  = 0x810100ff
)

// CertifiedEK is an EK whose certificate the TPM holds and which sits at a
// persistent handle, so that it can activate credentials.
type CertifiedEK struct {
	Public      crypto.PublicKey
	PublicArea  []byte // TPMT_PUBLIC: what a verifier needs to make a credential for it
	Certificate *x509.Certificate
	handle      tpm2.TPMHandle
}

// CertifiedEKs lists every EK of the TPM that has a certificate in NV and
// is persisted (swtpm and provisioned machines persist theirs). A TPM has
// several (RSA and ECC, low and high range); the verifier claims each of
// them for the host, so that a revoked TPM cannot return with another one.
// Certificates whose key is not persisted are skipped.
func (t *TPM) CertifiedEKs() ([]*CertifiedEK, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	persisted, err := t.persistedEKs()
	if err != nil {
		return nil, err
	}
	var out []*CertifiedEK
	for _, idx := range ekCertIndices {
		der, err := t.readNV(tpm2.TPMHandle(idx))
		if err != nil {
			continue // no certificate there
		}
		cert, err := attest.ParseEKCertificate(der)
		if err != nil {
			continue
		}
		for _, p := range persisted {
			if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(p.Public) {
				p.Certificate = cert
				out = append(out, p)
				break
			}
		}
	}
	return out, nil
}

// persistedEKs reads the public areas at the EK handles.
func (t *TPM) persistedEKs() ([]*CertifiedEK, error) {
	caps, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: ekPersistentFirst, PropertyCount: 64}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("tpm2.GetCapability(handles): %w", err)
	}
	hs, err := caps.CapabilityData.Data.Handles()
	if err != nil {
		return nil, fmt.Errorf("tpm2.GetCapability(handles): %w", err)
	}
	var out []*CertifiedEK
	for _, h := range hs.Handle {
		if h > ekPersistentLast {
			break
		}
		rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t.tr)
		if err != nil {
			continue
		}
		p, err := rp.OutPublic.Contents()
		if err != nil || !p.ObjectAttributes.Restricted || !p.ObjectAttributes.Decrypt {
			continue // not a storage-type key: no EK
		}
		pub, err := publicKeyOf(p)
		if err != nil {
			continue
		}
		out = append(out, &CertifiedEK{Public: pub, PublicArea: tpm2.Marshal(p), handle: h})
	}
	return out, nil
}

func publicKeyOf(p *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	switch p.Type {
	case tpm2.TPMAlgRSA:
		d, err := p.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		u, err := p.Unique.RSA()
		if err != nil {
			return nil, err
		}
		return tpm2.RSAPub(d, u)
	case tpm2.TPMAlgECC:
		d, err := p.Parameters.ECCDetail()
		if err != nil {
			return nil, err
		}
		u, err := p.Unique.ECC()
		if err != nil {
			return nil, err
		}
		return tpm2.ECDSAPub(d, u)
	}
	return nil, fmt.Errorf("EK of type %#x", p.Type)
}

// readNV reads a whole NV index with owner authorization (how EK
// certificates are read).
func (t *TPM) readNV(idx tpm2.TPMHandle) ([]byte, error) {
	rp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t.tr)
	if err != nil {
		return nil, err
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	var out []byte
	for off := uint16(0); off < pub.DataSize; {
		n := min(pub.DataSize-off, 512)
		r, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: rp.NVName},
			Size:       n, Offset: off,
		}.Execute(t.tr)
		if err != nil {
			return nil, fmt.Errorf("tpm2.NVRead %#x: %w", uint32(idx), err)
		}
		out = append(out, r.Data.Buffer...)
		off += n
	}
	return out, nil
}

// ActivateCredentialWithEK runs TPM2_ActivateCredential (TPM 2.0 Part 3
// §12.5) with the AK and ek: credential and secret are the TPM2B_ID_OBJECT
// and TPM2B_ENCRYPTED_SECRET contents a verifier made with
// TPM2_MakeCredential's software equivalent for ek. The EK's use is
// authorized as its template says: by its (empty) auth value where
// userWithAuth is set (the high range), else by PolicySecret(endorsement)
// (the low range's policy A).
func (t *TPM) ActivateCredentialWithEK(ak *AK, ek *CertifiedEK, credential, secret []byte) ([]byte, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	if err := t.keys.flushAll(t.tr); err != nil {
		return nil, err
	}
	rp, err := tpm2.ReadPublic{ObjectHandle: ek.handle}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("activate credential: read EK %#x: %w", uint32(ek.handle), err)
	}
	pub, err := rp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("activate credential: EK public: %w", err)
	}
	if !bytes.Equal(tpm2.Marshal(pub), ek.PublicArea) {
		return nil, errors.New("activate credential: the EK at its handle changed")
	}
	akh, err := t.load(ak.public, ak.private)
	if err != nil {
		return nil, fmt.Errorf("activate credential: load AK: %w", err)
	}
	defer flush(t.tr, akh.Handle)
	ekAuth := tpm2.AuthHandle{Handle: ek.handle, Name: rp.Name, Auth: tpm2.PasswordAuth(nil)}
	if !pub.ObjectAttributes.UserWithAuth {
		sess, closeSess, err := tpm2.PolicySession(t.tr, pub.NameAlg, 16)
		if err != nil {
			return nil, fmt.Errorf("activate credential: policy session: %w", err)
		}
		defer func() { _ = closeSess() }()
		if _, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: sess.Handle()}).Execute(t.tr); err != nil {
			return nil, fmt.Errorf("activate credential: tpm2.PolicySecret: %w", err)
		}
		ekAuth.Auth = sess
	}
	cmd := tpm2.ActivateCredential{
		ActivateHandle: authHandle(akh),
		KeyHandle:      ekAuth,
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credential},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
	}
	var rsp *tpm2.ActivateCredentialResponse
	// TPM_RC_RETRY: the TPM did not start the command (TPM 2.0 Part 2
	// §6.6.3); libtpms says so while it computes ECC parameters.
	for range 10 {
		if rsp, err = cmd.Execute(t.tr); !errors.Is(err, tpm2.TPMRCRetry) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tpm2.ActivateCredential: %w", err)
	}
	return rsp.CertInfo.Buffer, nil
}
