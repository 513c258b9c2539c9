package oidclogin

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// chooser lists the IdPs, each linking to its login with a CLI's loopback
// parameters (cb and cc, and the grant's binding) passed on. Each link is built here, with its
// query encoded once: html/template would escape a query placed inside an
// attribute again ("?cb%3dhttp%253A…").
func (h *Handler) chooser(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var pass url.Values
	if q.Get("cb") != "" || q.Get("cc") != "" {
		if err := checkLoopback(q.Get("cb"), q.Get("cc")); err != nil {
			h.fail(w, r, err)
			return
		}
		bound, _, err := h.grantBinding(r.Context(), q.Get)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		pass = url.Values{"cb": {q.Get("cb")}, "cc": {q.Get("cc")}}
		for k, v := range bindFields(bound) {
			pass.Set(k, v)
		}
	}
	type link struct{ Name, Href string }
	var links []link
	for _, name := range idpNames(h.people()) {
		u := url.URL{Path: api.PathLogin + name, RawQuery: pass.Encode()}
		links = append(links, link{name, u.String()})
	}
	render(w, http.StatusOK, pageChooser, map[string]any{"Links": links})
}

// start begins a browser's login at the IdP the path names, or, for a
// CLI's (cb and cc in the query), asks the person to confirm first.
func (h *Handler) start(w http.ResponseWriter, r *http.Request) {
	if err := navigation(r); err != nil {
		h.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	if q.Get("cb") == "" && q.Get("cc") == "" {
		h.redirectToIdP(w, r, r.PathValue("idp"), &record.LoginState{Flow: record.FlowBrowser})
		return
	}
	if err := checkLoopback(q.Get("cb"), q.Get("cc")); err != nil {
		h.fail(w, r, err)
		return
	}
	if h.people().IdP(r.PathValue("idp")) == nil {
		h.fail(w, r, fmt.Errorf("%w: %q", ErrUnknownIdP, r.PathValue("idp")))
		return
	}
	bound, where, err := h.grantBinding(r.Context(), q.Get)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	// A link to this URL with another local user's loopback port would
	// otherwise hand them the person's login without a click, whenever
	// the IdP signs the person in silently: the person confirms that they
	// started the login, on a form another site cannot submit.
	cookie := h.browserCookie(w, r)
	cb, _ := url.Parse(q.Get("cb"))
	render(w, http.StatusOK, pageConfirm, map[string]any{"IdP": r.PathValue("idp"), "CB": q.Get("cb"), "CC": q.Get("cc"),
		"Port": cb.Port(), "CSRF": h.csrfToken(cookie), "Where": where, "Bind": bindFields(bound)})
}

// confirm is the person's answer to start's question: the CLI's login
// goes on to the IdP.
func (h *Handler) confirm(w http.ResponseWriter, r *http.Request) {
	if err := h.sameOrigin(r); err != nil {
		h.fail(w, r, err)
		return
	}
	if !h.csrfOK(r) {
		h.fail(w, r, fmt.Errorf("%w: the form was not this page's (run the login again)", ErrBadRequest))
		return
	}
	cb, cc := r.PostFormValue("cb"), r.PostFormValue("cc")
	if err := checkLoopback(cb, cc); err != nil {
		h.fail(w, r, err)
		return
	}
	bound, _, err := h.grantBinding(r.Context(), r.PostFormValue)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.claimChallenge(r, cc); err != nil {
		h.fail(w, r, err)
		return
	}
	h.redirectToIdP(w, r, r.PathValue("idp"), &record.LoginState{Flow: record.FlowLoopback, Callback: cb, Challenge: cc, Bound: bound})
}

// bindFields are a binding's form fields, for the confirm page to post.
func bindFields(b *record.GrantBinding) map[string]string {
	if b.Key != "" {
		return map[string]string{api.FormGrantKey: b.Key}
	}
	return map[string]string{api.FormGrantHost: b.Host, api.FormGrantUID: strconv.FormatUint(uint64(b.UID), 10)}
}

// claimChallenge takes a CLI's PKCE challenge for one login. The challenge
// is public (it is in the login URL, on the browser's command line, which
// other local users can read): another login with it would end in a code
// the CLI redeems, logging the CLI in as whoever ran that login.
func (h *Handler) claimChallenge(r *http.Request, cc string) error {
	u := &record.UsedChallenge{V: record.Version, Expires: h.cfg.Now().UTC().Add(StateTTL + CodeTTL)}
	err := store.Create(r.Context(), h.cfg.Store.Logins, "challenge."+record.SecretKey(cc), u)
	if errors.Is(err, api.ErrConflict) {
		return fmt.Errorf("%w: this program's login was already started once (run tpmauthnctl login again)", ErrBadRequest)
	}
	if err != nil {
		return fmt.Errorf("store login challenge: %w", err)
	}
	return nil
}

// redirectToIdP stores the login state st (completed here: IdP, nonce,
// PKCE verifier, browser binding, lifetime) and sends the browser to the
// IdP's authorization endpoint.
func (h *Handler) redirectToIdP(w http.ResponseWriter, r *http.Request, name string, st *record.LoginState) {
	idp := h.people().IdP(name)
	if idp == nil {
		h.fail(w, r, fmt.Errorf("%w: %q", ErrUnknownIdP, name))
		return
	}
	rp, err := h.relyingParty(r.Context(), idp)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.stateAllowed(); err != nil {
		h.fail(w, r, err)
		return
	}
	state, nonce := randomToken(), randomToken()
	now := h.cfg.Now().UTC()
	st.V, st.IdP, st.Nonce, st.PKCEVerifier = record.Version, idp.Name, nonce, oauth2.GenerateVerifier()
	st.Binding, st.Created, st.Expires = record.SecretKey(h.browserCookie(w, r)), now, now.Add(StateTTL)
	if err := store.Create(r.Context(), h.cfg.Store.Logins, "state."+record.SecretKey(state), st); err != nil {
		h.fail(w, r, fmt.Errorf("store login state: %w", err))
		return
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(nonce), oauth2.S256ChallengeOption(st.PKCEVerifier)}
	if st.Flow == record.FlowDevice {
		// Someone else's device may be waiting on this login (a code they
		// sent the person): no silent single sign-on, the person logs in.
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "login"))
	}
	http.Redirect(w, r, rp.oauth.AuthCodeURL(state, opts...), http.StatusFound)
}

