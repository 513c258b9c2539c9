package api

import (
	"log/slog"
	"time"
)

// The verifier's HTTPS endpoints for people (--http-listen). A login ends
// in a LoginResult whichever way it went: a CLI's loopback redirect
// (RFC 8252) redeemed at PathCLIToken, or the verifier's own device
// authorization (RFC 8628).
const (
	// PathLogin + an IdP's name starts a login there (GET). Query: cb (a
	// loopback URL, RFC 8252 §7.3) and cc (a PKCE S256 challenge) for a CLI;
	// neither for a browser. PathLogin without a name lists the IdPs.
	PathLogin = "/login/"
	// PathOIDCCallback is the redirect URI the IdPs send the browser back
	// to: every IdP is configured with PublicURL + this.
	PathOIDCCallback = "/oidc/callback"
	// PathCLIToken redeems a loopback login's one-time code (POST form:
	// grant_type=authorization_code, code, code_verifier).
	PathCLIToken = "/cli/token"
	// PathDevice is the page where a person enters a device's user code.
	PathDevice = "/device"
	// PathDeviceCode is the device authorization endpoint (RFC 8628 §3.1).
	PathDeviceCode = "/device/code"
	// PathDeviceToken is the device access token endpoint (RFC 8628 §3.4).
	PathDeviceToken = "/device/token"
	// PathPersonKey registers a person's software key (POST
	// PersonKeyRequest, the login grant as Bearer token): for a machine
	// without a TPM or agent. The key's assurance is "software".
	PathPersonKey = "/person/key"
)

// PersonKeyRequest is a software key to register: its public key (PKIX
// DER, P-256) and a proof of possession, an ECDSA signature (ASN.1 DER) over
// personkey.ProofDigest(grant).
type PersonKeyRequest struct {
	PublicKey []byte `json:"public_key"`
	Proof     []byte `json:"proof"`
}

// PersonKeyResponse names the registered software key's credential.
type PersonKeyResponse struct {
	CredentialID string    `json:"credential_id"`
	RPID         string    `json:"rp_id"`
	Name         string    `json:"name"` // person:NAME
	Person       Person    `json:"person"`
	Expires      time.Time `json:"expires"`
	// NATSURL is the fleet's NATS as the verifier knows it (its clients'
	// URL), for the key's programs.
	NATSURL string `json:"nats_url,omitempty"`
}

// OAuth 2.0 grant types the verifier's token endpoints accept.
const (
	GrantTypeCode       = "authorization_code"
	GrantTypeDeviceCode = "urn:ietf:params:oauth:grant-type:device_code"
)

// Fields of a CLI's login start (PathLogin's query, with cb and cc) and of
// PathDeviceCode that bind the login's grant to where it will be redeemed:
// host and uid (the host's agent, for that local user: the host is the
// agent's host ID, AgentPathPersonLogin GET), or key (a software key's
// personkey.Thumbprint). Exactly one of the two; the grant is redeemed
// nowhere else.
const (
	FormGrantHost = "host"
	FormGrantUID  = "uid"
	FormGrantKey  = "key"
)

// PersonLoginPlace (AgentPathPersonLogin, GET) is where a login on this
// host binds its grant: the agent's host ID and the caller's uid as the
// agent sees it.
type PersonLoginPlace struct {
	Host string `json:"host"`
	UID  uint32 `json:"uid"`
}

// OAuth error codes (RFC 6749 §5.2, RFC 8628 §3.5) in OAuthError.Code.
const (
	OAuthInvalidRequest  = "invalid_request"
	OAuthInvalidGrant    = "invalid_grant"
	OAuthUnsupported     = "unsupported_grant_type"
	OAuthPending         = "authorization_pending"
	OAuthSlowDown        = "slow_down"
	OAuthExpiredToken    = "expired_token"
	OAuthAccessDenied    = "access_denied"
	OAuthTemporarilyDown = "temporarily_unavailable"
)

// OAuthError is a token endpoint's refusal (HTTP 400, or 503 when the
// verifier's store is down).
type OAuthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// DeviceAuthResponse is RFC 8628 §3.2's answer.
type DeviceAuthResponse struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete,omitempty"`
	ExpiresIn               int    `json:"expires_in"`
	Interval                int    `json:"interval"`
}

// LoginResult is what a finished login gives its client: an RFC 6749 §5.1
// token response whose access token is a login grant (short-lived, one
// use, bound to the person; the agent redeems it to register the person's
// device credential, which expires at LoginExpires), and who logged in.
type LoginResult struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"` // "Bearer"
	ExpiresIn   int    `json:"expires_in"` // seconds the grant stays redeemable
	Person      Person `json:"person"`
	// Roles are what the person's groups grant with a hardware credential
	// (a TPM key), SoftwareRoles with a software key.
	Roles         []string  `json:"roles"`
	SoftwareRoles []string  `json:"software_roles"`
	LoginExpires  time.Time `json:"login_expires"`
}

// Person is a person as the verifier names them. ID is what {{person}}
// expands to; Name and Email are for display only.
type Person struct {
	ID      string `json:"id"`
	IdP     string `json:"idp"`
	Subject string `json:"subject"`
	Name    string `json:"name,omitempty"`
	Email   string `json:"email,omitempty"`
}

// LogValue keeps the grant out of logs (slog.LogValuer): who logged in, not
// the bearer token.
func (r LoginResult) LogValue() slog.Value {
	return slog.GroupValue(slog.String("person", r.Person.ID), slog.String("access_token", "[REDACTED]"),
		slog.Time("login_expires", r.LoginExpires))
}

// LogValue keeps the device code (a bearer secret until redeemed) out of
// logs; the user code is shown to people anyway.
func (d DeviceAuthResponse) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user_code", d.UserCode), slog.String("device_code", "[REDACTED]"))
}
