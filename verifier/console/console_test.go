package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/passkey"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const testPolicy = `
roles:
  dev: {publish: {allow: ["dev.>"]}}
  viewer: {admin: [read]}
  ops: {admin: ["*"], per_connect: passkey}
people:
  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
  bindings:
    - {roles: [dev]}
    - {groups: [viewers], roles: [viewer]}
    - {groups: [ops], roles: [ops]}
`

// TestPages: who sees which page and which actions, and what a host's
// name can do to a page.
func TestPages(t *testing.T) {
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	polf := func() *policy.Policy { return pol }
	env := testenv.New(t)
	ppl := people.New(people.Config{Store: env.Store, Policy: polf, Trail: env.Trail})
	login := oidclogin.New(oidclogin.Config{People: ppl, Store: env.Store, Policy: polf, PublicURL: "http://localhost:8080"})
	pk, err := passkey.New(passkey.Config{Store: env.Store, Fleet: env.Fleet, People: ppl, Policy: polf, Trail: env.Trail, Guard: login,
		PublicURL: "http://localhost:8080", WebsocketURL: "ws://localhost:8081"})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	New(Config{Store: env.Store, Audit: env.Audit, Policy: polf, Passkeys: pk, WebsocketURL: "ws://localhost:8081"}).Register(mux)
	now := time.Now().UTC()
	evil := &record.Host{V: record.Version, ID: "h-evil", Hostname: `<script>alert(1)</script>`, Status: api.HostPending, Roles: []string{"demo"}, Created: now}
	if err := store.Create(t.Context(), env.Store.Hosts, evil.ID, evil); err != nil {
		t.Fatal(err)
	}
	cookie := func(subject string, groups ...string) *http.Cookie {
		p, err := ppl.Login(t.Context(), people.Identity{IdP: "okta", Issuer: "https://okta.example.com", SubjectClaim: "sub", Subject: subject, Name: subject, Groups: groups}, record.FlowBrowser, "")
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		pk.StartIdPSession(w, httptest.NewRequest(http.MethodGet, "/", nil), p)
		return w.Result().Cookies()[0]
	}
	get := func(path string, c *http.Cookie) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, path, nil)
		if c != nil {
			r.AddCookie(c)
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		return w
	}
	dev, viewer, ops := cookie("dev"), cookie("viewer", "viewers"), cookie("ops", "ops")

	if w := get("/console/", nil); w.Code != http.StatusSeeOther || !strings.HasPrefix(w.Header().Get("Location"), passkey.PathSignIn) {
		t.Fatalf("no session: %d %s", w.Code, w.Header().Get("Location"))
	}
	if w := get("/console/", dev); w.Code != http.StatusForbidden {
		t.Fatalf("a person without an admin role: %d", w.Code)
	}
	for _, tc := range []struct {
		name    string
		c       *http.Cookie
		actions bool
	}{{"viewer", viewer, false}, {"ops", ops, true}} {
		t.Run(tc.name, func(t *testing.T) {
			w := get("/console/", tc.c)
			body := w.Body.String()
			if w.Code != http.StatusOK || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") || strings.Contains(body, "<script>alert") {
				t.Fatalf("fleet page %d: the host name is not escaped: %s", w.Code, body)
			}
			if got := strings.Contains(body, `data-op="host.approve"`); got != tc.actions {
				t.Fatalf("approve action shown: %v, want %v", got, tc.actions)
			}
			csp := w.Header().Get("Content-Security-Policy")
			if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "connect-src 'self' ws://localhost:8081") || strings.Contains(csp, "unsafe-inline") {
				t.Fatalf("CSP %q", csp)
			}
			for _, path := range []string{"/console/hosts/h-evil", "/console/people", "/console/audit", "/console/alerts"} {
				if w := get(path, tc.c); w.Code != http.StatusOK {
					t.Fatalf("%s: %d %s", path, w.Code, w.Body)
				}
			}
		})
	}
}