// callback is where the IdP sends the browser back: it takes the state
// (once), checks the browser, identifies the person, and ends the flow.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	st, err := h.takeState(r, q.Get("state"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ctx, addr := r.Context(), clientAddr(r)
	if e := q.Get("error"); e != "" {
		err := fmt.Errorf("%w: %s answered %q", ErrIdP, st.IdP, e)
		h.cfg.People.LoginFailed(ctx, st.IdP, st.Flow, addr, err)
		h.fail(w, r, err)
		return
	}
	p, err := h.identifyState(ctx, st, q.Get("code"), addr)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	switch st.Flow {
	case record.FlowLoopback:
		h.finishLoopback(w, r, st, p)
	case record.FlowDevice:
		h.finishDevice(w, r, st, p)
	default:
		if h.cfg.OnBrowserLogin != nil {
			h.cfg.OnBrowserLogin(w, r, p)
			return
		}
		render(w, http.StatusOK, pageLoggedIn, map[string]any{"Person": p})
	}
}

// identifyState has the IdP of st identify the person behind code and
// records the login (people.Service.Login audits it).
func (h *Handler) identifyState(ctx context.Context, st *record.LoginState, code, addr string) (*record.Person, error) {
	idp := h.people().IdP(st.IdP)
	if idp == nil {
		return nil, fmt.Errorf("%w: %q (removed from the policy during the login)", ErrUnknownIdP, st.IdP)
	}
	rp, err := h.relyingParty(ctx, idp)
	if err != nil {
		return nil, err
	}
	if code == "" {
		return nil, fmt.Errorf("%w: no code", ErrBadRequest)
	}
	id, err := h.identify(ctx, rp, code, st.PKCEVerifier, st.Nonce)
	if err != nil {
		h.cfg.People.LoginFailed(ctx, st.IdP, st.Flow, addr, err)
		return nil, err
	}
	return h.cfg.People.Login(ctx, id, st.Flow, addr)
}

// takeState consumes the login state named by state, once: it must exist,
// be unexpired, and have been started by this browser (its cookie).
func (h *Handler) takeState(r *http.Request, state string) (*record.LoginState, error) {
	if state == "" {
		return nil, fmt.Errorf("%w: no state", ErrState)
	}
	key := "state." + record.SecretKey(state)
	st, err := takeRecord[record.LoginState](r.Context(), h.cfg.Store, key, ErrState)
	if err != nil {
		return nil, err
	}
	if !h.cfg.Now().Before(st.Expires) {
		return nil, fmt.Errorf("%w: expired at %s", ErrState, st.Expires.Format(time.RFC3339))
	}
	c, err := r.Cookie(h.cookieName())
	if err != nil || subtle.ConstantTimeCompare([]byte(record.SecretKey(c.Value)), []byte(st.Binding)) != 1 {
		return nil, fmt.Errorf("%w: not the browser that started the login", ErrState)
	}
	return st, nil
}

