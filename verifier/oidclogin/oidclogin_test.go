package oidclogin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const password = "correct horse"

// The two IdPs' users. Everyone has the same email: an email is never an
// identity. At "entra" the person is named by the oid claim, as Entra ID's
// sub is per application.
var (
	alice = oidctest.User{ID: "u-alice", Username: "alice", Password: password, Name: "Alice", Email: "same@example.com", Groups: []string{"developers", "ops"}}
	bob   = oidctest.User{ID: "u-bob", Username: "bob", Password: password, Name: "Bob", Email: "same@example.com", Groups: []string{"sales"}}
	carol = oidctest.User{ID: "u-carol", Username: "carol", Password: password, Name: "Carol", Email: "same@example.com", Groups: []string{"developers"},
		Claims: map[string]any{"oid": "oid-carol"}}
)

type fixture struct {
	env        *testenv.Env
	okta, entr *oidctest.OP
	srv        *httptest.Server
	mux        *http.ServeMux
	svc        *people.Service
	handler    *Handler
	now        atomic.Pointer[time.Time]
	policyYAML string
	pol        atomic.Pointer[policy.Policy]
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{env: testenv.New(t), okta: oidctest.Start(t, alice, bob), entr: oidctest.Start(t, carol)}
	start := time.Now()
	f.now.Store(&start)
	now := func() time.Time { return *f.now.Load() }
	dir := t.TempDir()
	for _, n := range []string{"okta", "entra"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("secret-"+n+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.policyYAML = fmt.Sprintf(`
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
  admin: {publish: {allow: ["admin.>"]}}
  entra-user: {subscribe: {allow: ["news"]}}
people:
  idps:
    - {name: okta, issuer: %q, client_id: verifier-okta, client_secret_file: %q}
    - {name: entra, issuer: %q, client_id: verifier-entra, client_secret_file: %q, subject_claim: oid}
  bindings:
    - {idp: okta, groups: [developers], roles: [dev]}
    - {idp: entra, groups: [developers], roles: [dev]}
    - {idp: okta, groups: [ops], roles: [admin], require: {assurance: hardware}}
    - {idp: entra, roles: [entra-user]}
`, f.okta.Issuer, filepath.Join(dir, "okta"), f.entr.Issuer, filepath.Join(dir, "entra"))
	f.setPolicy(t, f.policyYAML)
	polf := func() *policy.Policy { return f.pol.Load() }
	f.svc = people.New(people.Config{Store: f.env.Store, Policy: polf, Trail: f.env.Trail, Now: now})
	mux := http.NewServeMux()
	f.mux = mux
	f.srv = httptest.NewUnstartedServer(mux)
	h := New(Config{People: f.svc, Store: f.env.Store, Policy: polf, PublicURL: "http://" + f.srv.Listener.Addr().String(),
		DevicePoll: time.Second, Now: now})
	f.handler = h
	h.Register(mux)
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	f.okta.AddClient("verifier-okta", "secret-okta", f.srv.URL+api.PathOIDCCallback)
	f.entr.AddClient("verifier-entra", "secret-entra", f.srv.URL+api.PathOIDCCallback)
	return f
}

func (f *fixture) setPolicy(t testing.TB, src string) {
	t.Helper()
	p, err := policy.Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	f.pol.Store(p)
}

func (f *fixture) advance(d time.Duration) {
	t := f.now.Load().Add(d)
	f.now.Store(&t)
}

func (f *fixture) op(idp string) *oidctest.OP {
	if idp == "entra" {
		return f.entr
	}
	return f.okta
}

// noFollow is the browser, stopping at the first redirect (to read it).
func noFollow(b *http.Client) *http.Client {
	c := *b
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

func get(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// browserLogin logs user in at idp through a browser and returns the page
// the verifier answers the callback with.
func (f *fixture) browserLogin(t testing.TB, idp string, u oidctest.User) (int, string) {
	t.Helper()
	b := oidctest.Browser(t)
	cb := f.op(idp).Authorize(t, b, f.srv.URL+api.PathLogin+idp, u.Username, u.Password)
	resp, body := get(t, b, cb.String())
	return resp.StatusCode, body
}

func TestBrowserLoginTwoIdPs(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		idp     string
		user    oidctest.User
		subject string
	}{
		{"okta", alice, "u-alice"},
		{"entra", carol, "oid-carol"}, // subject_claim: oid
	} {
		t.Run(tc.idp, func(t *testing.T) {
			code, body := f.browserLogin(t, tc.idp, tc.user)
			id := record.PersonID(tc.idp, tc.subject)
			if code != http.StatusOK || !strings.Contains(body, id) {
				t.Fatalf("%d: %s", code, body)
			}
			p, err := f.svc.Person(t.Context(), id)
			if err != nil || p.Subject != tc.subject || p.Name != tc.user.Name || !slices.Equal(p.Groups, tc.user.Groups) {
				t.Fatalf("person %+v %v", p, err)
			}
			ev, _ := f.env.LastEvent(t)
			if ev.Kind != "person.login" || ev.Result != audit.OK || ev.Person != id {
				t.Fatalf("audit %+v", ev)
			}
		})
	}
}

// Same email, other subject or other IdP: another person each time.
func TestEmailCollisionIsAnotherPerson(t *testing.T) {
	f := newFixture(t)
	f.browserLogin(t, "okta", alice)
	f.browserLogin(t, "okta", bob)
	f.browserLogin(t, "entra", carol)
	ps, err := store.List[record.Person](t.Context(), f.env.Store.People)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, p := range ps {
		ids[p.ID] = true
	}
	if len(ps) != 3 || len(ids) != 3 {
		t.Fatalf("%d people, %d IDs, want 3 of each: %+v", len(ps), len(ids), ps)
	}
}

// cliLogin runs a loopback login to its one-time code (what the CLI's
// listener would receive) and returns the code.
func (f *fixture) cliLogin(t testing.TB, idp string, u oidctest.User, challenge string) string {
	t.Helper()
	b := oidctest.Browser(t)
	start := f.srv.URL + api.PathLogin + idp + "?" + url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:9/cb/x"}, "cc": {challenge}}.Encode()
	resp, err := b.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	cb := f.op(idp).LogIn(t, b, oidctest.Submit(t, b, resp, nil), u.Username, u.Password)
	resp, body := get(t, noFollow(b), cb.String())
	loc, err := resp.Location()
	if err != nil || !strings.HasPrefix(loc.String(), "http://127.0.0.1:9/cb/x?code=") {
		t.Fatalf("callback: %s %v: %s", resp.Status, err, body)
	}
	return loc.Query().Get("code")
}

func (f *fixture) redeem(t testing.TB, code, verifier string) (int, api.LoginResult, api.OAuthError) {
	t.Helper()
	resp, err := http.PostForm(f.srv.URL+api.PathCLIToken, url.Values{"grant_type": {api.GrantTypeCode}, "code": {code}, "code_verifier": {verifier}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var res api.LoginResult
	var oe api.OAuthError
	_ = json.Unmarshal(b, &res)
	_ = json.Unmarshal(b, &oe)
	return resp.StatusCode, res, oe
}

func TestLoopbackLogin(t *testing.T) {
	f := newFixture(t)
	v := oauth2.GenerateVerifier()
	code := f.cliLogin(t, "okta", alice, oauth2.S256ChallengeFromVerifier(v))
	st, res, oe := f.redeem(t, code, v)
	if st != http.StatusOK || res.AccessToken == "" || res.TokenType != "Bearer" {
		t.Fatalf("redeem: %d %+v", st, oe)
	}
	// Groups to roles: ops grants admin with a hardware credential only.
	if res.Person.ID != record.PersonID("okta", "u-alice") || !slices.Equal(res.Roles, []string{"admin", "dev"}) || !slices.Equal(res.SoftwareRoles, []string{"dev"}) {
		t.Fatalf("result %+v", res)
	}
	if d := res.LoginExpires.Sub(*f.now.Load()); d < policy.DefaultLoginTTL-time.Minute || d > policy.DefaultLoginTTL {
		t.Fatalf("login expires in %v, want the default 12h", d)
	}
	// The grant is what the device-credential step redeems: once.
	if _, p, err := f.svc.Redeem(t.Context(), res.AccessToken, &record.GrantBinding{Key: testKeyBinding}); err != nil || p.ID != res.Person.ID {
		t.Fatalf("grant redeem: %v %v", p, err)
	}
	// The one-time code again: refused.
	if st, _, oe := f.redeem(t, code, v); st != http.StatusBadRequest || oe.Code != api.OAuthInvalidGrant {
		t.Fatalf("replayed code: %d %+v", st, oe)
	}
}

// Whoever else receives the loopback redirect (another local user on the
// port) holds the code but not the CLI's PKCE verifier.
func TestLoopbackCodeNeedsVerifier(t *testing.T) {
	f := newFixture(t)
	v := oauth2.GenerateVerifier()
	code := f.cliLogin(t, "okta", alice, oauth2.S256ChallengeFromVerifier(v))
	if st, _, oe := f.redeem(t, code, oauth2.GenerateVerifier()); st != http.StatusBadRequest || oe.Code != api.OAuthInvalidGrant {
		t.Fatalf("wrong verifier: %d %+v", st, oe)
	}
	// Tried once: the right verifier after a wrong one is refused too.
	if st, _, _ := f.redeem(t, code, v); st != http.StatusBadRequest {
		t.Fatalf("code survived a wrong verifier: %d", st)
	}
}

// A CLI's login link does not go to the IdP until the person confirms it
// on a form another site cannot submit: a link naming another local user's
// loopback port cannot take the person's login through a silent IdP
// session.
func TestLoopbackNeedsConfirmation(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	cc := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	start := f.srv.URL + api.PathLogin + "okta?" + url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}}.Encode()
	resp, body := get(t, noFollow(b), start)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "port 4711") || !strings.Contains(body, "tpmauthnctl login") {
		t.Fatalf("%s: %s", resp.Status, body)
	}
	for _, tc := range []struct {
		name string
		c    *http.Client
		form url.Values
	}{
		{"noCSRF", b, url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}}},
		{"otherBrowser", pageAt(t, f.srv.URL+api.PathLogin), url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}, "csrf": {csrfField.FindStringSubmatch(body)[1]}}},
		{"remoteCallback", b, url.Values{"key": {testKeyBinding}, "cb": {"http://evil.example.com:80/cb"}, "cc": {cc}, "csrf": {csrfField.FindStringSubmatch(body)[1]}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := noFollow(tc.c).PostForm(start, tc.form)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s", resp.Status)
			}
		})
	}
}

