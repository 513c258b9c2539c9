package tpm

import (
	"crypto/ecdsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// srkHandle is the TCG-reserved handle of the storage root key; go-attestation
// creates and persists its RSA SRK there, and credential keys share it.
const srkHandle = tpm2.TPMHandle(0x81000001)

// maxCreateAttempts bounds retries for a key whose coordinates are shorter
// than 32 bytes (1 in 128 keys): COSE (RFC 9053 §7.1.1) requires fixed-width
// coordinates while WebAuthn verifiers compare them byte for byte with the
// TPM's unique field, so such a key can satisfy only one of the two.
const maxCreateAttempts = 8

// credentialTemplate is a non-restricted ECDSA P-256 signing key that never
// leaves this TPM. Scheme and KDF are TPM_ALG_NULL: several WebAuthn verifiers
// (SimpleWebAuthn among them) reject an ECC pubArea that carries a scheme, so
// the scheme is given at TPM2_Sign instead.
var credentialTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID:   tpm2.TPMECCNistP256,
		KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// Key is a credential key as stored on disk: the TPM's public area and the
// private blob, which only this TPM can load.
type Key struct {
	Public  []byte // TPMT_PUBLIC, exactly as TPM2_Create returned it
	Private []byte // TPM2B_PRIVATE contents (encrypted by the parent)
}

// PublicKey decodes the key's P-256 public key and the raw coordinates.
func (k *Key) PublicKey() (*ecdsa.PublicKey, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: public area: %w", ErrBadBlob, err)
	}
	return eccPublic(pub)
}

func eccPublic(pub *tpm2.TPMTPublic) (*ecdsa.PublicKey, error) {
	if pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("%w: key type %#x is not ECC", ErrBadBlob, pub.Type)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("%w: curve %#x is not P-256", ErrBadBlob, parms.CurveID)
	}
	return tpm2.ECDSAPub(parms, pt)
}

// maxCachedNames bounds the name cache (one entry per key used).
const maxCachedNames = 4096

// nameOf is k's TPM name, cached. Called with t.mu held.
func (t *TPM) nameOf(k *Key) (tpm2.TPM2BName, error) {
	if n, ok := t.names[string(k.Public)]; ok {
		return n, nil
	}
	n, err := k.name()
	if err != nil {
		return n, err
	}
	if t.names == nil || len(t.names) >= maxCachedNames {
		t.names = map[string]tpm2.TPM2BName{}
	}
	t.names[string(k.Public)] = n
	return n, nil
}

func (k *Key) name() (tpm2.TPM2BName, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return tpm2.TPM2BName{}, fmt.Errorf("%w: public area: %w", ErrBadBlob, err)
	}
	n, err := tpm2.ObjectName(pub)
	if err != nil {
		return tpm2.TPM2BName{}, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	return *n, nil
}

// CreateKey creates a credential key under the SRK. The key is not loaded.
func (t *TPM) CreateKey() (*Key, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	srk, err := t.ensureSRK()
	if err != nil {
		return nil, err
	}
	for range maxCreateAttempts {
		rsp, err := tpm2.Create{
			ParentHandle: authHandle(*srk),
			InPublic:     tpm2.New2B(credentialTemplate),
		}.Execute(t.tr)
		if err != nil {
			return nil, fmt.Errorf("tpm2.Create: %w", err)
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return nil, fmt.Errorf("tpm2.Create: %w", err)
		}
		pt, err := pub.Unique.ECC()
		if err != nil {
			return nil, fmt.Errorf("tpm2.Create: %w", err)
		}
		if len(pt.X.Buffer) != 32 || len(pt.Y.Buffer) != 32 {
			continue
		}
		return &Key{Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}, nil
	}
	return nil, errors.New("tpm2.Create: no key with full-width coordinates after retries")
}

