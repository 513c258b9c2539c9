package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/personkey"
	"github.com/tpmauthn/tpmauthn/personkey/natskey"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// peopleVerifier runs a verifier that logs people in at one in-process
// IdP, its HTTP listener on TLS from its NATS CA; it returns the verifier's
// data directory (tpmauthnctl trusts that CA through it) and login URL.
func peopleVerifier(t *testing.T) (*oidctest.OP, string, string) {
	t.Helper()
	// No agent here: logins keep a software key, in a config dir of the
	// test's own.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	op := oidctest.Start(t, oidctest.User{ID: "u-erin", Username: "erin", Password: "pw", Name: "Erin \x1b[31mRed", Email: "erin@example.com", Groups: []string{"developers"}})
	dir := t.TempDir()
	secret, pol := filepath.Join(dir, "idp.secret"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, fmt.Appendf(nil, `
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
  viewer: {publish: {allow: ["view.{{person}}.>"]}}
people:
  idps: [{name: corp, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings:
    - {groups: [developers], roles: [dev], require: {assurance: hardware}}
    - {groups: [developers], roles: [viewer]}
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
	oidctest.SetTransport(b, c.Transport)
	return b
}

func checkLoginFile(t *testing.T, out string) api.LoginResult {
	t.Helper()
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("login file: %v %v, want mode 0600", fi, err)
	}
	b, _ := os.ReadFile(out)
	var res savedLogin
	if err := json.Unmarshal(b, &res); err != nil || res.AccessToken != "" || res.Person.ID != record.PersonID("corp", "u-erin") {
		t.Fatalf("login file %s: %v (want the grant gone: it was redeemed for the key)", b, err)
	}
	if res.Key == nil || res.Key.Path == "" || res.Key.Person.ID != res.Person.ID {
		t.Fatalf("login file %s: no software key", b)
	}
	if fi, err := os.Stat(res.Key.Path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("software key file: %v %v, want mode 0600", fi, err)
	}
	return res.LoginResult
}

// checkSoftwareKey connects with the login's software key: the role that
// requires hardware is not granted, the other is.
func checkSoftwareKey(t *testing.T) {
	t.Helper()
	path, err := personkey.DefaultPath()
	if err != nil {
		t.Fatal(err)
	}
	k, err := personkey.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(k.NATSURL(), append(natskey.Options(k), nats.MaxReconnects(0))...)
	if err != nil {
		t.Fatalf("connect with the software key: %v", err)
	}
	defer nc.Close()
	errs := make(chan error, 2)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	for _, subj := range []string{"view." + k.Person() + ".x", "dev." + k.Person() + ".x"} {
		_ = nc.Publish(subj, nil)
	}
	_ = nc.Flush()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), `"dev.`) {
			t.Fatalf("refusal %v, want the hardware-only dev subject", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a software key published under a role that requires hardware")
	}
	select {
	case err := <-errs:
		t.Fatalf("second refusal %v: the viewer subject should be allowed", err)
	case <-time.After(200 * time.Millisecond):
	}
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
	if !slices.Equal(res.Roles, []string{"dev", "viewer"}) || !slices.Equal(res.SoftwareRoles, []string{"viewer"}) {
		t.Fatalf("roles %v / %v", res.Roles, res.SoftwareRoles)
	}
	checkSoftwareKey(t)
	// The IdP chose the name: its escape sequence reaches the terminal
	// escaped.
	if strings.Contains(stdout, "\x1b") || !strings.Contains(stdout, `Erin \x1b[31mRed`) || !strings.Contains(stdout, "Software key ") {
		t.Fatalf("stdout %q", stdout)
	}
}

var deviceLine = regexp.MustCompile(`^  (https?://\S+)$`)
var codeLine = regexp.MustCompile(`^and enter the code (\S+)$`)

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
	var verify, userCode string
	sc := bufio.NewScanner(pr)
	for userCode == "" && sc.Scan() {
		if m := deviceLine.FindStringSubmatch(sc.Text()); m != nil {
			verify = m[1]
		}
		if m := codeLine.FindStringSubmatch(sc.Text()); m != nil {
			userCode = m[1]
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
	// The person types the code; the next page says which device asked
	// (its address, how long ago) and offers the IdPs.
	resp = oidctest.Submit(t, b, resp, url.Values{"user_code": {userCode}})
	resp = oidctest.Submit(t, b, resp, url.Values{"idp": {"corp"}})
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

// M1: another local user who read the login URL sends the command's
// loopback listener an error (or their own login's code) first; the
// command listens only to its own uid's connections, and the person's
// login goes on. Needs root, to act as another user (uid 65534).
func TestLoginLoopbackIgnoresOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid (TestPeerUIDFromProc covers the check without it)")
	}
	op, data, _ := peopleVerifier(t)
	b := trustingBrowser(t, data)
	restore := openBrowser
	t.Cleanup(func() { openBrowser = restore })
	openBrowser = func(u string) error {
		lu, _ := url.Parse(u)
		cb := lu.Query().Get("cb")
		for _, q := range []string{"error=access_denied", "code=" + strings.Repeat("x", 43)} {
			cmd := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", cb+"?"+q)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			out, err := cmd.Output()
			if err != nil || string(out) != "403" {
				return fmt.Errorf("another user's callback answered %q (%v), want 403", out, err)
			}
		}
		resp, err := b.Get(u)
		if err != nil {
			return err
		}
		cbURL := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), "erin", "pw")
		resp, err = b.Get(cbURL.String())
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	out := filepath.Join(t.TempDir(), "login.json")
	if _, err := ctl(t, "--data-dir", data, "login", "--idp", "corp", "--out", out); err != nil {
		t.Fatal(err)
	}
	checkLoginFile(t, out)
}

// M1: the owner of the loopback callback's connection comes from
// /proc/net/tcp{,6}; another uid, or a connection not found, is refused.
func TestPeerUIDFromProc(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local, remote := netip.MustParseAddrPort(ln.Addr().String()), netip.MustParseAddrPort(c.LocalAddr().String())
	// A real connection of this process: its uid.
	if err := checkPeerUID(local, remote, os.Getuid()); err != nil {
		t.Fatalf("own connection: %v", err)
	}
	// The same connection, owned by another uid.
	if err := checkPeerUID(local, remote, os.Getuid()+1); err == nil {
		t.Fatal("accepted as another uid's")
	}
	// A /proc where the peer's socket is another user's (IPv4 in tcp, and
	// IPv4-mapped in tcp6), and one where it is missing.
	for _, tc := range []struct {
		name, tcp, tcp6 string
		want            int
	}{
		{"tcp", "  1: " + procAddr(remote) + " " + procAddr(local) + " 01 00000000:00000000 00:00000000 00000000  4242 0 1 1\n", "", 4242},
		{"tcp6", "", "  1: " + procAddr6(netip.AddrPortFrom(netip.AddrFrom16(remote.Addr().As16()), remote.Port())) + " " +
			procAddr6(netip.AddrPortFrom(netip.AddrFrom16(local.Addr().As16()), local.Port())) + " 01 00000000:00000000 00:00000000 00000000  4243 0 1 1\n", 4243},
		{"missing", "", "", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.MkdirAll(filepath.Join(dir, "net"), 0o755)
			hdr := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
			os.WriteFile(filepath.Join(dir, "net", "tcp"), []byte(hdr+tc.tcp), 0o644)
			os.WriteFile(filepath.Join(dir, "net", "tcp6"), []byte(hdr+tc.tcp6), 0o644)
			uid, err := tcpOwner(dir, local, remote)
			if tc.want < 0 {
				if !errors.Is(err, errPeerUnknown) {
					t.Fatalf("uid %d, %v: want errPeerUnknown", uid, err)
				}
				return
			}
			if err != nil || uid != tc.want {
				t.Fatalf("uid %d, %v: want %d", uid, err, tc.want)
			}
		})
	}
}

// M1: who logged in is printed before the login is kept: a save that
// fails still shows it.
func TestLoginPrintsWhoBeforeSaving(t *testing.T) {
	op, data, _ := peopleVerifier(t)
	b := trustingBrowser(t, data)
	restore := openBrowser
	t.Cleanup(func() { openBrowser = restore })
	openBrowser = func(u string) error {
		resp, err := b.Get(u)
		if err != nil {
			return err
		}
		cb := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), "erin", "pw")
		resp, err = b.Get(cb.String())
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, err := ctl(t, "--data-dir", data, "login", "--idp", "corp", "--out", filepath.Join(file, "login.json"))
	if err == nil {
		t.Fatal("saved under a file")
	}
	if !strings.Contains(stdout, "Logged in as Erin") {
		t.Fatalf("stdout %q: who logged in is not shown", stdout)
	}
}