func TestLoopbackStartRefusesNonLoopback(t *testing.T) {
	f := newFixture(t)
	cc := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	for _, tc := range []struct{ name, cb, cc string }{
		{"remote", "http://evil.example.com:80/cb", cc},
		{"localhostName", "http://localhost:9/cb", cc},
		{"https", "https://127.0.0.1:9/cb", cc},
		{"noPort", "http://127.0.0.1/cb", cc},
		{"userinfo", "http://x@127.0.0.1:9/cb", cc},
		{"noChallenge", "http://127.0.0.1:9/cb", ""},
		{"plainChallenge", "http://127.0.0.1:9/cb", "short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := f.srv.URL + api.PathLogin + "okta?" + url.Values{"key": {testKeyBinding}, "cb": {tc.cb}, "cc": {tc.cc}}.Encode()
			if resp, _ := get(t, noFollow(oidctest.Browser(t)), u); resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s: %s", u, resp.Status)
			}
		})
	}
}

// stateOf is the state parameter of a callback URL, and its record's key.
func stateKey(cb *url.URL) string { return "state." + record.SecretKey(cb.Query().Get("state")) }

func TestCallbackRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL)
		want   int
		why    error
	}{
		{"wrongState", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			q := cb.Query()
			st := q.Get("state")
			first := "A"
			if st[0] == 'A' { // one state in 64 starts with A: change it all the same
				first = "B"
			}
			q.Set("state", first+st[1:])
			cb.RawQuery = q.Encode()
			return nil, cb
		}, http.StatusBadRequest, ErrState},
		{"noState", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			q := cb.Query()
			q.Del("state")
			cb.RawQuery = q.Encode()
			return nil, cb
		}, http.StatusBadRequest, ErrState},
		{"otherBrowser", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			return oidctest.Browser(t), cb // login CSRF: the victim's browser has no cookie for this state
		}, http.StatusBadRequest, ErrState},
		{"expired", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			f.advance(StateTTL + time.Second)
			return nil, cb
		}, http.StatusBadRequest, ErrState},
		{"wrongNonce", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			// As if the ID token had been minted for another login (a
			// replayed or injected token): the state's nonce differs.
			_, _, err := store.Mutate(t.Context(), f.env.Store.Logins, stateKey(cb), func(s *record.LoginState) error {
				s.Nonce = "another-login"
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return nil, cb
		}, http.StatusBadRequest, ErrNonce},
		{"codeTampered", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			q := cb.Query()
			q.Set("code", "forged")
			cb.RawQuery = q.Encode()
			return nil, cb
		}, http.StatusBadGateway, ErrIdP},
		{"idpError", func(t *testing.T, f *fixture, cb *url.URL) (*http.Client, *url.URL) {
			q := cb.Query()
			q.Del("code")
			q.Set("error", "access_denied")
			cb.RawQuery = q.Encode()
			return nil, cb
		}, http.StatusBadGateway, ErrIdP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			b := oidctest.Browser(t)
			cb := f.okta.Authorize(t, b, f.srv.URL+api.PathLogin+"okta", alice.Username, password)
			other, cb := tc.tamper(t, f, cb)
			if other != nil {
				b = other
			}
			if resp, body := get(t, b, cb.String()); resp.StatusCode != tc.want || !strings.Contains(body, tc.why.Error()) {
				t.Fatalf("%s, want %d (%v): %s", resp.Status, tc.want, tc.why, body)
			}
			if _, err := f.svc.Person(t.Context(), record.PersonID("okta", alice.ID)); !errors.Is(err, api.ErrNotFound) {
				t.Fatalf("a refused login recorded the person: %v", err)
			}
		})
	}
}

