package attestation

import (
	"fmt"
)

// PublicKeyCredential types in the JSON form of WebAuthn Level 3 §5.1
// (RegistrationResponseJSON, AuthenticationResponseJSON): binary fields are
// unpadded base64url. Any WebAuthn library's server side accepts them.

// RegistrationResponse is a registration's PublicKeyCredential.
type RegistrationResponse struct {
	ID                      string              `json:"id"`
	RawID                   string              `json:"rawId"`
	Type                    string              `json:"type"`
	Response                AttestationResponse `json:"response"`
	AuthenticatorAttachment string              `json:"authenticatorAttachment"`
	ClientExtensionResults  map[string]any      `json:"clientExtensionResults"`
}

// AttestationResponse is AuthenticatorAttestationResponseJSON.
type AttestationResponse struct {
	ClientDataJSON    string   `json:"clientDataJSON"`
	AttestationObject string   `json:"attestationObject"`
	Transports        []string `json:"transports"`
}

// AssertionResponse is an assertion's PublicKeyCredential.
type AssertionResponse struct {
	ID                      string          `json:"id"`
	RawID                   string          `json:"rawId"`
	Type                    string          `json:"type"`
	Response                AssertionFields `json:"response"`
	AuthenticatorAttachment string          `json:"authenticatorAttachment"`
	ClientExtensionResults  map[string]any  `json:"clientExtensionResults"`
}

// AssertionFields is AuthenticatorAssertionResponseJSON.
type AssertionFields struct {
	ClientDataJSON    string `json:"clientDataJSON"`
	AuthenticatorData string `json:"authenticatorData"`
	Signature         string `json:"signature"`
	UserHandle        string `json:"userHandle,omitempty"`
}

// NewRegistrationResponse wraps a registration for JSON.
func NewRegistrationResponse(credID, clientDataJSON, attObj []byte) *RegistrationResponse {
	return &RegistrationResponse{
		ID: b64(credID), RawID: b64(credID), Type: "public-key",
		Response: AttestationResponse{
			ClientDataJSON:    b64(clientDataJSON),
			AttestationObject: b64(attObj),
			Transports:        []string{"internal"},
		},
		AuthenticatorAttachment: "platform",
		ClientExtensionResults:  map[string]any{},
	}
}

// Assertion is a decoded assertion: what the bundle carries and the JSON form
// encodes.
type Assertion struct {
	CredentialID   []byte
	AuthData       []byte
	ClientDataJSON []byte
	Signature      []byte // ASN.1 DER ECDSA
	UserHandle     []byte
}

// JSON returns the assertion as a PublicKeyCredential.
func (a *Assertion) JSON() *AssertionResponse {
	return &AssertionResponse{
		ID: b64(a.CredentialID), RawID: b64(a.CredentialID), Type: "public-key",
		Response: AssertionFields{
			ClientDataJSON:    b64(a.ClientDataJSON),
			AuthenticatorData: b64(a.AuthData),
			Signature:         b64(a.Signature),
			UserHandle:        b64(a.UserHandle),
		},
		AuthenticatorAttachment: "platform",
		ClientExtensionResults:  map[string]any{},
	}
}

// Decode turns the JSON form back into an Assertion.
func (r *AssertionResponse) Decode() (*Assertion, error) {
	if r.Type != "public-key" {
		return nil, fmt.Errorf("%w: credential type %q, want public-key", ErrMalformed, r.Type)
	}
	var a Assertion
	var err error
	fields := []struct {
		dst *[]byte
		src string
		nm  string
	}{
		{&a.CredentialID, r.RawID, "rawId"},
		{&a.AuthData, r.Response.AuthenticatorData, "authenticatorData"},
		{&a.ClientDataJSON, r.Response.ClientDataJSON, "clientDataJSON"},
		{&a.Signature, r.Response.Signature, "signature"},
		{&a.UserHandle, r.Response.UserHandle, "userHandle"},
	}
	for _, f := range fields {
		if *f.dst, err = DecodeB64URL(f.src); err != nil {
			return nil, fmt.Errorf("%s: %w", f.nm, err)
		}
	}
	return &a, nil
}
