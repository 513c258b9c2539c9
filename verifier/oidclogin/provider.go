package oidclogin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
)

// relyingParty is the verifier as one IdP's client: its OAuth 2.0
// configuration and the ID token verifier from the IdP's discovery.
type relyingParty struct {
	key      string // the IdP's configuration and secret, hashed: rebuilt when it changes
	idp      policy.IdP
	oauth    oauth2.Config
	verifier *oidc.IDTokenVerifier
	// revocation is the IdP's RFC 7009 endpoint ("": none advertised).
	revocation string
}

// relyingParty returns idp's relying party, discovering the IdP the first
// time and again whenever its configuration or secret changes. A failed
// discovery is not kept: the next login tries again.
func (h *Handler) relyingParty(ctx context.Context, idp *policy.IdP) (*relyingParty, error) {
	secret, err := clientSecret(idp)
	if err != nil {
		return nil, err
	}
	key := configKey(idp, secret)
	h.mu.Lock()
	rp := h.rps[idp.Name]
	h.mu.Unlock()
	if rp != nil && rp.key == key {
		return rp, nil
	}
	// go-oidc checks that the discovery document names exactly this issuer
	// (OpenID Discovery §4.3): a mismatch fails here.
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, h.cfg.Client), idp.Issuer)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: discovery at %s: %w", ErrIdP, idp.Name, idp.Issuer, err)
	}
	var disc struct {
		Scopes     []string `json:"scopes_supported"`
		Revocation string   `json:"revocation_endpoint"`
	}
	_ = p.Claims(&disc) // both optional (OpenID Discovery §3, RFC 8414 §2)
	scopes := idp.Scopes
	if slices.Contains(disc.Scopes, oidc.ScopeOfflineAccess) && !slices.Contains(scopes, oidc.ScopeOfflineAccess) {
		// A refresh token for the periodic re-check (zitadel issues one
		// only for offline_access; Okta and Entra list it too). An IdP
		// that does not list it gets no such request, and its people are
		// re-checked by SCIM and login_ttl only.
		scopes = append(slices.Clone(scopes), oidc.ScopeOfflineAccess)
	}
	rp = &relyingParty{key: key, idp: *idp, revocation: disc.Revocation,
		oauth: oauth2.Config{ClientID: idp.ClientID, ClientSecret: secret, Endpoint: p.Endpoint(),
			RedirectURL: h.cfg.PublicURL + api.PathOIDCCallback, Scopes: scopes},
		verifier: p.Verifier(&oidc.Config{ClientID: idp.ClientID, Now: h.cfg.Now}),
	}
	h.mu.Lock()
	h.rps[idp.Name] = rp
	h.mu.Unlock()
	return rp, nil
}

// clientSecret reads idp's client secret from its file or environment
// variable (the policy holds neither).
func clientSecret(idp *policy.IdP) (string, error) {
	if idp.ClientSecretEnv != "" {
		s := os.Getenv(idp.ClientSecretEnv)
		if s == "" {
			return "", fmt.Errorf("%w: %s: client secret: environment variable %s is empty", ErrIdP, idp.Name, idp.ClientSecretEnv)
		}
		return s, nil
	}
	b, err := os.ReadFile(idp.ClientSecretFile)
	if err != nil {
		return "", fmt.Errorf("%w: %s: client secret: %w", ErrIdP, idp.Name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func configKey(idp *policy.IdP, secret string) string {
	h := sha256.New()
	for _, s := range append([]string{idp.Issuer, idp.ClientID, secret, idp.SubjectClaim, idp.GroupsClaim}, idp.Scopes...) {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// identify exchanges code (with the PKCE verifier) at the IdP, verifies
// the ID token and its nonce, and returns who it names.
func (h *Handler) identify(ctx context.Context, rp *relyingParty, code, pkceVerifier, nonce string) (people.Identity, error) {
	ctx = oidc.ClientContext(ctx, h.cfg.Client)
	tok, err := rp.oauth.Exchange(ctx, code, oauth2.VerifierOption(pkceVerifier))
	if err != nil {
		return people.Identity{}, fmt.Errorf("%w: %s: code exchange: %w", ErrIdP, rp.idp.Name, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return people.Identity{}, fmt.Errorf("%w: %s: no ID token in the token response (is the openid scope allowed?)", ErrIdP, rp.idp.Name)
	}
	idt, err := rp.verifier.Verify(ctx, raw)
	if err != nil {
		return people.Identity{}, fmt.Errorf("%w: %s: ID token: %w", ErrIdP, rp.idp.Name, err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return people.Identity{}, fmt.Errorf("%w: %s", ErrNonce, rp.idp.Name)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return people.Identity{}, fmt.Errorf("%w: %s: ID token claims: %w", ErrIdP, rp.idp.Name, err)
	}
	id, err := identityFrom(rp.idp, claims)
	id.RefreshToken = tok.RefreshToken
	return id, err
}

// identityFrom reads the person out of an ID token's claims: the subject
// claim the policy names (a non-empty string), groups, and name and email
// for display.
func identityFrom(idp policy.IdP, claims map[string]any) (people.Identity, error) {
	sub, _ := claims[idp.SubjectClaim].(string)
	if sub == "" || len(sub) > 255 {
		return people.Identity{}, fmt.Errorf("%w: %s: claim %q", ErrClaims, idp.Name, idp.SubjectClaim)
	}
	id := people.Identity{IdP: idp.Name, Subject: sub, Issuer: idp.Issuer, SubjectClaim: idp.SubjectClaim,
		Groups: stringList(claims[idp.GroupsClaim])}
	id.Name, _ = claims["name"].(string)
	if id.Name == "" {
		id.Name, _ = claims["preferred_username"].(string)
	}
	id.Email, _ = claims["email"].(string)
	return id, nil
}

// Bounds of a groups claim: the person record holds it (store.MaxRecordSize).
const (
	maxGroups   = 256
	maxGroupLen = 128
)

// stringList reads a groups claim: a JSON array of strings (others, and
// those beyond the bounds, are skipped), or one string.
func stringList(v any) []string {
	switch x := v.(type) {
	case string:
		return stringList([]any{x})
	case []any:
		out := make([]string, 0, min(len(x), maxGroups))
		for _, e := range x {
			if s, ok := e.(string); ok && s != "" && len(s) <= maxGroupLen && len(out) < maxGroups {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