// A callback URL is good once: the state is taken by the first use, and
// the IdP's code with it.
func TestCallbackReplayed(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	cb := f.okta.Authorize(t, b, f.srv.URL+api.PathLogin+"okta", alice.Username, password)
	if resp, body := get(t, b, cb.String()); resp.StatusCode != http.StatusOK {
		t.Fatalf("first: %s %s", resp.Status, body)
	}
	if resp, _ := get(t, b, cb.String()); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed callback: %s", resp.Status)
	}
}

func TestWrongNonceAudited(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	cb := f.okta.Authorize(t, b, f.srv.URL+api.PathLogin+"okta", alice.Username, password)
	_, _, err := store.Mutate(t.Context(), f.env.Store.Logins, stateKey(cb), func(s *record.LoginState) error {
		s.Nonce = "another-login"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	get(t, b, cb.String())
	ev, _ := f.env.LastEvent(t)
	if ev.Kind != "person.login" || ev.Result != audit.DenyText || !strings.Contains(ev.Reason, ErrNonce.Error()) {
		t.Fatalf("audit %+v", ev)
	}
}

// The policy's issuer is not the one the provider's discovery states
// (here: without the trailing slash): no login.
func TestWrongIssuer(t *testing.T) {
	f := newFixture(t)
	f.setPolicy(t, strings.Replace(f.policyYAML, fmt.Sprintf("%q", f.okta.Issuer), fmt.Sprintf("%q", f.okta.URL), 1))
	resp, body := get(t, noFollow(oidctest.Browser(t)), f.srv.URL+api.PathLogin+"okta")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, ErrIdP.Error()) {
		t.Fatalf("%s: %s", resp.Status, body)
	}
}

func TestUnknownIdP(t *testing.T) {
	f := newFixture(t)
	if resp, _ := get(t, oidctest.Browser(t), f.srv.URL+api.PathLogin+"google"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("%s", resp.Status)
	}
	resp, body := get(t, oidctest.Browser(t), f.srv.URL+api.PathLogin)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `href="/login/okta"`) || !strings.Contains(body, `href="/login/entra"`) {
		t.Fatalf("chooser: %s %s", resp.Status, body)
	}
}