// Sign signs a SHA-256 digest with the credential key and returns an ASN.1 DER
// ECDSA signature. A key that is already loaded costs one command (TPM2_Sign).
func (t *TPM) Sign(k *Key, digest []byte) ([]byte, error) {
	if len(digest) != 32 {
		return nil, fmt.Errorf("sign: digest is %d bytes, want 32 (SHA-256)", len(digest))
	}
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	h, err := t.loaded(k)
	if err != nil {
		return nil, err
	}
	rsp, err := sign(t.tr, h, digest)
	if isStaleHandle(err) {
		// The TPM lost the object (a restart behind our back): reload once.
		t.keys.forget(h.Name)
		if h, err = t.loaded(k); err != nil {
			return nil, err
		}
		rsp, err = sign(t.tr, h, digest)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm2.Sign: %w", err)
	}
	es, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpm2.Sign: %w", err)
	}
	return derSignature(es)
}

func sign(tr transport.TPM, h tpm2.NamedHandle, digest []byte) (*tpm2.SignResponse, error) {
	return tpm2.Sign{
		KeyHandle: authHandle(h),
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(tr)
}

func isStaleHandle(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCReferenceH0)
}

// Unload flushes the key if the cache holds it (for example before its blob
// is deleted).
func (t *TPM) Unload(k *Key) error {
	if err := t.lock(); err != nil {
		return err
	}
	defer t.mu.Unlock()
	name, err := t.nameOf(k)
	if err != nil {
		return err
	}
	return t.keys.evict(t.tr, name)
}

// loaded returns a handle for k, loading it (and evicting the least recently
// used key) when the cache does not hold it. Called with t.mu held.
func (t *TPM) loaded(k *Key) (tpm2.NamedHandle, error) {
	name, err := t.nameOf(k)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	if h, ok := t.keys.get(name); ok {
		return h, nil
	}
	if err := t.keys.makeRoom(t.tr); err != nil {
		return tpm2.NamedHandle{}, err
	}
	h, err := t.load(k.Public, k.Private)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	t.keys.put(h)
	return h, nil
}

// load loads a key under the SRK; the caller flushes or caches the handle.
func (t *TPM) load(public, private []byte) (tpm2.NamedHandle, error) {
	srk, err := t.ensureSRK()
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	rsp, err := tpm2.Load{
		ParentHandle: authHandle(*srk),
		InPrivate:    tpm2.TPM2BPrivate{Buffer: private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](public),
	}.Execute(t.tr)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("tpm2.Load: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// ensureSRK returns the persistent SRK, creating and persisting it (with the
// TCG reference RSA template that go-attestation also uses) if it is missing.
// Called with t.mu held.
func (t *TPM) ensureSRK() (*tpm2.NamedHandle, error) {
	if t.srk != nil {
		return t.srk, nil
	}
	rp, err := tpm2.ReadPublic{ObjectHandle: srkHandle}.Execute(t.tr)
	if err == nil {
		t.srk = &tpm2.NamedHandle{Handle: srkHandle, Name: rp.Name}
		return t.srk, nil
	}
	if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("read SRK %#x: %w", uint32(srkHandle), err)
	}
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
	}.Execute(t.tr)
	if err != nil {
		return nil, fmt.Errorf("create SRK: tpm2.CreatePrimary: %w", err)
	}
	defer flush(t.tr, cp.ObjectHandle)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: srkHandle,
	}).Execute(t.tr); err != nil {
		return nil, fmt.Errorf("persist SRK: tpm2.EvictControl: %w", err)
	}
	t.srk = &tpm2.NamedHandle{Handle: srkHandle, Name: cp.Name}
	return t.srk, nil
}

func authHandle(h tpm2.NamedHandle) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)}
}

func flush(tr transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tr)
}

// derSignature encodes a TPM ECDSA signature as ASN.1 DER (SEC 1 §C.8), the
// form WebAuthn requires (§6.5.5).
func derSignature(s *tpm2.TPMSSignatureECC) ([]byte, error) {
	der, err := asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(s.SignatureR.Buffer),
		new(big.Int).SetBytes(s.SignatureS.Buffer),
	})
	if err != nil {
		return nil, fmt.Errorf("encode ECDSA signature: %w", err)
	}
	return der, nil
}
