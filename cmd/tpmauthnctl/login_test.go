package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// peopleVerifier runs a verifier that logs people in at one in-process
// IdP, its HTTP listener on TLS from its NATS CA; it returns the verifier's
// data directory (tpmauthnctl trusts that CA through it) and login URL.
func peopleVerifier(t *testing.T) (*oidctest.OP, string, string) {
	t.Helper()
	op := oidctest.Start(t, oidctest.User{ID: "u-erin", Username: "erin", Password: "pw", Name: "Erin \x1b[31mRed", Email: "erin@example.com", Groups: []string{"developers"}})
	dir := t.TempDir()
	secret, pol := filepath.Join(dir, "idp.secret"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, fmt.Appendf(nil, `
roles: {dev: {publish: {allow: ["dev.{{person}}.>"]}}}
people:
  idps: [{name: corp, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings: [{groups: [developers], roles: [dev], require: {assurance: hardware}}]
`, op.Issuer, secret), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	v := fleettest.StartVerifier(t, verifier.Config{DataDir: data, NATSListen: "127.0.0.1:-1", PolicyFile: pol,
		HTTPListen: "127.0.0.1:0", HTTPTLS: verifier.TLSOn, DevicePoll: time.Second})
	op.AddClient("tpmauthn", "s", v.HTTPURL()+api.PathOIDCCallback)
	return op, data, v.HTTPURL()
}

// trustingBrowser is a browser that knows the verifier's NATS CA (as an
// operator's browser would know the CA of --http-tls-cert).
func trustingBrowser(t *testing.T, data string) *http.Client {
	t.Helper()
	a := &app{}
	a.s.DataDir = data
	c, err := a.loginClient("")
	if err != nil {
		t.Fatal(err)
	}
	b := oidctest.Browser(t)
	b.Transport = c.Transport
	return b
}

func checkLoginFile(t *testing.T, out string) api.LoginResult {
	t.Helper()
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("login file: %v %v, want mode 0600", fi, err)
	}
	b, _ := os.ReadFile(out)
	var res api.LoginResult
	if err := json.Unmarshal(b, &res); err != nil || res.AccessToken == "" || res.Person.ID != record.PersonID("corp", "u-erin") {
		t.Fatalf("login file %s: %v", b, err)
	}
	return res
}

func TestLoginLoopback(t *testing.T) {
	op, data, _ := peopleVerifier(t)
	b := trustingBrowser(t, data)
	// The "browser" the command opens: the person logs in at the IdP, and
	// the verifier sends the browser on to the command's loopback address.
	restore := openBrowser
	t.Cleanup(func() { openBrowser = restore })
	var opened string
	openBrowser = func(u string) error {
		opened = u
		resp, err := b.Get(u)
		if err != nil {
			return err
		}
		cb := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), "erin", "pw")
		resp, err = b.Get(cb.String())
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Logged in") {
			return fmt.Errorf("loopback answered %s: %s", resp.Status, body)
		}
		return nil
	}
	out := filepath.Join(t.TempDir(), "cfg", "login.json")
	// --data-dir alone: the URL is the one the verifier recorded there.
	stdout, err := ctl(t, "--data-dir", data, "login", "--idp", "corp", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(opened)
	if u.Path != api.PathLogin+"corp" || !strings.HasPrefix(u.Query().Get("cb"), "http://127.0.0.1:") || len(u.Query().Get("cc")) != 43 {
		t.Fatalf("opened %s", opened)
	}
	res := checkLoginFile(t, out)
	if len(res.Roles) != 1 || res.Roles[0] != "dev" || len(res.SoftwareRoles) != 0 {
		t.Fatalf("roles %v / %v", res.Roles, res.SoftwareRoles)
	}
	// The IdP chose the name: its escape sequence reaches the terminal
	// escaped.
	if strings.Contains(stdout, "\x1b") || !strings.Contains(stdout, `Erin \x1b[31mRed`) || strings.Contains(stdout, res.AccessToken) {
		t.Fatalf("stdout %q", stdout)
	}
}

var deviceLine = regexp.MustCompile(`\(or open (\S+)\)`)

func TestLoginDevice(t *testing.T) {
	op, data, base := peopleVerifier(t)
	out := filepath.Join(t.TempDir(), "login.json")
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		cmd := newRootCmd()
		cmd.SetArgs([]string{"--data-dir", data, "login", "--device", "--url", base, "--out", out, "--wait", "30s"})
		cmd.SetOut(new(bytes.Buffer))
		cmd.SetErr(pw)
		done <- cmd.Execute()
		pw.Close()
	}()
	var verify string
	sc := bufio.NewScanner(pr)
	for verify == "" && sc.Scan() {
		if m := deviceLine.FindStringSubmatch(sc.Text()); m != nil {
			verify = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if verify == "" {
		t.Fatalf("no verification URL printed: %v", <-done)
	}
	// The person, on another device: the /device page, the IdP's login.
	b := trustingBrowser(t, data)
	resp, err := b.Get(verify)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	form := url.Values{"user_code": {regexp.MustCompile(`name="user_code" value="([^"]+)"`).FindStringSubmatch(string(page))[1]},
		"csrf": {regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(page))[1]}, "idp": {"corp"}}
	resp, err = b.PostForm(base+api.PathDevice, form)
	if err != nil {
		t.Fatal(err)
	}
	cb := op.LogIn(t, b, resp, "erin", "pw")
	if resp, err = b.Get(cb.String()); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("approval: %v %v", resp, err)
	}
	resp.Body.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkLoginFile(t, out)
}

func TestLoginRefusesCleartextURL(t *testing.T) {
	for _, u := range []string{"http://login.example.com", "ftp://x", ""} {
		if _, err := ctl(t, "login", "--url", u, "--out", filepath.Join(t.TempDir(), "x")); err == nil {
			t.Errorf("--url %q accepted", u)
		}
	}
}
