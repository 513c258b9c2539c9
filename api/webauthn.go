package api

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
