package attestation

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
)

// AssertionCheck is what a relying party expects of an assertion.
type AssertionCheck struct {
	RPIDHash  [32]byte // SHA-256 of the RP ID
	Origin    string
	Challenge []byte // the raw challenge (for NATS: NATSChallenge(nonce))
	// RequireUV requires the user-verified flag: the agent sets it once it
	// has named the caller by its peer credentials.
	RequireUV bool
}

// VerifyAssertion checks an assertion as WebAuthn §7.2 steps 11-21 do, with
// the parsing done once and no allocation beyond the JSON decode: client data
// type, challenge, origin and crossOrigin; rpIdHash; UP (and UV); the ECDSA
// signature over authenticatorData ‖ SHA-256(clientDataJSON). It returns the
// signature counter, which the caller must compare with the stored one.
func VerifyAssertion(a *Assertion, pub *ecdsa.PublicKey, want AssertionCheck) (uint32, error) {
	ad, err := ParseAuthenticatorData(a.AuthData)
	if err != nil {
		return 0, err
	}
	if ad.Flags&FlagAttested != 0 {
		return 0, fmt.Errorf("%w: attested credential data in an assertion", ErrAssertion)
	}
	var cd CollectedClientData
	if err := json.Unmarshal(a.ClientDataJSON, &cd); err != nil {
		return 0, fmt.Errorf("%w: clientDataJSON: %w", ErrMalformed, err)
	}
	switch {
	case cd.Type != TypeGet:
		return 0, fmt.Errorf("%w: client data type %q", ErrAssertion, cd.Type)
	case subtle.ConstantTimeCompare([]byte(cd.Challenge), []byte(b64(want.Challenge))) != 1:
		return 0, fmt.Errorf("%w: challenge does not match", ErrAssertion)
	case cd.Origin != want.Origin:
		return 0, fmt.Errorf("%w: origin %q", ErrAssertion, cd.Origin)
	case cd.CrossOrigin:
		return 0, fmt.Errorf("%w: cross-origin", ErrAssertion)
	case ad.RPIDHash != want.RPIDHash:
		return 0, fmt.Errorf("%w: rpIdHash is for another RP ID", ErrAssertion)
	case ad.Flags&FlagUserPresent == 0:
		return 0, fmt.Errorf("%w: user-present flag not set", ErrAssertion)
	case want.RequireUV && ad.Flags&FlagUserVerified == 0:
		return 0, fmt.Errorf("%w: user-verified flag not set", ErrAssertion)
	}
	cdh := sha256.Sum256(a.ClientDataJSON)
	h := sha256.New()
	h.Write(a.AuthData)
	h.Write(cdh[:])
	if !ecdsa.VerifyASN1(pub, h.Sum(nil), a.Signature) {
		return 0, fmt.Errorf("%w: signature does not verify", ErrAssertion)
	}
	return ad.Counter, nil
}
