package attestation

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Client data types (WebAuthn §5.8.1).
const (
	TypeCreate = "webauthn.create"
	TypeGet    = "webauthn.get"
)

// natsChallengeLabel separates NATS nonce challenges from every other use of
// the same key: a signature over a nonce challenge can never be presented as
// an answer to a challenge the verifier chose, and vice versa.
const natsChallengeLabel = "tpmauthn/nats-connect/v1\x00"

// CollectedClientData is WebAuthn §5.8.1, serialized in the field order of
// §5.8.1.1 so that the bytes are what a browser would produce.
type CollectedClientData struct {
	Type        string `json:"type"`
	Challenge   string `json:"challenge"`
	Origin      string `json:"origin"`
	CrossOrigin bool   `json:"crossOrigin"`
}

// NewClientDataJSON returns clientDataJSON for a raw challenge.
func NewClientDataJSON(typ string, challenge []byte, origin string) ([]byte, error) {
	return json.Marshal(CollectedClientData{Type: typ, Challenge: b64(challenge), Origin: origin})
}

// VerifierOrigin is the origin of every assertion the tpmauthn verifier
// consumes (a NATS connect, a rotation proof) for credentials of RP ID rpID.
// The agent signs for it only on those paths and never at its generic
// assertion endpoint, which uses the credential's own origin: an assertion
// obtained from a workload for any other relying party (over any challenge,
// NATSChallenge(nonce) included) can never be presented to the verifier.
// The verifier refuses a configured origin equal to it.
func VerifierOrigin(rpID string) string { return verifierOriginScheme + rpID }

const verifierOriginScheme = "tpmauthn-verifier://"

// NATSChallenge derives the WebAuthn challenge for a NATS connection from the
// server nonce exactly as the client received it (DESIGN.md flow 3).
func NATSChallenge(nonce []byte) []byte {
	h := sha256.New()
	h.Write([]byte(natsChallengeLabel))
	h.Write(nonce)
	return h.Sum(nil)
}

// SignedData is what an authenticator signs for an assertion or a TPM
// certify's extraData: authenticatorData ‖ SHA-256(clientDataJSON)
// (WebAuthn §6.3.3 step 11, §8.3).
func SignedData(authData, clientDataJSON []byte) []byte {
	cdh := sha256.Sum256(clientDataJSON)
	out := make([]byte, 0, len(authData)+len(cdh))
	return append(append(out, authData...), cdh[:]...)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// DecodeB64URL decodes unpadded base64url, also accepting padding, as WebAuthn
// JSON producers differ.
func DecodeB64URL(s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		if b, err2 := base64.URLEncoding.DecodeString(s); err2 == nil {
			return b, nil
		}
		return nil, fmt.Errorf("%w: base64url: %w", ErrMalformed, err)
	}
	return b, nil
}
