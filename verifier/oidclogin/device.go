package oidclogin

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// userCodeAlphabet: RFC 8628 §6.1's example set, consonants only (no
// vowels, so no words; no look-alikes such as 0/O, 1/I). Eight of them
// give 20^8 ≈ 2^34.6 codes.
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

// deviceCode is RFC 8628 §3.1: a device asks for a code pair.
func (h *Handler) deviceCode(w http.ResponseWriter, r *http.Request) {
	if h.people() == nil {
		oauthError(w, http.StatusNotFound, api.OAuthInvalidRequest, "no people section in the verifier's policy")
		return
	}
	if err := h.notFromPage(r); err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	if err := h.stateAllowed(); err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	// Bound when the code is asked for, not when it is redeemed: whoever
	// else learns the device code cannot have the grant bound elsewhere.
	bound, _, err := h.grantBinding(r.Context(), r.PostFormValue)
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	now := h.cfg.Now().UTC()
	deviceCode := randomToken()
	devKey := "device." + record.SecretKey(deviceCode)
	userCode, err := h.claimUserCode(r, devKey, now)
	if err == nil {
		d := &record.DeviceAuth{V: record.Version, UserCode: userCode, Status: record.DevicePending, Created: now,
			Expires: now.Add(DeviceTTL), Interval: h.cfg.DevicePoll, ClientAddr: clientAddr(r), Bound: bound}
		err = store.Create(r.Context(), h.cfg.Store.Logins, devKey, d)
	}
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	// No verification_uri_complete (RFC 8628 §3.3.1, optional): a link with
	// the code filled in is what a phisher sends; the person types the
	// code their own device shows.
	writeJSON(w, http.StatusOK, api.DeviceAuthResponse{
		DeviceCode: deviceCode, UserCode: userCode[:4] + "-" + userCode[4:],
		VerificationURI: h.cfg.PublicURL + api.PathDevice,
		ExpiresIn:       int(DeviceTTL / time.Second), Interval: int(h.cfg.DevicePoll / time.Second),
	})
}

// claimUserCode picks a user code no live device authorization has, and
// points it at devKey.
func (h *Handler) claimUserCode(r *http.Request, devKey string, now time.Time) (string, error) {
	for range 5 {
		code := newUserCode()
		u := &record.DeviceUserCode{V: record.Version, Device: devKey, Expires: now.Add(DeviceTTL)}
		err := store.Create(r.Context(), h.cfg.Store.Logins, "user."+code, u)
		if !errors.Is(err, api.ErrConflict) {
			return code, err
		}
	}
	return "", fmt.Errorf("%w: no free user code", api.ErrUnavailable)
}

func newUserCode() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		// 256 % 20 = 16: a slight bias towards the first 16 letters, which
		// costs under 0.1 bit of the code's entropy.
		b[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(b[:])
}

