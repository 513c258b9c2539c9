package verifier_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestPeopleLoginOverTLS: the verifier serves people's logins on its HTTP
// listener, over TLS from its NATS CA; a CLI's loopback login ends in a
// grant with the roles the person's groups give, and Close leaves no
// goroutine behind.
func TestPeopleLoginOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a verifier with an embedded nats-server (skipped under -short)")
	}
	op := oidctest.Start(t, oidctest.User{ID: "u1", Username: "dana", Password: "pw", Name: "Dana", Email: "dana@example.com", Groups: []string{"developers"}})
	ignore := goleak.IgnoreCurrent()
	dir := t.TempDir()
	secret := filepath.Join(dir, "okta.secret")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, fmt.Appendf(nil, `
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
people:
  login_ttl: 4h
  idps: [{name: okta, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings: [{groups: [developers], roles: [dev]}]
`, op.Issuer, secret), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := verifier.New(verifier.Config{DataDir: filepath.Join(dir, "data"), NATSListen: "127.0.0.1:-1", PolicyFile: pol,
		HTTPListen: "127.0.0.1:0", HTTPTLS: verifier.TLSOn})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	op.AddClient("tpmauthn", "s3cret", v.HTTPURL()+api.PathOIDCCallback)

	roots := x509.NewCertPool()
	roots.AddCert(v.Keys().NATSCA)
	b := oidctest.Browser(t)
	oidctest.SetTransport(b, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}})
	pkce := oauth2.GenerateVerifier()
	start := v.HTTPURL() + api.PathLogin + "okta?" + url.Values{"key": {strings.Repeat("ab", 32)}, "cb": {"http://127.0.0.1:9/cb"}, "cc": {oauth2.S256ChallengeFromVerifier(pkce)}}.Encode()
	resp, err := b.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	cb := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), "dana", "pw")
	nf := *b
	nf.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err = nf.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("callback: %s", resp.Status)
	}
	// The CLI redeems the code: a program, not the browser (which would
	// send its page's Origin, refused by the token endpoint).
	cli := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err = cli.PostForm(v.HTTPURL()+api.PathCLIToken, url.Values{"grant_type": {api.GrantTypeCode}, "code": {loc.Query().Get("code")}, "code_verifier": {pkce}})
	if err != nil {
		t.Fatal(err)
	}
	var res api.LoginResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || res.Person.ID != record.PersonID("okta", "u1") || !slices.Equal(res.Roles, []string{"dev"}) {
		t.Fatalf("login result %+v %v", res, err)
	}
	if d := time.Until(res.LoginExpires); d < 4*time.Hour-time.Minute || d > 4*time.Hour {
		t.Fatalf("login expires in %v, want the policy's 4h", d)
	}
	if _, p, err := v.People().Redeem(t.Context(), res.AccessToken, &record.GrantBinding{Key: strings.Repeat("ab", 32)}); err != nil || p.Email != "dana@example.com" {
		t.Fatalf("redeem: %v %v", p, err)
	}
	b.CloseIdleConnections()
	cli.CloseIdleConnections()
	v.Close()
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("goroutines left after Close: %v", err)
	}
}
