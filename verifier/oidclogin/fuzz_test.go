package oidclogin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
)

// FuzzLoginRequests: every endpoint takes what any client sends. A refusal
// is a 4xx (or 503 when the store is down), never a 500; a token endpoint
// answers 200 only with a grant, which no made-up request can have; a
// callback never logs anyone in without a state this fuzzer cannot know.
func FuzzLoginRequests(f *testing.F) {
	fx := newFixture(f)
	for _, seed := range []struct {
		method, target, body string
	}{
		{"GET", api.PathLogin + "okta", ""},
		{"GET", api.PathLogin + "okta?cb=http%3A%2F%2F127.0.0.1%3A9%2Fcb&cc=" + strings.Repeat("A", 43) + "&key=" + testKeyBinding, ""},
		{"GET", api.PathLogin + "okta?cb=http%3A%2F%2F127.0.0.1%3A9%2Fcb&cc=" + strings.Repeat("A", 43) + "&host=h-01&uid=1003", ""},
		{"POST", api.PathLogin + "okta", "cb=http%3A%2F%2F127.0.0.1%3A9%2Fcb&csrf=x"},
		{"GET", api.PathOIDCCallback + "?state=x&code=y", ""},
		{"GET", api.PathOIDCCallback + "?error=%1b%5b31m", ""},
		{"POST", api.PathCLIToken, "grant_type=authorization_code&code=x&code_verifier=y"},
		{"POST", api.PathDeviceToken, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=x"},
		{"POST", api.PathDevice, "user_code=BCDF-GHJK&idp=okta&csrf=z"},
		{"GET", api.PathDevice + "?user_code=%3Cscript%3E", ""},
		{"GET", api.PathLogin + "..%2F..%2Fetc", ""},
	} {
		f.Add(seed.method, seed.target, seed.body)
	}
	f.Fuzz(func(t *testing.T, method, target, body string) {
		if method != "GET" && method != "POST" {
			return
		}
		req, err := http.NewRequest(method, "http://verifier.test"+target, strings.NewReader(body))
		if err != nil || !strings.HasPrefix(target, "/") {
			return // not a request a server could receive
		}
		req.RemoteAddr = "192.0.2.1:1234"
		u := req.URL
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		fx.mux.ServeHTTP(rec, req)
		code := rec.Code
		if code >= 500 && code != http.StatusServiceUnavailable && code != http.StatusBadGateway {
			t.Fatalf("%s %s %q: %d %s", method, target, body, code, rec.Body)
		}
		isToken := u.Path == api.PathCLIToken || u.Path == api.PathDeviceToken
		if (isToken || u.Path == api.PathOIDCCallback) && code == http.StatusOK {
			t.Fatalf("%s %s %q: 200 %s", method, target, body, rec.Body)
		}
		if strings.Contains(rec.Body.String(), "<script>") {
			t.Fatalf("unescaped markup in %s", rec.Body)
		}
	})
}
