package attestation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// COSE identifiers (RFC 9052, RFC 9053).
const (
	coseKty    = 1
	coseAlg    = 3
	coseCrv    = -1
	coseX      = -2
	coseY      = -3
	coseKtyEC2 = 2
	coseES256  = -7
	coseP256   = 1
)

// COSEAlgES256 is the COSE algorithm of every tpmauthn credential (ECDSA
// P-256 with SHA-256).
const COSEAlgES256 = coseES256

var (
	// CTAP2 canonical CBOR (CTAP 2.1 §8): what authenticators emit.
	encMode = mustEncMode()
	// decMode bounds what untrusted CBOR may cost to decode.
	decMode = mustDecMode()
)

func mustEncMode() cbor.EncMode {
	m, err := cbor.CTAP2EncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	return m
}

func mustDecMode() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}

// EncodeCOSEKey encodes an ES256 COSE_Key from the TPM's raw coordinates.
// They are used as they are: WebAuthn verifiers compare them byte for byte
// with the pubArea's unique field.
func EncodeCOSEKey(x, y []byte) ([]byte, error) {
	if len(x) != 32 || len(y) != 32 {
		return nil, fmt.Errorf("%w: P-256 coordinates must be 32 bytes, got %d and %d", ErrMalformed, len(x), len(y))
	}
	return encMode.Marshal(map[int]any{coseKty: coseKtyEC2, coseAlg: coseES256, coseCrv: coseP256, coseX: x, coseY: y})
}

type coseEC2 struct {
	Kty int    `cbor:"1,keyasint"`
	Alg int    `cbor:"3,keyasint"`
	Crv int    `cbor:"-1,keyasint"`
	X   []byte `cbor:"-2,keyasint"`
	Y   []byte `cbor:"-3,keyasint"`
}

// ParseCOSEKey decodes an ES256 P-256 COSE_Key and checks the point is on the
// curve. Any other key type, algorithm or curve is refused.
func ParseCOSEKey(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) > maxCOSEKeyLen {
		return nil, fmt.Errorf("%w: COSE key is %d bytes, limit %d", ErrMalformed, len(b), maxCOSEKeyLen)
	}
	var k coseEC2
	if err := decMode.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%w: COSE key: %w", ErrMalformed, err)
	}
	if k.Kty != coseKtyEC2 || k.Alg != coseES256 || k.Crv != coseP256 {
		return nil, fmt.Errorf("%w: COSE key kty=%d alg=%d crv=%d, want EC2/ES256/P-256", ErrMalformed, k.Kty, k.Alg, k.Crv)
	}
	if len(k.X) != 32 || len(k.Y) != 32 {
		return nil, fmt.Errorf("%w: COSE key coordinates are %d and %d bytes, want 32", ErrMalformed, len(k.X), len(k.Y))
	}
	raw := append(append([]byte{4}, k.X...), k.Y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("%w: COSE key: %w", ErrMalformed, err)
	}
	return pub, nil
}

// coseKeyLen returns the length of the CBOR item at the start of b.
func coseKeyLen(b []byte) (int, error) {
	var raw cbor.RawMessage
	rest, err := decMode.UnmarshalFirst(b, &raw)
	if err != nil {
		return 0, fmt.Errorf("%w: credential public key: %w", ErrMalformed, err)
	}
	return len(b) - len(rest), nil
}
