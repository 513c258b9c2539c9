package attestation

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/google/uuid"
)

// AAGUID identifies the tpmauthn authenticator model (WebAuthn §6.5.1). The
// verifier's metadata entry for it names the fleet CA as the only root.
var AAGUID = uuid.UUID{0x0e, 0x7e, 0x80, 0x43, 0xb7, 0xd8, 0x46, 0x3e, 0xb9, 0xac, 0xbb, 0x10, 0xe7, 0x2e, 0xfd, 0x16}

// Authenticator data flags (WebAuthn §6.1).
const (
	FlagUserPresent  byte = 0x01 // UP
	FlagUserVerified byte = 0x04 // UV
	FlagBackupElig   byte = 0x08 // BE
	FlagBackupState  byte = 0x10 // BS
	FlagAttested     byte = 0x40 // AT
	FlagExtensions   byte = 0x80 // ED
)

// Size limits for parsing untrusted authenticator data.
const (
	authDataFixedLen    = 37 // rpIdHash(32) ‖ flags(1) ‖ signCount(4)
	MaxCredentialIDLen  = 64 // ours are 16 bytes; WebAuthn allows 1023, we do not
	MaxAuthDataLen      = 1024
	maxCOSEKeyLen       = 256
	attestedHeaderLen   = 16 + 2
	credentialIDByteLen = 16
)

// AuthenticatorData is WebAuthn §6.1 authenticatorData.
type AuthenticatorData struct {
	RPIDHash [32]byte
	Flags    byte
	Counter  uint32
	// Attested credential data (§6.5.2), present when Flags has AT.
	AAGUID       uuid.UUID
	CredentialID []byte
	PublicKey    []byte // COSE_Key, CBOR
}

// NewAuthenticatorData returns authenticator data for rpID with UP and UV set:
// the agent verified the caller (peer credentials) and the caller asked.
func NewAuthenticatorData(rpID string, counter uint32) AuthenticatorData {
	return AuthenticatorData{RPIDHash: sha256.Sum256([]byte(rpID)), Flags: FlagUserPresent | FlagUserVerified, Counter: counter}
}

// Marshal encodes the authenticator data. Attested credential data is written
// when Flags has AT.
func (a AuthenticatorData) Marshal() []byte {
	n := authDataFixedLen
	if a.Flags&FlagAttested != 0 {
		n += attestedHeaderLen + len(a.CredentialID) + len(a.PublicKey)
	}
	b := make([]byte, 0, n)
	b = append(b, a.RPIDHash[:]...)
	b = append(b, a.Flags)
	b = binary.BigEndian.AppendUint32(b, a.Counter)
	if a.Flags&FlagAttested != 0 {
		b = append(b, a.AAGUID[:]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(a.CredentialID)))
		b = append(b, a.CredentialID...)
		b = append(b, a.PublicKey...)
	}
	return b
}

// ParseAuthenticatorData decodes authenticator data strictly: attested
// credential data must hold a P-256 COSE key, extensions are refused (we never
// emit them), and no byte may trail.
func ParseAuthenticatorData(b []byte) (AuthenticatorData, error) {
	var a AuthenticatorData
	if len(b) < authDataFixedLen {
		return a, fmt.Errorf("%w: authenticator data is %d bytes, want at least %d", ErrMalformed, len(b), authDataFixedLen)
	}
	if len(b) > MaxAuthDataLen {
		return a, fmt.Errorf("%w: authenticator data is %d bytes, limit %d", ErrMalformed, len(b), MaxAuthDataLen)
	}
	copy(a.RPIDHash[:], b)
	a.Flags = b[32]
	a.Counter = binary.BigEndian.Uint32(b[33:37])
	rest := b[authDataFixedLen:]
	if a.Flags&FlagExtensions != 0 {
		return a, fmt.Errorf("%w: authenticator data carries extensions, which tpmauthn never sends", ErrMalformed)
	}
	if a.Flags&FlagAttested == 0 {
		if len(rest) != 0 {
			return a, fmt.Errorf("%w: %d trailing bytes after authenticator data", ErrMalformed, len(rest))
		}
		return a, nil
	}
	if len(rest) < attestedHeaderLen {
		return a, fmt.Errorf("%w: attested credential data truncated", ErrMalformed)
	}
	copy(a.AAGUID[:], rest)
	idLen := int(binary.BigEndian.Uint16(rest[16:18]))
	rest = rest[attestedHeaderLen:]
	if idLen == 0 || idLen > MaxCredentialIDLen {
		return a, fmt.Errorf("%w: credential ID length %d outside 1..%d", ErrMalformed, idLen, MaxCredentialIDLen)
	}
	if len(rest) < idLen {
		return a, fmt.Errorf("%w: credential ID truncated", ErrMalformed)
	}
	a.CredentialID = append([]byte(nil), rest[:idLen]...)
	rest = rest[idLen:]
	n, err := coseKeyLen(rest)
	if err != nil {
		return a, err
	}
	if n != len(rest) {
		return a, fmt.Errorf("%w: %d trailing bytes after credential public key", ErrMalformed, len(rest)-n)
	}
	a.PublicKey = append([]byte(nil), rest...)
	if _, err := ParseCOSEKey(a.PublicKey); err != nil {
		return a, err
	}
	return a, nil
}
