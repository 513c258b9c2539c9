package oidclogin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// The checks on where a request comes from. On a plain-HTTP loopback
// verifier, cookies are no barrier: a page served by another local user on
// another 127.0.0.1 port is same-site (SameSite does not apply) and can set
// the login cookie (cookies are not separated by port; the __Host- prefix
// needs TLS). So a browser form is taken only from the verifier's own
// origin (Fetch Metadata and the Origin header, which pages cannot forge),
// and its token is a MAC under a secret of this process, which no page can
// compute from a cookie value it chose.

// newCSRFKey is the key of the form tokens: random per process (a restart
// voids the forms open in browsers, which are reloaded).
func newCSRFKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // never fails (crypto/rand, Go 1.24)
	return k
}

// csrfToken is the token a form of this browser carries: HMAC-SHA256 of
// its login cookie under the process's key.
func (h *Handler) csrfToken(cookie string) string {
	m := hmac.New(sha256.New, h.csrfKey)
	m.Write([]byte("tpmauthn/csrf/v1\x00" + cookie))
	return hex.EncodeToString(m.Sum(nil))
}

// csrfOK: the form carries the token of this browser's login cookie.
func (h *Handler) csrfOK(r *http.Request) bool {
	c, err := r.Cookie(h.cookieName())
	return err == nil && subtle.ConstantTimeCompare([]byte(h.csrfToken(c.Value)), []byte(r.PostFormValue("csrf"))) == 1
}

// publicOrigin is scheme://host:port of a public URL, as a browser
// serializes it in Origin (no default port).
func publicOrigin(public string) string {
	u, err := url.Parse(public)
	if err != nil || u.Host == "" {
		return ""
	}
	host := strings.ToLower(u.Host)
	if (u.Scheme == "https" && u.Port() == "443") || (u.Scheme == "http" && u.Port() == "80") {
		host = strings.ToLower(u.Hostname())
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + host
}

// sameOrigin is nil for a browser form submitted from the verifier's own
// pages: Origin is the public origin or, without Origin, Sec-Fetch-Site
// is same-origin. A request with neither is refused (every browser that
// runs these pages sends one of them on a POST).
func (h *Handler) sameOrigin(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" {
		if o != h.origin {
			return fmt.Errorf("%w: Origin %q is not %s", ErrCrossOrigin, o, h.origin)
		}
		return nil
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "same-origin" {
		return fmt.Errorf("%w: no Origin, Sec-Fetch-Site %q", ErrCrossOrigin, s)
	}
	return nil
}

// notFromPage is nil unless a browser page of another origin sent the
// request: for the endpoints of programs (a CLI's device code and token
// requests), which send neither Origin nor Fetch Metadata.
func (h *Handler) notFromPage(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" && o != h.origin {
		return fmt.Errorf("%w: Origin %q", ErrCrossOrigin, o)
	}
	switch s := r.Header.Get("Sec-Fetch-Site"); s {
	case "cross-site", "same-site":
		return fmt.Errorf("%w: Sec-Fetch-Site %q", ErrCrossOrigin, s)
	}
	return nil
}

// navigation is nil unless the request is a subresource of a page (an
// <img> or <script> pointing at a login URL, which would create a login
// state per page view): only a navigation starts a login.
func navigation(r *http.Request) error {
	switch d := r.Header.Get("Sec-Fetch-Dest"); d {
	case "", "document":
		return nil
	default:
		return fmt.Errorf("%w: Sec-Fetch-Dest %q", ErrCrossOrigin, d)
	}
}

// stateAllowed takes a token of the global rate of state creation (login
// states and device codes): however many addresses ask, the logins bucket
// fills no faster than this.
func (h *Handler) stateAllowed() error {
	if !h.states.Allow() {
		return fmt.Errorf("%w: logins are being started faster than %v/s", ErrBusy, h.states.Limit())
	}
	return nil
}