func TestExpiredCode(t *testing.T) {
	f := newFixture(t)
	v := oauth2.GenerateVerifier()
	code := f.cliLogin(t, "okta", alice, oauth2.S256ChallengeFromVerifier(v))
	f.advance(CodeTTL + time.Second)
	if st, _, oe := f.redeem(t, code, v); st != http.StatusBadRequest || oe.Code != api.OAuthInvalidGrant {
		t.Fatalf("expired code: %d %+v", st, oe)
	}
}

func TestDisabledPersonCannotLogIn(t *testing.T) {
	f := newFixture(t)
	f.browserLogin(t, "okta", alice)
	if err := f.svc.Disable(t.Context(), record.PersonID("okta", alice.ID), "left", "test"); err != nil {
		t.Fatal(err)
	}
	if code, body := f.browserLogin(t, "okta", alice); code != http.StatusForbidden {
		t.Fatalf("%d %s", code, body)
	}
}

// pageAt is another browser, on a page of the verifier (so its forms
// come from the verifier's origin) but without the login cookie.
func pageAt(t *testing.T, u string) *http.Client {
	t.Helper()
	b := oidctest.Browser(t)
	get(t, b, u)
	return b
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// approveDevice is the person's side of a device login: the /device page,
// the code, the IdP's login, the callback.
func (f *fixture) approveDevice(t *testing.T, verificationURI, userCode string, u oidctest.User) (int, string) {
	t.Helper()
	b := oidctest.Browser(t)
	_, page := get(t, b, verificationURI)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field: %s", page)
	}
	resp, err := b.PostForm(f.srv.URL+api.PathDevice, url.Values{"user_code": {strings.ToLower(userCode)}, "idp": {"okta"}, "csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	// The IdP is asked to make the person log in (no silent single
	// sign-on for a device someone else may be holding).
	prompted := false
	for req := resp.Request; req != nil; req = redirectedFrom(req) {
		prompted = prompted || req.URL.Query().Get("prompt") == "login"
	}
	if !prompted {
		t.Fatal("the device login did not ask the IdP for prompt=login")
	}
	cb := f.okta.LogIn(t, b, resp, u.Username, u.Password)
	r, body := get(t, b, cb.String())
	return r.StatusCode, body
}

// The verifier's own RFC 8628 endpoints, driven by x/oauth2's device
// client: a host without a browser logs in through a person's browser.
func TestDeviceFlow(t *testing.T) {
	f := newFixture(t)
	cfg := oauth2.Config{ClientID: "tpmauthnctl", Endpoint: oauth2.Endpoint{DeviceAuthURL: f.srv.URL + api.PathDeviceCode,
		TokenURL: f.srv.URL + api.PathDeviceToken, AuthStyle: oauth2.AuthStyleInParams}}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	da, err := cfg.DeviceAuth(ctx, oauth2.SetAuthURLParam(api.FormGrantKey, testKeyBinding))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[B-Z]{4}-[B-Z]{4}$`).MatchString(da.UserCode) || da.VerificationURI != f.srv.URL+api.PathDevice {
		t.Fatalf("device auth %+v", da)
	}
	type result struct {
		tok *oauth2.Token
		err error
	}
	done := make(chan result, 1)
	go func() {
		tok, err := cfg.DeviceAccessToken(ctx, da)
		done <- result{tok, err}
	}()
	if code, body := f.approveDevice(t, da.VerificationURI, da.UserCode, alice); code != http.StatusOK || !strings.Contains(body, "Device logged in") {
		t.Fatalf("approve: %d %s", code, body)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	person, _ := r.tok.Extra("person").(map[string]any)
	if person["id"] != record.PersonID("okta", alice.ID) {
		t.Fatalf("token for %v", person)
	}
	if _, p, err := f.svc.Redeem(t.Context(), r.tok.AccessToken, &record.GrantBinding{Key: testKeyBinding}); err != nil || p.Subject != alice.ID {
		t.Fatalf("grant: %v %v", p, err)
	}
	// The device code was taken with the grant.
	if st, oe := devicePoll(t, f, da.DeviceCode); st != http.StatusBadRequest || oe.Code != api.OAuthInvalidGrant {
		t.Fatalf("poll after the grant: %d %+v", st, oe)
	}
}

func redirectedFrom(req *http.Request) *http.Request {
	if req.Response == nil {
		return nil
	}
	return req.Response.Request
}

func devicePoll(t *testing.T, f *fixture, deviceCode string) (int, api.OAuthError) {
	t.Helper()
	resp, err := http.PostForm(f.srv.URL+api.PathDeviceToken, url.Values{"grant_type": {api.GrantTypeDeviceCode}, "device_code": {deviceCode}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var oe api.OAuthError
	_ = json.NewDecoder(resp.Body).Decode(&oe)
	return resp.StatusCode, oe
}

func deviceAuth(t *testing.T, f *fixture) api.DeviceAuthResponse {
	t.Helper()
	resp, err := http.PostForm(f.srv.URL+api.PathDeviceCode, url.Values{"client_id": {"tpmauthnctl"}, api.FormGrantKey: {testKeyBinding}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var da api.DeviceAuthResponse
	if err := json.NewDecoder(resp.Body).Decode(&da); err != nil {
		t.Fatal(err)
	}
	return da
}

func TestDevicePolling(t *testing.T) {
	f := newFixture(t)
	da := deviceAuth(t, f)
	if st, oe := devicePoll(t, f, da.DeviceCode); st != http.StatusBadRequest || oe.Code != api.OAuthPending {
		t.Fatalf("first poll: %d %+v", st, oe)
	}
	if _, oe := devicePoll(t, f, da.DeviceCode); oe.Code != api.OAuthSlowDown {
		t.Fatalf("poll within the interval: %+v, want slow_down", oe)
	}
	if _, oe := devicePoll(t, f, "unknown"); oe.Code != api.OAuthInvalidGrant {
		t.Fatalf("unknown code: %+v", oe)
	}
	f.advance(DeviceTTL)
	if _, oe := devicePoll(t, f, da.DeviceCode); oe.Code != api.OAuthExpiredToken {
		t.Fatalf("expired: %+v", oe)
	}
}

func TestDevicePageRefusals(t *testing.T) {
	f := newFixture(t)
	da := deviceAuth(t, f)
	b := oidctest.Browser(t)
	_, page := get(t, b, f.srv.URL+api.PathDevice)
	csrf := csrfField.FindStringSubmatch(page)[1]
	for _, tc := range []struct {
		name string
		c    *http.Client
		form url.Values
	}{
		// Another site posting the form in the person's browser has no
		// token (and a SameSite=Lax cookie is not sent with it anyway).
		{"noCSRF", b, url.Values{"user_code": {da.UserCode}, "idp": {"okta"}}},
		{"otherBrowsersCSRF", pageAt(t, f.srv.URL+api.PathLogin), url.Values{"user_code": {da.UserCode}, "idp": {"okta"}, "csrf": {csrf}}},
		{"unknownCode", b, url.Values{"user_code": {"BCDF-GHJK"}, "idp": {"okta"}, "csrf": {csrf}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := noFollow(tc.c).PostForm(f.srv.URL+api.PathDevice, tc.form)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("%s", resp.Status)
			}
		})
	}
}

// The people section is re-read like the rest of the policy: a changed
// IdP (here its client secret) is discovered again at the next login.
func TestPolicyChangeRebuildsRelyingParty(t *testing.T) {
	f := newFixture(t)
	if code, _ := f.browserLogin(t, "okta", alice); code != http.StatusOK {
		t.Fatalf("first login: %d", code)
	}
	wrong := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrong, []byte("not-the-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	right := regexp.MustCompile(`client_secret_file: "([^"]*okta)"`).FindStringSubmatch(f.policyYAML)[1]
	f.setPolicy(t, strings.Replace(f.policyYAML, right, wrong, 1))
	if code, body := f.browserLogin(t, "okta", alice); code != http.StatusBadGateway {
		t.Fatalf("login with a wrong client secret: %d %s", code, body)
	}
	f.setPolicy(t, f.policyYAML)
	if code, _ := f.browserLogin(t, "okta", alice); code != http.StatusOK {
		t.Fatalf("login after the fix: %d", code)
	}
}

// BenchmarkLoopbackLogin: a CLI's whole login against the in-process IdP
// (confirmation page, IdP form, code exchange and ID token check, person
// record and audit, one-time code redeemed for a grant): the verifier's
// share of a login's latency, the IdP's being in-process.
func BenchmarkLoopbackLogin(b *testing.B) {
	f := newFixture(b)
	for b.Loop() {
		v := oauth2.GenerateVerifier()
		code := f.cliLogin(b, "okta", alice, oauth2.S256ChallengeFromVerifier(v))
		if st, _, oe := f.redeem(b, code, v); st != http.StatusOK {
			b.Fatalf("redeem: %d %+v", st, oe)
		}
	}
}
