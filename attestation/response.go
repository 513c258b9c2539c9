package attestation

import (
	"fmt"

	"github.com/tpmauthn/tpmauthn/api"
)

// NewRegistrationResponse wraps a registration for JSON.
func NewRegistrationResponse(credID, clientDataJSON, attObj []byte) *api.RegistrationResponse {
	return &api.RegistrationResponse{
		ID: b64(credID), RawID: b64(credID), Type: "public-key",
		Response: api.AttestationResponse{
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
func (a *Assertion) JSON() *api.AssertionResponse {
	return &api.AssertionResponse{
		ID: b64(a.CredentialID), RawID: b64(a.CredentialID), Type: "public-key",
		Response: api.AssertionFields{
			ClientDataJSON:    b64(a.ClientDataJSON),
			AuthenticatorData: b64(a.AuthData),
			Signature:         b64(a.Signature),
			UserHandle:        b64(a.UserHandle),
		},
		AuthenticatorAttachment: "platform",
		ClientExtensionResults:  map[string]any{},
	}
}

// DecodeAssertionResponse turns the JSON form back into an Assertion.
func DecodeAssertionResponse(r *api.AssertionResponse) (*Assertion, error) {
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
