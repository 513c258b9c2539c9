package oidclogin

import (
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// attackerPage is another local user's web server on another 127.0.0.1
// port: cookies are not separated by port, so its answer can overwrite the
// verifier's login cookie (plain HTTP on loopback has no __Host- prefix).
func attackerPage(t *testing.T, cookieName, value string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: cookieName, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		_, _ = w.Write([]byte("<form method=post></form>"))
	}))
	t.Cleanup(s.Close)
	return s
}

// M2: a page on another loopback port sets the login cookie to a value it
// knows and auto-submits the confirm form with the token it derives from
// that value: the person's login would go to the attacker's listener.
func TestConfirmRefusesOtherPortTakeover(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	known := strings.Repeat("A", 43)
	evil := attackerPage(t, "tpmauthn_login", known)
	get(t, b, evil.URL) // the victim's browser visits the attacker's page
	cc := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	form := url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}, "csrf": {record.SecretKey("csrf\x00" + known)}}
	resp, err := noFollow(b).PostForm(f.srv.URL+api.PathLogin+"okta", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusFound {
		t.Fatalf("the attacker's form was taken: %s to %s", resp.Status, resp.Header.Get("Location"))
	}
}

// M2: even from the verifier's own origin, a form token computed from a
// known cookie value (without the verifier's secret) is refused.
func TestCSRFTokenIsKeyed(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	cc := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	start := f.srv.URL + api.PathLogin + "okta?" + url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}}.Encode()
	get(t, b, start) // sets the cookie; its value is what an attacker who set it knows
	u, _ := url.Parse(f.srv.URL)
	var cookie string
	for _, c := range b.Jar.Cookies(u) {
		if c.Name == "tpmauthn_login" {
			cookie = c.Value
		}
	}
	if got := (&Handler{}).csrfToken(cookie); got == record.SecretKey("csrf\x00"+cookie) {
		t.Fatal("the form token is an unkeyed hash of the cookie")
	}
	form := url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {cc}, "csrf": {record.SecretKey("csrf\x00" + cookie)}}
	resp, err := noFollow(b).PostForm(start, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusFound {
		t.Fatalf("an unkeyed token was taken: %s", resp.Status)
	}
}