// normalizeUserCode accepts what a person types: any case, dashes and
// spaces.
func normalizeUserCode(s string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(s) {
		if strings.ContainsRune(userCodeAlphabet, c) {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// deviceToken is RFC 8628 §3.4–3.5: the device polls; once the person has
// logged in, the device code is taken (once) for a login grant.
func (h *Handler) deviceToken(w http.ResponseWriter, r *http.Request) {
	if r.PostFormValue("grant_type") != api.GrantTypeDeviceCode {
		oauthError(w, http.StatusBadRequest, api.OAuthUnsupported, "grant_type must be "+api.GrantTypeDeviceCode)
		return
	}
	key := "device." + record.SecretKey(r.PostFormValue("device_code"))
	now := h.cfg.Now().UTC()
	var answer string // an RFC 8628 §3.5 code while the authorization is not ready
	_, _, err := store.Mutate(r.Context(), h.cfg.Store.Logins, key, func(d *record.DeviceAuth) error {
		if answer = pollAnswer(d, now); answer == "" {
			return errApproved // taken below, not written
		}
		if answer == api.OAuthSlowDown {
			d.Interval += slowDownExtra
		}
		d.LastPoll = now
		return nil
	})
	switch {
	case errors.Is(err, errApproved):
		h.redeemDevice(w, r, key)
	case errors.Is(err, api.ErrNotFound):
		oauthError(w, http.StatusBadRequest, api.OAuthInvalidGrant, "unknown device code")
	case err != nil:
		h.tokenFailed(w, r, err)
	default:
		oauthError(w, http.StatusBadRequest, answer, "")
	}
}

// errApproved ends a poll's read-modify-write of an approved authorization
// without writing it.
var errApproved = errors.New("approved")

// pollAnswer is the poll's refusal, or "" once approved.
func pollAnswer(d *record.DeviceAuth, now time.Time) string {
	switch {
	case !now.Before(d.Expires):
		return api.OAuthExpiredToken
	case !d.LastPoll.IsZero() && now.Sub(d.LastPoll) < d.Interval:
		return api.OAuthSlowDown
	case d.Status != record.DeviceApproved:
		return api.OAuthPending
	}
	return ""
}

// redeemDevice takes an approved device authorization (once) and answers
// with the login grant.
func (h *Handler) redeemDevice(w http.ResponseWriter, r *http.Request, key string) {
	d, err := takeRecord[record.DeviceAuth](r.Context(), h.cfg.Store, key, ErrCode)
	if err == nil && d.Status != record.DeviceApproved {
		err = fmt.Errorf("%w: not approved", ErrCode)
	}
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	h.grant(w, r, d.Person, record.FlowDevice, d.Bound)
}

// devicePage asks for the user code. It is never filled in from the link
// (?user_code=): the person types the code their device shows. Its form
// carries a token of the browser's login cookie, and is taken from this
// verifier's pages only, so another site cannot submit it for the person
// (and approve its own device with their IdP session).
func (h *Handler) devicePage(w http.ResponseWriter, r *http.Request) {
	cookie := h.browserCookie(w, r)
	render(w, http.StatusOK, pageDevice, map[string]any{"CSRF": h.csrfToken(cookie)})
}

// deviceSubmit takes the user code. Without an IdP it shows who asked for
// the code (the device's address, how long ago) and asks for the IdP; with
// one it sends the person through the IdP's login, at the end of which the
// device is approved (finishDevice).
func (h *Handler) deviceSubmit(w http.ResponseWriter, r *http.Request) {
	if err := h.sameOrigin(r); err != nil {
		h.fail(w, r, err)
		return
	}
	if !h.csrfOK(r) {
		h.fail(w, r, fmt.Errorf("%w: the form was not this page's (reload %s)", ErrBadRequest, api.PathDevice))
		return
	}
	code := normalizeUserCode(r.PostFormValue("user_code"))
	u, _, err := store.Get[record.DeviceUserCode](r.Context(), h.cfg.Store.Logins, "user."+code)
	var d *record.DeviceAuth
	if err == nil {
		d, _, err = store.Get[record.DeviceAuth](r.Context(), h.cfg.Store.Logins, u.Device)
	}
	now := h.cfg.Now()
	if errors.Is(err, api.ErrNotFound) || (err == nil && (d.Status != record.DevicePending || !now.Before(d.Expires))) {
		err = fmt.Errorf("%w: user code unknown, used or expired", ErrCode)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if r.PostFormValue("idp") == "" {
		render(w, http.StatusOK, pageDeviceConfirm, map[string]any{"IdPs": idpNames(h.people()), "UserCode": code[:4] + "-" + code[4:],
			"CSRF": r.PostFormValue("csrf"), "Addr": cmp.Or(d.ClientAddr, "an unknown address"), "Age": age(now.Sub(d.Created)), "Where": h.describeNow(r.Context(), d.Bound)})
		return
	}
	h.redirectToIdP(w, r, r.PostFormValue("idp"), &record.LoginState{Flow: record.FlowDevice, Device: u.Device})
}

// age says how long ago something happened, in whole minutes.
func age(d time.Duration) string {
	switch m := int(d / time.Minute); {
	case m < 1:
		return "less than a minute ago"
	case m == 1:
		return "1 minute ago"
	default:
		return fmt.Sprintf("%d minutes ago", m)
	}
}

// finishDevice approves the device authorization the login was for: the
// device's next poll gets the person's login grant.
func (h *Handler) finishDevice(w http.ResponseWriter, r *http.Request, st *record.LoginState, p *record.Person) {
	now := h.cfg.Now()
	_, _, err := store.Mutate(r.Context(), h.cfg.Store.Logins, st.Device, func(d *record.DeviceAuth) error {
		if d.Status != record.DevicePending || !now.Before(d.Expires) {
			return fmt.Errorf("%w: the device code was used or expired meanwhile", ErrCode)
		}
		d.Status, d.Person = record.DeviceApproved, p.ID
		return nil
	})
	if errors.Is(err, api.ErrNotFound) {
		err = fmt.Errorf("%w: the device code expired meanwhile", ErrCode)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	render(w, http.StatusOK, pageDeviceApproved, map[string]any{"Person": p})
}