// takeRecord reads and deletes a one-time record (compare-and-set on its
// revision, so two requests cannot both take it). A missing or already
// taken record is the error missing.
func takeRecord[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, st *store.Store, key string, missing error) (P, error) {
	v, rev, err := store.Get[T, P](ctx, st.Logins, key)
	if errors.Is(err, api.ErrNotFound) {
		return nil, missing
	}
	if err != nil {
		return nil, err
	}
	if err := store.Take(ctx, st.Logins, key, rev); err != nil {
		if errors.Is(err, api.ErrConflict) {
			return nil, missing
		}
		return nil, err
	}
	return v, nil
}

// cookieName: with TLS, the __Host- prefix keeps other hosts of the domain
// (and plain-HTTP pages) from setting it (RFC 6265bis §4.1.3.2).
func (h *Handler) cookieName() string {
	if h.cfg.Secure {
		return "__Host-tpmauthn_login"
	}
	return "tpmauthn_login"
}

// browserCookie returns this browser's login cookie, setting a new one if
// it has none: a login's state is bound to it, so a callback carried to
// another browser (login CSRF, a leaked callback URL) fails. An existing
// cookie is kept, so that logins in two tabs both work.
func (h *Handler) browserCookie(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(h.cookieName()); err == nil && tokenShape.MatchString(c.Value) {
		return c.Value
	}
	v := randomToken()
	http.SetCookie(w, &http.Cookie{Name: h.cookieName(), Value: v, Path: "/", HttpOnly: true, Secure: h.cfg.Secure,
		SameSite: http.SameSiteLaxMode, MaxAge: int((24 * time.Hour).Seconds())})
	return v
}

// tokenShape is what randomToken makes (43 base64url characters).
var tokenShape = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// randomToken is 32 random bytes, base64url: states, nonces, codes.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// checkLoopback accepts a CLI's redirect: http on a loopback IP literal
// with a port (RFC 8252 §7.3, §8.3: not "localhost", which a resolver may
// send elsewhere), and an S256 challenge (RFC 7636 §4.2: 43 characters).
func checkLoopback(cb, cc string) error {
	u, err := url.Parse(cb)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.Port() == "" {
		return fmt.Errorf("%w: cb %q: want http://127.0.0.1:PORT/PATH (RFC 8252 loopback)", ErrBadRequest, cb)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: cb %q: a loopback IP address only", ErrBadRequest, cb)
	}
	if !tokenShape.MatchString(cc) {
		return fmt.Errorf("%w: cc: an S256 PKCE challenge (43 base64url characters)", ErrBadRequest)
	}
	return nil
}

// clientAddr is the request's peer address (no proxy headers are trusted).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// status maps an error to an HTTP status and what the person is told: the
// sentinel's text, never the detail (which goes to the log and the audit).
func status(err error) (int, string) {
	for _, m := range []struct {
		err  error
		code int
	}{
		{ErrUnknownIdP, http.StatusNotFound}, {ErrState, http.StatusBadRequest}, {ErrUnbound, http.StatusBadRequest},
		{ErrNotInFleet, http.StatusBadRequest}, {ErrBadRequest, http.StatusBadRequest},
		{ErrNonce, http.StatusBadRequest}, {ErrClaims, http.StatusBadRequest}, {ErrCode, http.StatusBadRequest},
		{ErrIdP, http.StatusBadGateway}, {people.ErrDisabled, http.StatusForbidden},
		{people.ErrIdentity, http.StatusForbidden}, {ErrCrossOrigin, http.StatusForbidden},
		{api.ErrUnavailable, http.StatusServiceUnavailable}, {people.ErrAudit, http.StatusServiceUnavailable},
		{ErrBusy, http.StatusServiceUnavailable}, {people.ErrNoPolicy, http.StatusNotFound},
	} {
		if errors.Is(err, m.err) {
			return m.code, m.err.Error()
		}
	}
	return http.StatusInternalServerError, "internal error"
}

// fail renders err as an error page and logs it.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := status(err)
	h.cfg.Logger.Warn("login refused", keyError, err, "path", r.URL.Path, "client", clientAddr(r))
	render(w, code, pageError, map[string]any{"Message": msg})
}

// idpNames lists the policy's IdPs for the pages.
func idpNames(pp *policy.People) []string {
	if pp == nil {
		return nil
	}
	out := make([]string, len(pp.IdPs))
	for i, idp := range pp.IdPs {
		out[i] = idp.Name
	}
	return out
}