// M2: the browser forms (confirm a CLI's login, enter a device code) are
// taken only from the verifier's own origin: Origin, else Sec-Fetch-Site
// same-origin; neither is a refusal.
func TestFormsNeedSameOrigin(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	start := f.srv.URL + api.PathLogin + "okta"
	_, page := get(t, b, start+"?"+url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {strings.Repeat("c", 43)}}.Encode())
	csrf := csrfField.FindStringSubmatch(page)[1]
	self := f.srv.URL
	other := strings.Replace(self, ":"+mustPort(t, self), ":4712", 1)
	for _, tc := range []struct {
		name, origin, site string
		ok                 bool
	}{
		{"otherPort", other, "same-site", false},
		{"otherSite", "https://evil.example.com", "cross-site", false},
		{"nullOrigin", "null", "", false},
		{"noHeaders", "", "", false},
		{"fetchSiteSameSite", "", "same-site", false},
		{"fetchSiteSameOrigin", "", "same-origin", true},
		{"ownOrigin", self, "same-origin", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A challenge of its own: each is taken by one login.
			confirm := url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb"}, "cc": {oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())}, "csrf": {csrf}}
			req, _ := http.NewRequest(http.MethodPost, start, strings.NewReader(confirm.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			setOrDel(req.Header, "Origin", tc.origin)
			setOrDel(req.Header, "Sec-Fetch-Site", tc.site)
			// Sent as is: not through the browser, which would add its own.
			c := &http.Client{Jar: b.Jar, CheckRedirect: noFollow(b).CheckRedirect}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.StatusCode == http.StatusFound; got != tc.ok {
				t.Fatalf("Origin %q, Sec-Fetch-Site %q: %s", tc.origin, tc.site, resp.Status)
			}
		})
	}
	// The device form too.
	da := deviceAuth(t, f)
	_, dpage := get(t, b, f.srv.URL+api.PathDevice)
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+api.PathDevice, strings.NewReader(url.Values{
		"user_code": {da.UserCode}, "idp": {"okta"}, "csrf": {csrfField.FindStringSubmatch(dpage)[1]}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", other)
	resp, err := (&http.Client{Jar: b.Jar, CheckRedirect: noFollow(b).CheckRedirect}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("device form from another port: %s", resp.Status)
	}
}

func setOrDel(h http.Header, k, v string) {
	if v == "" {
		h.Del(k)
		return
	}
	h.Set(k, v)
}

func mustPort(t *testing.T, s string) string {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// M4a: an IdP removed from the policy (say, compromised) takes its people
// with it: a code issued just before is not redeemed for a grant.
func TestRemovedIdPRefused(t *testing.T) {
	f := newFixture(t)
	v := oauth2.GenerateVerifier()
	code := f.cliLogin(t, "entra", carol, oauth2.S256ChallengeFromVerifier(v))
	var kept []string
	for _, l := range strings.Split(f.policyYAML, "\n") {
		if !strings.Contains(l, "entra") {
			kept = append(kept, l)
		}
	}
	f.setPolicy(t, strings.Join(kept, "\n"))
	if st, res, oe := f.redeem(t, code, v); st == http.StatusOK {
		t.Fatalf("granted after its IdP was removed: %s roles %v", res.Person.ID, res.Roles)
	} else if oe.Code != api.OAuthAccessDenied {
		t.Fatalf("%d %+v, want access_denied", st, oe)
	}
}

// M4b: a person is their IdP's issuer and subject claim, not the IdP's
// name: the name "okta" pointed at another issuer does not land that
// issuer's users in okta's people (here: the same subject string).
func TestRenamedIdPIsNotThePerson(t *testing.T) {
	f := newFixture(t)
	if code, body := f.browserLogin(t, "okta", alice); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	mallory := oidctest.User{ID: "u-alice", Username: "mallory", Password: password, Name: "Mallory", Groups: []string{"ops"}}
	other := oidctest.Start(t, mallory)
	other.AddClient("verifier-okta", "secret-okta", f.srv.URL+api.PathOIDCCallback)
	f.setPolicy(t, strings.Replace(f.policyYAML, fmt.Sprintf("issuer: %q", f.okta.Issuer), fmt.Sprintf("issuer: %q", other.Issuer), 1))
	b := oidctest.Browser(t)
	cb := other.Authorize(t, b, f.srv.URL+api.PathLogin+"okta", mallory.Username, mallory.Password)
	resp, body := get(t, b, cb.String())
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("another issuer's user logged in as okta's person: %s", body)
	}
	p, err := f.svc.Person(t.Context(), record.PersonID("okta", "u-alice"))
	if err != nil || p.Name != alice.Name {
		t.Fatalf("okta's alice became %+v (%v)", p, err)
	}
}

// M1: a CLI's PKCE challenge is one login's: another login (a local user
// who read it in the victim's browser command line) with the same
// challenge is refused, so the victim's CLI cannot be handed their code.
func TestLoopbackChallengeOneTime(t *testing.T) {
	f := newFixture(t)
	victim := oauth2.GenerateVerifier()
	cc := oauth2.S256ChallengeFromVerifier(victim)
	f.confirmLoopback(t, oidctest.Browser(t), "okta", cc) // the victim's own login, under way
	b := oidctest.Browser(t)
	start := f.srv.URL + api.PathLogin + "okta?" + url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:9/cb/x"}, "cc": {cc}}.Encode()
	resp, err := b.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK {
		resp = oidctest.Submit(t, noFollow(b), resp, nil)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusFound {
		t.Fatalf("a second login with the victim's challenge went on to the IdP: %s", resp.Header.Get("Location"))
	}
}

// confirmLoopback starts a CLI login with challenge cc and confirms it,
// stopping at the redirect to the IdP.
func (f *fixture) confirmLoopback(t *testing.T, b *http.Client, idp, cc string) {
	t.Helper()
	start := f.srv.URL + api.PathLogin + idp + "?" + url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:9/cb/x"}, "cc": {cc}}.Encode()
	resp, err := b.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	next := oidctest.Submit(t, noFollow(b), resp, nil)
	next.Body.Close()
	if next.StatusCode != http.StatusFound {
		t.Fatalf("confirm: %s", next.Status)
	}
}

// L6: the chooser's links keep a CLI's cb and cc: following one reaches
// the confirmation of that CLI's login.
func TestChooserLinksKeepTheCLIQuery(t *testing.T) {
	f := newFixture(t)
	b := oidctest.Browser(t)
	cc := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	q := url.Values{"key": {testKeyBinding}, "cb": {"http://127.0.0.1:4711/cb/x"}, "cc": {cc}}.Encode()
	_, page := get(t, b, f.srv.URL+api.PathLogin+"?"+q)
	m := regexp.MustCompile(`href="([^"]*okta[^"]*)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no okta link: %s", page)
	}
	link, err := url.Parse(f.srv.URL)
	if err == nil {
		link, err = link.Parse(html.UnescapeString(m[1]))
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, noFollow(b), link.String())
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "port 4711") || !strings.Contains(body, "for <b>a software key (SHA-256 "+testKeyBinding[:16]) {
		t.Fatalf("the chooser's link %s: %s %s", m[1], resp.Status, body)
	}
}

// M3: state is not created for an image (a page's <img> pointing at
// /login/IDP) nor for another site's POST of a device code request.
func TestStateCreationRefusals(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, method, path string
		hdr                map[string]string
	}{
		{"image", http.MethodGet, api.PathLogin + "okta", map[string]string{"Sec-Fetch-Dest": "image", "Sec-Fetch-Site": "cross-site"}},
		{"crossSiteDeviceCode", http.MethodPost, api.PathDeviceCode, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.logins(t)
			req, _ := http.NewRequest(tc.method, f.srv.URL+tc.path, nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			resp, err := noFollow(&http.Client{}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || f.logins(t) != before {
				t.Fatalf("%s, records %d -> %d", resp.Status, before, f.logins(t))
			}
		})
	}
}

// M3: however many addresses ask, state creation has a global rate.
func TestStateCreationGlobalCap(t *testing.T) {
	f := newFixture(t)
	f.handler.states.SetBurst(3)
	f.handler.states.SetLimit(0)
	var refused int
	for range 5 {
		resp, err := http.PostForm(f.srv.URL+api.PathDeviceCode, url.Values{"client_id": {"x"}, api.FormGrantKey: {testKeyBinding}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			refused++
		}
	}
	if refused != 2 {
		t.Fatalf("%d of 5 refused, want 2 (burst 3)", refused)
	}
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (f *fixture) logins(t *testing.T) uint64 {
	t.Helper()
	st, err := f.env.Store.Logins.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st.Values()
}

// L5: the device page does not fill in a code from the link (the person
// types the code their device shows), and before the IdP it shows who
// asked for the code: the device's address and how long ago.
func TestDevicePageShowsRequester(t *testing.T) {
	f := newFixture(t)
	da := deviceAuth(t, f)
	b := oidctest.Browser(t)
	_, page := get(t, b, f.srv.URL+api.PathDevice+"?user_code="+url.QueryEscape(da.UserCode))
	if strings.Contains(page, da.UserCode) {
		t.Fatalf("the page filled in the code from the link: %s", page)
	}
	f.advance(3 * time.Minute)
	resp, err := b.PostForm(f.srv.URL+api.PathDevice, url.Values{"user_code": {da.UserCode}, "csrf": {csrfField.FindStringSubmatch(page)[1]}})
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "127.0.0.1") || !strings.Contains(body, "3 minutes ago") {
		t.Fatalf("%s: %s", resp.Status, body)
	}
}

// L2: a grant is issued only with its audit event stored.
func TestGrantNeedsDurableAudit(t *testing.T) {
	f := newFixture(t)
	v := oauth2.GenerateVerifier()
	code := f.cliLogin(t, "okta", alice, oauth2.S256ChallengeFromVerifier(v))
	f.env.Audit.Close()
	if st, res, _ := f.redeem(t, code, v); st == http.StatusOK {
		t.Fatalf("a grant without its audit event: %+v", res.Person)
	}
}
