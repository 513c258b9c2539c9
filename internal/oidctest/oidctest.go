package oidctest

import (
	"context"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is an account at the provider.
type User struct {
	ID, Username, Password string
	Name, Email            string
	Groups                 []string
	// Claims are added to the ID token as they are (e.g. "oid").
	Claims map[string]any
	// Disabled users' refresh tokens are refused (Disable).
	Disabled bool
}

// OP is a running OpenID provider.
type OP struct {
	// Issuer is its issuer URL, with the trailing slash its discovery
	// document states.
	Issuer  string
	URL     string // Issuer without the trailing slash
	clients map[string]*storage.Client
	users   *users
	down    atomic.Bool
	revoked atomic.Int64
}

// Disable disables user id: the provider refuses their refresh tokens
// (invalid_grant), as an IdP does for a deactivated account.
func (o *OP) Disable(id string) { o.users.update(id, func(u *User) { u.Disabled = true }) }

// SetGroups changes user id's groups (the next ID token, a refresh's too,
// lists these).
func (o *OP) SetGroups(id string, groups ...string) {
	o.users.update(id, func(u *User) { u.Groups = groups })
}

// SetDown makes the provider unreachable (every connection dropped) or
// reachable again.
func (o *OP) SetDown(down bool) { o.down.Store(down) }

// Revocations is how many tokens were revoked at the provider's RFC 7009
// endpoint.
func (o *OP) Revocations() int64 { return o.revoked.Load() }

// Start runs a provider on a free loopback port with users, until the test
// ends.
func Start(tb testing.TB, us ...User) *OP {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	o := &OP{URL: "http://" + ln.Addr().String(), clients: map[string]*storage.Client{}, users: &users{m: map[string]User{}}}
	o.Issuer = o.URL + "/"
	for _, u := range us {
		o.users.m[u.ID] = u
	}
	st := &groupStorage{Storage: storage.NewStorageWithClients(o.users, o.clients), users: o.users, op: o}
	handler := exampleop.SetupServer(o.Issuer, st, nil, false)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.down.Load() {
			// Unreachable: the connection drops without an answer, as
			// when the IdP is down or the network is.
			panic(http.ErrAbortHandler)
		}
		handler.ServeHTTP(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	tb.Cleanup(srv.Close)
	return o
}

// AddClient registers a confidential web client (client_secret_basic) with
// one redirect URI. Call it before the client's first login.
func (o *OP) AddClient(id, secret, redirectURI string) {
	o.clients[id] = storage.WebClient(id, secret, redirectURI)
}

// users is the provider's user store (storage.UserStore).
type users struct {
	mu sync.Mutex
	m  map[string]User
}

func (u *users) GetUserByID(id string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	if x, ok := u.m[id]; ok {
		return toStorage(x)
	}
	return nil
}

func (u *users) GetUserByUsername(name string) *storage.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, x := range u.m {
		if x.Username == name {
			return toStorage(x)
		}
	}
	return nil
}

func (u *users) ExampleClientID() string { return storage.ServiceUserID }

func (u *users) update(id string, f func(*User)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if x, ok := u.m[id]; ok {
		f(&x)
		u.m[id] = x
	}
}

func (u *users) get(id string) (User, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	x, ok := u.m[id]
	return x, ok
}

func toStorage(x User) *storage.User {
	return &storage.User{ID: x.ID, Username: x.Username, Password: x.Password, FirstName: x.Name, Email: x.Email, EmailVerified: true}
}

// groupStorage puts each user's name, email, groups and extra claims in
// the ID token: the example storage leaves the profile out whenever an
// access token is issued too (OIDC Core §5.4), and knows no groups.
type groupStorage struct {
	*storage.Storage
	users *users
	op    *OP
}

// TokenRequestByRefreshToken refuses a disabled user's refresh token
// (the OP answers invalid_grant).
func (s *groupStorage) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	req, err := s.Storage.TokenRequestByRefreshToken(ctx, token)
	if err != nil {
		return nil, err
	}
	if u, ok := s.users.get(req.GetSubject()); !ok || u.Disabled {
		return nil, fmt.Errorf("user %s is disabled", req.GetSubject())
	}
	return req, nil
}

// RevokeToken counts revocations (RFC 7009) and revokes.
func (s *groupStorage) RevokeToken(ctx context.Context, token, userID, clientID string) *oidc.Error {
	s.op.revoked.Add(1)
	return s.Storage.RevokeToken(ctx, token, userID, clientID)
}

func (s *groupStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, req, scopes); err != nil {
		return err
	}
	u, ok := s.users.get(req.GetSubject())
	if !ok {
		return fmt.Errorf("user %s not found", req.GetSubject())
	}
	ui.Name, ui.Email = u.Name, u.Email
	ui.AppendClaims("groups", u.Groups)
	for k, v := range u.Claims {
		ui.AppendClaims(k, v)
	}
	return nil
}

// Browser is an HTTP client with a cookie jar, as a browser would be. Like
// a browser it says where a request comes from: a POST (a form submitted
// on the page last loaded) carries that page's Origin, and every request
// Sec-Fetch-Site (Fetch Metadata) comparing the page's origin with the
// target's. SetTransport changes how it reaches servers.
func Browser(tb testing.TB) *http.Client {
	tb.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &http.Client{Jar: jar, Transport: &browserTransport{}}
}

