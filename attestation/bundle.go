package attestation

import (
	"encoding/binary"
	"fmt"
)

// BundleVersion is the only bundle version this code writes and reads.
const BundleVersion = 1

// Bundle field limits. The whole bundle, base64url-encoded, must leave room in
// the NATS CONNECT line (max_control_line, 4096 bytes by default).
const (
	maxBundleClientData = 512
	maxBundleSignature  = 80 // DER ECDSA P-256 is at most 72
	minBundleSignature  = 8
	// MaxBundleLen bounds an encoded bundle before base64.
	MaxBundleLen = 1 + 1 + MaxCredentialIDLen + 2 + MaxAuthDataLen + 2 + maxBundleClientData + 1 + maxBundleSignature
)

// MarshalBundle encodes an assertion compactly for the NATS CONNECT `sig`
// field:
//
//	u8 version (1)
//	u8 len ‖ credential ID        (1..64)
//	u16 len ‖ authenticatorData   (37..1024, big-endian length)
//	u16 len ‖ clientDataJSON      (1..512)
//	u8 len ‖ signature (DER)      (8..80)
//
// The user handle is not carried: the verifier knows it from the credential.
func MarshalBundle(a *Assertion) ([]byte, error) {
	if err := checkBundleSizes(len(a.CredentialID), len(a.AuthData), len(a.ClientDataJSON), len(a.Signature)); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 7+len(a.CredentialID)+len(a.AuthData)+len(a.ClientDataJSON)+len(a.Signature))
	b = append(b, BundleVersion, byte(len(a.CredentialID)))
	b = append(b, a.CredentialID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.AuthData)))
	b = append(b, a.AuthData...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.ClientDataJSON)))
	b = append(b, a.ClientDataJSON...)
	b = append(b, byte(len(a.Signature)))
	return append(b, a.Signature...), nil
}

func checkBundleSizes(id, ad, cd, sig int) error {
	switch {
	case id < 1 || id > MaxCredentialIDLen:
		return fmt.Errorf("%w: bundle credential ID is %d bytes, want 1..%d", ErrMalformed, id, MaxCredentialIDLen)
	case ad < authDataFixedLen || ad > MaxAuthDataLen:
		return fmt.Errorf("%w: bundle authenticator data is %d bytes, want %d..%d", ErrMalformed, ad, authDataFixedLen, MaxAuthDataLen)
	case cd < 1 || cd > maxBundleClientData:
		return fmt.Errorf("%w: bundle clientDataJSON is %d bytes, want 1..%d", ErrMalformed, cd, maxBundleClientData)
	case sig < minBundleSignature || sig > maxBundleSignature:
		return fmt.Errorf("%w: bundle signature is %d bytes, want %d..%d", ErrMalformed, sig, minBundleSignature, maxBundleSignature)
	}
	return nil
}

// bundleReader reads length-prefixed fields and remembers the first error.
type bundleReader struct {
	b   []byte
	err error
}

func (r *bundleReader) n(width int) int {
	if r.err != nil {
		return 0
	}
	if len(r.b) < width {
		r.err = fmt.Errorf("%w: bundle truncated", ErrMalformed)
		return 0
	}
	var v int
	if width == 1 {
		v = int(r.b[0])
	} else {
		v = int(binary.BigEndian.Uint16(r.b))
	}
	r.b = r.b[width:]
	return v
}

func (r *bundleReader) field(width int) []byte {
	n := r.n(width)
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: bundle truncated", ErrMalformed)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// UnmarshalBundle decodes a bundle strictly: known version, every length in
// range, no trailing bytes. The returned slices alias b.
func UnmarshalBundle(b []byte) (*Assertion, error) {
	if len(b) > MaxBundleLen {
		return nil, fmt.Errorf("%w: bundle is %d bytes, limit %d", ErrMalformed, len(b), MaxBundleLen)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty bundle", ErrMalformed)
	}
	if b[0] != BundleVersion {
		return nil, fmt.Errorf("%w: bundle version %d, want %d", ErrMalformed, b[0], BundleVersion)
	}
	r := bundleReader{b: b[1:]}
	a := &Assertion{
		CredentialID:   r.field(1),
		AuthData:       r.field(2),
		ClientDataJSON: r.field(2),
		Signature:      r.field(1),
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after bundle", ErrMalformed, len(r.b))
	}
	if err := checkBundleSizes(len(a.CredentialID), len(a.AuthData), len(a.ClientDataJSON), len(a.Signature)); err != nil {
		return nil, err
	}
	return a, nil
}
