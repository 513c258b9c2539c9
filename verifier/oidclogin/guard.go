package oidclogin

import (
	"crypto/subtle"
	"fmt"
	"net/http"
)

// The same checks of where a form comes from serve the verifier's other
// pages (passkeys, the console): their forms carry a token keyed by this
// process's secret over their own cookie, and come from the public origin.

// FormToken is the CSRF token of a form of the browser whose cookie value
// (a login or web session cookie) is cookie.
func (h *Handler) FormToken(cookie string) string { return h.csrfToken(cookie) }

// CheckForm is nil for a POST from the verifier's own pages carrying, in
// its csrf field, the FormToken of cookie.
func (h *Handler) CheckForm(r *http.Request, cookie string) error {
	if err := h.sameOrigin(r); err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(h.csrfToken(cookie)), []byte(r.PostFormValue("csrf"))) != 1 {
		return fmt.Errorf("%w: the form was not this page's (reload it)", ErrCrossOrigin)
	}
	return nil
}

// CheckOrigin is nil for a request from the verifier's own pages (Origin,
// or Fetch Metadata).
func (h *Handler) CheckOrigin(r *http.Request) error { return h.sameOrigin(r) }
