package passkey

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Session is a browser's web session: who, how they signed in, until when.
type Session struct {
	Person string `json:"p"`
	// Passkey is the passkey the person signed in with ("": at their IdP).
	Passkey string `json:"k,omitempty"`
	Expires int64  `json:"e"` // Unix seconds
	// Nonce makes each session's cookie (and so its CSRF token) unique.
	Nonce string `json:"n"`
}

// SessionCookie is the web session cookie's name (with TLS: __Host-, which
// other hosts of the domain and plain-HTTP pages cannot set).
func (h *Handler) SessionCookie() string {
	if h.cfg.Secure {
		return "__Host-tpmauthn_web"
	}
	return "tpmauthn_web"
}

// startSession sets the web session cookie for p until expires.
func (h *Handler) startSession(w http.ResponseWriter, p *record.Person, passkey string, expires time.Time) {
	s := Session{Person: p.ID, Passkey: passkey, Expires: expires.Unix(), Nonce: randomToken()}
	body, _ := json.Marshal(s) // a struct of strings and an int: never fails
	v := base64.RawURLEncoding.EncodeToString(body) + "." + h.mac(body)
	http.SetCookie(w, &http.Cookie{Name: h.SessionCookie(), Value: v, Path: "/", HttpOnly: true, Secure: h.cfg.Secure,
		SameSite: http.SameSiteLaxMode, Expires: expires})
}

func (h *Handler) mac(body []byte) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte("tpmauthn/web-session/v1\x00"))
	m.Write(body)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// StartIdPSession is the end of a browser's login at an IdP
// (oidclogin.Config.OnBrowserLogin): a web session for the login's
// lifetime, and on to the passkeys page.
func (h *Handler) StartIdPSession(w http.ResponseWriter, r *http.Request, p *record.Person) {
	h.startSession(w, p, "", h.cfg.Now().Add(h.loginTTL()))
	http.Redirect(w, r, PathPasskeys, http.StatusSeeOther)
}

func (h *Handler) loginTTL() time.Duration {
	if pp := h.cfg.Policy().People; pp != nil && pp.LoginTTL > 0 {
		return pp.LoginTTL
	}
	return time.Hour
}

// Current is the request's web session and its person, re-checked now:
// the MAC, the expiry, the person active with their IdP still the
// policy's, and a passkey sign-in's passkey still active. Anything else is
// ErrNoSession (or the store's failure).
func (h *Handler) Current(r *http.Request) (*Session, *record.Person, error) {
	c, err := r.Cookie(h.SessionCookie())
	if err != nil {
		return nil, nil, ErrNoSession
	}
	b64, mac, ok := strings.Cut(c.Value, ".")
	body, err := base64.RawURLEncoding.DecodeString(b64)
	if !ok || err != nil || !hmac.Equal([]byte(mac), []byte(h.mac(body))) {
		return nil, nil, fmt.Errorf("%w: the session cookie is not this verifier's", ErrNoSession)
	}
	var s Session
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoSession, err)
	}
	if !h.cfg.Now().Before(time.Unix(s.Expires, 0)) {
		return nil, nil, fmt.Errorf("%w: the session ended", ErrNoSession)
	}
	p, err := h.activePerson(r.Context(), s.Person)
	if err != nil {
		return nil, nil, err
	}
	if s.Passkey != "" {
		if _, err := h.personsPasskey(r.Context(), p, s.Passkey); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrNoSession, err)
		}
	}
	return &s, p, nil
}

// activePerson is the person id, active and of an IdP in the policy.
func (h *Handler) activePerson(ctx context.Context, id string) (*record.Person, error) {
	p, err := h.cfg.People.Person(ctx, id)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("%w: person %s is unknown", ErrNoSession, id)
	}
	if err != nil {
		return nil, err
	}
	if !p.Disabled.IsZero() {
		return nil, fmt.Errorf("%w: %w: %s", ErrNoSession, people.ErrDisabled, p.ID)
	}
	if err := people.CheckIdP(h.cfg.Policy().People, p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSession, err)
	}
	return p, nil
}

// personsPasskey is p's passkey id, active and unexpired.
func (h *Handler) personsPasskey(ctx context.Context, p *record.Person, id string) (*record.Credential, error) {
	c, _, err := store.Get[record.Credential](ctx, h.cfg.Store.Credentials, id)
	switch {
	case errors.Is(err, api.ErrNotFound):
		return nil, fmt.Errorf("%w: passkey %s is unknown", ErrPasskey, id)
	case err != nil:
		return nil, err
	case c.Kind != record.KindPasskey || c.Person != p.ID || !c.Browser():
		return nil, fmt.Errorf("%w: %s is not a passkey of %s", ErrPasskey, id, p.ID)
	case c.Status != api.CredentialActive || c.Expired(h.cfg.Now()):
		return nil, fmt.Errorf("%w: passkey %s is %s", ErrPasskey, id, c.Status)
	}
	return c, nil
}

// signOut ends the browser's web session: the cookie, and the session keys
// certified in it (which script on the origin could otherwise go on using
// without a cookie until they expire). A copy of the cookie stays valid
// until its end, which the person's disabling cuts short.
func (h *Handler) signOut(w http.ResponseWriter, r *http.Request) {
	if err := h.cfg.Guard.CheckOrigin(r); err != nil {
		h.fail(w, r, err)
		return
	}
	if s, p, err := h.Current(r); err == nil {
		h.revokeSessionKeys(r.Context(), p, func(c *record.Credential) bool { return c.WebSession == record.SecretKey(s.Nonce) }, "signed out")
	}
	http.SetCookie(w, &http.Cookie{Name: h.SessionCookie(), Value: "", Path: "/", HttpOnly: true, Secure: h.cfg.Secure,
		SameSite: http.SameSiteLaxMode, MaxAge: -1})
	http.Redirect(w, r, PathSignIn, http.StatusSeeOther)
}

// FormToken is the CSRF token of the forms of the request's session.
func (h *Handler) FormToken(r *http.Request) string {
	c, err := r.Cookie(h.SessionCookie())
	if err != nil {
		return ""
	}
	return h.cfg.Guard.FormToken(c.Value)
}

// CheckForm is nil for a form of this browser's session from the
// verifier's own pages.
func (h *Handler) CheckForm(r *http.Request) error {
	c, err := r.Cookie(h.SessionCookie())
	if err != nil {
		return ErrNoSession
	}
	return h.cfg.Guard.CheckForm(r, c.Value)
}

// revokeSessionKeys revokes p's active session keys that match.
func (h *Handler) revokeSessionKeys(ctx context.Context, p *record.Person, match func(*record.Credential) bool, reason string) {
	for _, id := range p.Credentials {
		c, _, err := store.Get[record.Credential](ctx, h.cfg.Store.Credentials, id)
		if err != nil || c.Kind != record.KindSessionKey || c.Status != api.CredentialActive || !match(c) {
			continue
		}
		if _, err := h.cfg.Fleet.SetCredentialStatus(ctx, id, api.CredentialRevoked, reason, nil); err != nil && !errors.Is(err, record.ErrTransition) {
			h.cfg.Logger.Warn("session key not revoked (it expires with its web session)", keyCredential, id, keyError, err)
		}
	}
}
