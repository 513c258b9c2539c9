package oidclogin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The periodic re-check (DESIGN "People": SCIM plus a re-check): every
// people.recheck_interval, each logged-in person's refresh token is spent
// at their IdP. A new ID token's groups replace the person's (sessions
// whose roles shrank are kicked); invalid_grant offboards them with reason
// "refresh failed". Anything else — the IdP unreachable, a 5xx, a timeout,
// our own client refused (invalid_client) — is logged and tried again at
// the next interval: an IdP outage must not lock everyone out. Those
// people stay as they are until the IdP answers, SCIM tells, or their
// credential expires with the login (login_ttl).

type offboarder interface {
	Offboard(ctx context.Context, id, reason, actor string) (*offboard.Result, error)
	Regroup(ctx context.Context, id string, change func([]string) []string, actor string) (int, error)
}

// Recheck runs one pass of the periodic re-check over every person whose
// check is due. Each person is claimed first (people.ClaimCheck), so of
// several verifier instances one spends the token.
func (h *Handler) Recheck(ctx context.Context) {
	pp := h.people()
	if pp == nil || h.cfg.Offboard == nil {
		return
	}
	// One pass at a time (the ticker's, an operator's): a pass writing a
	// held rotation while another spends it would drop the newer token.
	h.recheckMu.Lock()
	defer h.recheckMu.Unlock()
	for _, err := range h.rotated.store(ctx, h.cfg.People) {
		h.cfg.Logger.Warn("re-check: the store still refuses a refresh token the IdP rotated; held in memory, written again at the next pass", keyError, err)
	}
	all, err := h.cfg.People.List(ctx)
	if err != nil {
		h.cfg.Logger.Warn("re-check: cannot list people", keyError, err)
		return
	}
	for _, p := range all {
		idp := pp.IdP(p.IdP)
		if idp == nil || people.CheckIdP(pp, p) != nil || len(p.RefreshToken) == 0 || !p.Disabled.IsZero() {
			continue
		}
		p, due, err := h.cfg.People.ClaimCheck(ctx, p.ID, pp.RecheckInterval)
		if err != nil || !due {
			continue
		}
		if err := h.recheck(ctx, idp, p); err != nil {
			h.cfg.Logger.Warn("re-check failed; tried again at the next interval", keyPerson, p.ID, keyIdP, idp.Name, keyError, err)
		}
	}
}

// recheck refreshes p's token at idp and acts on the answer.
func (h *Handler) recheck(ctx context.Context, idp *policy.IdP, p *record.Person) error {
	who := offboard.SourceRecheck + ":" + idp.Name
	stored, err := h.cfg.People.RefreshToken(p)
	if err != nil {
		return err // our key, not the IdP's answer: never an offboarding
	}
	token := h.rotated.token(p.ID, stored)
	id, next, err := h.refresh(ctx, idp, token)
	if errors.Is(err, ErrRefreshRefused) {
		_, oerr := h.cfg.Offboard.Offboard(ctx, p.ID, "refresh failed: "+err.Error(), who)
		return oerr
	}
	if err != nil {
		return err
	}
	var kept error
	if next != "" && next != token {
		// A token changed meanwhile (a newer login's) stays: ours is
		// dropped, and revoked.
		if err := h.rotated.keep(ctx, h.cfg.People, p.ID, rotation{idp.Name, stored, next}); !settled(err) {
			kept = fmt.Errorf("the IdP rotated the refresh token and the store did not take the new one (held in memory, written again at the next pass): %w", err)
		}
	}
	// The groups are acted on even if the token was not stored: the check
	// is claimed for this interval, and a group the IdP took away must not
	// wait for the next.
	if id == nil {
		return kept // no ID token on refresh: groups stay as the login said
	}
	if id.Subject != p.Subject {
		return errors.Join(kept, fmt.Errorf("%w: %s: the refreshed ID token names subject %q, not the person's", ErrClaims, idp.Name, id.Subject))
	}
	_, err = h.cfg.Offboard.Regroup(ctx, p.ID, func([]string) []string { return id.Groups }, who)
	return errors.Join(kept, err)
}

// refresh spends token at idp: the identity of the new ID token (nil
// without one) and the new refresh token. invalid_grant is
// ErrRefreshRefused; every other failure is transient.
func (h *Handler) refresh(ctx context.Context, idp *policy.IdP, token string) (*people.Identity, string, error) {
	rp, err := h.relyingParty(ctx, idp)
	if err != nil {
		return nil, "", err
	}
	ctx = oidc.ClientContext(ctx, h.cfg.Client)
	tok, err := rp.oauth.TokenSource(ctx, &oauth2.Token{RefreshToken: token, Expiry: time.Unix(1, 0)}).Token()
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
		return nil, "", fmt.Errorf("%w: %s: invalid_grant", ErrRefreshRefused, idp.Name)
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: refresh: %w", ErrIdP, idp.Name, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, tok.RefreshToken, nil
	}
	idt, err := rp.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: refreshed ID token: %w", ErrIdP, idp.Name, err)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, "", fmt.Errorf("%w: %s: refreshed ID token claims: %w", ErrIdP, idp.Name, err)
	}
	id, err := identityFrom(rp.idp, claims)
	if err != nil {
		return nil, "", err
	}
	return &id, tok.RefreshToken, nil
}

// RevokeRefresh revokes a refresh token at IdP idp (RFC 7009 §2.1, with
// the client's credentials as at the token endpoint).
func (h *Handler) RevokeRefresh(ctx context.Context, name, token string) error {
	idp := h.people().IdP(name)
	if idp == nil {
		return fmt.Errorf("%w: %q", ErrUnknownIdP, name)
	}
	rp, err := h.relyingParty(ctx, idp)
	if err != nil {
		return err
	}
	if rp.revocation == "" {
		return fmt.Errorf("%w: %s", ErrNoRevocation, name)
	}
	form := url.Values{"token": {token}, "token_type_hint": {"refresh_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rp.revocation, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// RFC 6749 §2.3.1: client_secret_basic, each part form-encoded.
	req.SetBasicAuth(url.QueryEscape(rp.oauth.ClientID), url.QueryEscape(rp.oauth.ClientSecret))
	resp, err := h.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: revoke: %w", ErrIdP, name, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s: revoke: %s", ErrIdP, name, resp.Status)
	}
	return nil
}

// RunRecheck runs Recheck on a ticker until ctx is done: every tenth of
// the policy's recheck_interval (between 5 s and a minute), each person
// when their own interval has passed.
func (h *Handler) RunRecheck(ctx context.Context) {
	for {
		tick := time.Minute
		if pp := h.people(); pp != nil {
			tick = min(max(pp.RecheckInterval/10, 5*time.Second), time.Minute)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick):
		}
		h.Recheck(ctx)
	}
}

const keyPerson = "person"
