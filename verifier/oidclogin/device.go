package oidclogin

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
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
	now := h.cfg.Now().UTC()
	deviceCode := randomToken()
	devKey := "device." + record.SecretKey(deviceCode)
	userCode, err := h.claimUserCode(r, devKey, now)
	if err == nil {
		d := &record.DeviceAuth{V: record.Version, UserCode: userCode, Status: record.DevicePending, Created: now,
			Expires: now.Add(DeviceTTL), Interval: h.cfg.DevicePoll, ClientAddr: clientAddr(r)}
		err = store.Create(r.Context(), h.cfg.Store.Logins, devKey, d)
	}
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	shown := userCode[:4] + "-" + userCode[4:]
	writeJSON(w, http.StatusOK, api.DeviceAuthResponse{
		DeviceCode: deviceCode, UserCode: shown,
		VerificationURI:         h.cfg.PublicURL + api.PathDevice,
		VerificationURIComplete: h.cfg.PublicURL + api.PathDevice + "?user_code=" + url.QueryEscape(shown),
		ExpiresIn:               int(DeviceTTL / time.Second), Interval: int(h.cfg.DevicePoll / time.Second),
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
	h.grant(w, r, d.Person, record.FlowDevice)
}

// devicePage asks for the user code and the IdP to log in with. Its form
// carries a token derived from the browser's login cookie, so another site
// cannot submit it for the person (and approve its own device with their
// IdP session).
func (h *Handler) devicePage(w http.ResponseWriter, r *http.Request) {
	cookie := h.browserCookie(w, r)
	render(w, http.StatusOK, pageDevice, map[string]any{"IdPs": idpNames(h.people()),
		"UserCode": r.URL.Query().Get("user_code"), "CSRF": csrfToken(cookie)})
}

func csrfToken(cookie string) string { return record.SecretKey("csrf\x00" + cookie) }

// deviceSubmit takes the user code and sends the person through the IdP's
// login, at the end of which the device is approved (finishDevice).
func (h *Handler) deviceSubmit(w http.ResponseWriter, r *http.Request) {
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
	if errors.Is(err, api.ErrNotFound) || (err == nil && (d.Status != record.DevicePending || !h.cfg.Now().Before(d.Expires))) {
		err = fmt.Errorf("%w: user code unknown, used or expired", ErrCode)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.redirectToIdP(w, r, r.PostFormValue("idp"), &record.LoginState{Flow: record.FlowDevice, Device: u.Device})
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
