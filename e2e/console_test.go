package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/browsertest"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/freeport"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
)

// The tests of issue 16: people in a real browser (headless Chromium with
// a virtual authenticator) log in at their IdP, register passkeys, sign in
// with a passkey alone, speak NATS over WebSocket with the passkey (or the
// session key it certified) signing the nonce, and operate the fleet from
// the console.

// consolePolicy: role dev for everyone at okta, viewer (admin reads) for
// group viewers, ops (every admin operation, a passkey on every connect)
// for group ops.
const consolePolicy = `session_ttl: 1m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>"]}
  dev:
    publish: {allow: ["dev.{{person}}.>"]}
    subscribe: {allow: ["dev.>"]}
  viewer: {admin: [read]}
  ops: {admin: ["*"], per_connect: passkey}
bindings:
  - host_roles: [demo]
    roles: [demo]
people:
  login_ttl: 1h
  idps: [{name: okta, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings:
    - {roles: [dev]}
    - {groups: [ops], roles: [ops, viewer]}
    - {groups: [viewers], roles: [viewer]}
`

// consoleFleet is a fleet whose verifier serves its pages at
// http://localhost:PORT (passkeys need a host name) and NATS over
// WebSocket.
func consoleFleet(t *testing.T, op *oidctest.OP) (*fleettest.Fleet, string) {
	t.Helper()
	port, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secret, pol := filepath.Join(dir, "okta.secret"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, fmt.Appendf(nil, consolePolicy, op.Issuer, secret), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://localhost:%d", port)
	f := fleettest.New(t, func(f *fleettest.Fleet) {
		f.Config.PolicyFile, f.Config.HTTPListen, f.Config.HTTPPublicURL = pol, fmt.Sprintf("127.0.0.1:%d", port), base
		f.Config.WebsocketListen = "127.0.0.1:-1"
	})
	op.AddClient("tpmauthn", "s3cret", base+api.PathOIDCCallback)
	if f.Verifier.WebsocketURL() == "" {
		t.Fatal("no WebSocket listener")
	}
	return f, base
}

// idpLogin logs the page in at the IdP through the verifier; it ends on
// the passkeys page.
func idpLogin(t *testing.T, p *browsertest.Page, base, username, password string) {
	t.Helper()
	p.MustDo(chromedp.Navigate(base+api.PathLogin+"okta"),
		chromedp.WaitVisible("#username"),
		chromedp.SendKeys("#username", username), chromedp.SendKeys("#password", password),
		chromedp.Submit("#password"),
		chromedp.WaitVisible("#register"))
}

// registerPasskey creates a passkey named label on the passkeys page.
func registerPasskey(t *testing.T, p *browsertest.Page, label string) {
	t.Helper()
	n := len(p.Credentials())
	p.MustDo(chromedp.SendKeys("#label", label), chromedp.Click("#register"),
		browsertest.Until(`document.querySelectorAll("#passkeys tr[data-id]").length > 0 && document.readyState == "complete"`, 10*time.Second))
	if len(p.Credentials()) != n+1 {
		t.Fatalf("the authenticator holds %d credentials, want %d", len(p.Credentials()), n+1)
	}
}

// natsJS runs body in the page with m, the browser client module: its
// value is the expression's.
func natsJS(body string) string {
	return `(async () => { const m = await import("/assets/nats-passkey.js"); ` + body + ` })()`
}

func TestBrowserPasskeyNATS(t *testing.T) {
	op := oidctest.Start(t,
		oidctest.User{ID: "u-alice", Username: "alice", Password: "pw", Name: "Alice Ops", Email: "alice@example.com", Groups: []string{"ops"}})
	f, base := consoleFleet(t, op)
	b := browsertest.Start(t)
	alice := b.Page(t, browsertest.AuthenticatorOptions{})
	start := time.Now()
	idpLogin(t, alice, base, "alice", "pw")
	t.Logf("IdP login in Chromium: %v", time.Since(start))
	registerPasskey(t, alice, "laptop")

	// The default: a session key certified once, then silent connects.
	start = time.Now()
	got := browsertest.MustEval[string](alice, natsJS(`
		const nc = await m.connect();
		window.nc = nc; window.st = [];
		(async () => { for await (const s of nc.status()) window.st.push(s.type + ":" + (s.error ? s.error.message : "")); })();
		const cfg = await m.config();
		const sub = nc.subscribe("dev." + cfg.person + ".>", {max: 1});
		nc.publish("dev." + cfg.person + ".hello", "hi");
		for await (const msg of sub) return msg.subject + "=" + msg.string();`))
	t.Logf("session-key connect, publish, receive: %v", time.Since(start))
	if !strings.HasSuffix(got, ".hello=hi") {
		t.Fatalf("allowed publish: %q", got)
	}
	// Out of role: refused by the server.
	browsertest.MustEval[bool](alice, `(nc.publish("billing.secret", "x"), nc.flush().then(() => true))`)
	alice.MustDo(browsertest.Until(`window.st.some(s => s.includes("Permissions Violation"))`, 5*time.Second))
	_ = f
}
