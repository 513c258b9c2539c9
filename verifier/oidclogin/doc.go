// Package oidclogin is the verifier's OpenID Connect relying party for any
// number of identity providers, and the HTTP endpoints that log a person in:
//
//   - GET /login/{idp} starts an authorization code flow with PKCE (RFC 7636,
//     S256), state and nonce (OIDC Core §3.1.2.1), each one-time and
//     expiring, and the state bound to the browser by a cookie;
//   - GET /oidc/callback ends it: state taken once, cookie checked, code
//     exchanged with the PKCE verifier, ID token verified (signature,
//     issuer, audience, expiry: go-oidc) and its nonce compared;
//   - a CLI's login (RFC 8252 loopback redirect) is confirmed by the person
//     on a page of the verifier, and ends in a one-time code
//     sent to its loopback address, redeemed at POST /cli/token with the
//     CLI's own PKCE verifier;
//   - hosts without a browser use the verifier's own RFC 8628 device
//     authorization (/device/code, /device/token, and the /device page
//     where the person enters the code and is sent through the IdP login).
//
// Every login ends with verifier/people: a person is (IdP, subject claim),
// never an email; the login is audited naming the person; a CLI gets a login
// grant. Trust assumptions: the IdP's discovery document and keys come over
// TLS (the policy refuses http beyond loopback), the browser keeps its
// cookies, and the redirect URI registered at each IdP is this listener's
// PublicURL + /oidc/callback.
package oidclogin