// SetTransport makes browser b (from Browser) reach servers through rt
// (for example one that trusts a test CA), keeping its browser headers.
func SetTransport(b *http.Client, rt http.RoundTripper) {
	if bt, ok := b.Transport.(*browserTransport); ok {
		bt.mu.Lock()
		bt.base = rt
		bt.mu.Unlock()
		return
	}
	b.Transport = rt
}

// browserTransport adds Origin and Sec-Fetch-Site as a browser does, with
// the last page loaded (a response that is not a redirect) as the page
// the next request comes from.
type browserTransport struct {
	mu   sync.Mutex
	base http.RoundTripper
	page *url.URL
}

func (bt *browserTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	bt.mu.Lock()
	base, page := bt.base, bt.page
	bt.mu.Unlock()
	if base == nil {
		base = http.DefaultTransport
	}
	r = r.Clone(r.Context())
	if r.Header.Get("Sec-Fetch-Site") == "" {
		r.Header.Set("Sec-Fetch-Site", FetchSite(page, r.URL))
	}
	if r.Method == http.MethodPost && page != nil && r.Header.Get("Origin") == "" {
		r.Header.Set("Origin", Origin(page))
	}
	resp, err := base.RoundTrip(r)
	if err == nil && (resp.StatusCode < 300 || resp.StatusCode > 399) {
		bt.mu.Lock()
		bt.page = r.URL
		bt.mu.Unlock()
	}
	return resp, err
}

// CloseIdleConnections closes the base transport's idle connections
// (http.Client.CloseIdleConnections calls it).
func (bt *browserTransport) CloseIdleConnections() {
	bt.mu.Lock()
	base := bt.base
	bt.mu.Unlock()
	if base == nil {
		base = http.DefaultTransport
	}
	if c, ok := base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// Origin is u's origin as a browser serializes it: scheme://host[:port].
func Origin(u *url.URL) string { return u.Scheme + "://" + u.Host }

// FetchSite is the Sec-Fetch-Site a request from page to target has:
// "none" (typed in), "same-origin", "same-site" (same scheme and host,
// another port: ports do not separate sites), or "cross-site".
func FetchSite(page, target *url.URL) string {
	switch {
	case page == nil:
		return "none"
	case Origin(page) == Origin(target):
		return "same-origin"
	case page.Scheme == target.Scheme && page.Hostname() == target.Hostname():
		return "same-site"
	}
	return "cross-site"
}

var (
	formTag     = regexp.MustCompile(`(?s)<form[^>]*>`)
	formAction  = regexp.MustCompile(`action="([^"]*)"`)
	hiddenInput = regexp.MustCompile(`<input type="hidden" name="([^"]+)" value="([^"]*)">`)
)

// Submit does what a person clicking the page's form button does: it posts
// the first form of the page in resp (its hidden fields, and fields) to its
// action, following redirects, and returns where the browser ends.
func Submit(tb testing.TB, browser *http.Client, resp *http.Response, fields url.Values) *http.Response {
	tb.Helper()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tag := formTag.Find(body)
	if tag == nil {
		tb.Fatalf("%s %s: no form on the page (%s): %s", resp.Request.Method, resp.Request.URL, resp.Status, body)
	}
	action := resp.Request.URL.String()
	if m := formAction.FindSubmatch(tag); m != nil {
		u, err := resp.Request.URL.Parse(html.UnescapeString(string(m[1])))
		if err != nil {
			tb.Fatal(err)
		}
		action = u.String()
	}
	form := url.Values{}
	for _, m := range hiddenInput.FindAllSubmatch(body, -1) {
		form.Set(html.UnescapeString(string(m[1])), html.UnescapeString(string(m[2])))
	}
	for k, v := range fields {
		form[k] = v
	}
	next, err := browser.PostForm(action, form)
	if err != nil {
		tb.Fatal(err)
	}
	return next
}

// Authorize starts a login at startURL with the browser, logs in at the
// provider's form as username, and returns where the provider then sends
// the browser (the relying party's callback, not yet followed).
func (o *OP) Authorize(tb testing.TB, browser *http.Client, startURL, username, password string) *url.URL {
	tb.Helper()
	resp, err := browser.Get(startURL)
	if err != nil {
		tb.Fatal(err)
	}
	return o.LogIn(tb, browser, resp, username, password)
}

// LogIn takes the response that brought the browser to the provider's
// login form, logs in as username, and returns where the provider then
// sends the browser (not yet followed).
func (o *OP) LogIn(tb testing.TB, browser *http.Client, resp *http.Response, username, password string) *url.URL {
	tb.Helper()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || id == "" || !strings.HasPrefix(resp.Request.URL.String(), o.URL) {
		tb.Fatalf("%s %s ended at %s (%s), not the provider's login form: %s", resp.Request.Method, resp.Request.URL, resp.Request.URL, resp.Status, body)
	}
	stop := *browser
	stop.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if !strings.HasPrefix(req.URL.String(), o.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err := stop.PostForm(o.URL+"/login/username", url.Values{"username": {username}, "password": {password}, "id": {id}})
	if err != nil {
		tb.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		tb.Fatalf("login as %s: %s, no redirect back: %s", username, resp.Status, body)
	}
	return loc
}
