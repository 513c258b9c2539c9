package e2e

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/browsertest"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/freeport"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
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
	base := fmt.Sprintf("http://localhost:%d", port)
	f := peopleFleetWith(t, op, consolePolicy, func(f *fleettest.Fleet) {
		f.Config.HTTPListen, f.Config.HTTPPublicURL = fmt.Sprintf("127.0.0.1:%d", port), base
		f.Config.WebsocketListen = "127.0.0.1:-1"
	})
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
		browsertest.Until(pageReady("/passkeys", "#register"), 10*time.Second))
}

// pageReady is true once the page at path has loaded and shows sel.
func pageReady(path, sel string) string {
	return fmt.Sprintf(`location.pathname == %q && document.readyState == "complete" && document.querySelector(%q)`, path, sel)
}

// registerPasskey creates a passkey named label on the passkeys page (the
// page reloads when it is done).
func registerPasskey(t *testing.T, p *browsertest.Page, label string) {
	t.Helper()
	n := len(p.Credentials())
	p.MustDo(browsertest.Until(pageReady("/passkeys", "#register"), 10*time.Second),
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById("label").value = %q; document.getElementById("register").click()`, label)),
		browsertest.Until(pageReady("/passkeys", "#passkeys tr[data-id]"), 10*time.Second))
	if len(p.Credentials()) != n+1 {
		t.Fatalf("the authenticator holds %d credentials, want %d", len(p.Credentials()), n+1)
	}
}

// natsJS runs body in the page with m, the browser client module: its
// value is the expression's.
func natsJS(body string) string {
	return `(async () => { const m = await import("/assets/nats-passkey.js"); ` + body + ` })()`
}

// screenshots keeps the main pages' screenshots in docs/screenshots for the
// README (go test ./e2e -run TestBrowserConsole -screenshots); without it
// they go to the test's temp dir.
var screenshots = flag.Bool("screenshots", false, "write the console's screenshots to docs/screenshots")

// timed runs f and returns how long it took.
func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// TestBrowserConsole: people in Chromium, end to end, against a host a
// real agent enrolled on swtpm. Alice (group ops: every admin operation,
// a passkey on every connect) logs in at her IdP, registers a passkey,
// connects over WebSocket with her session key (a publish in her role
// delivered, one outside refused), sees the host, its credential and live
// session, the audit tail live, and revokes the workload's credential from
// the console: its TCP session drops. Bob (group viewers: admin reads)
// sees the fleet without actions, and his admin request is refused. Alice
// signs in again with her passkey alone; Bob removes his passkey, and its
// next connect fails; Alice disables Bob from the console, and his web
// session ends.
func TestBrowserConsole(t *testing.T) {
	op := oidctest.Start(t,
		oidctest.User{ID: "u-alice", Username: "alice", Password: "pw", Name: "Alice Ops", Email: "alice@example.com", Groups: []string{"ops"}},
		oidctest.User{ID: "u-bob", Username: "bob", Password: "pw", Name: "Bob Viewer", Email: "bob@example.com", Groups: []string{"viewers"}})
	f, base := consoleFleet(t, op)
	h := f.NewHost(t)
	shots := t.TempDir()
	if *screenshots {
		shots = filepath.Join("..", "docs", "screenshots")
	}

	// A workload on the host, over TCP, its nonce signed in swtpm; five
	// more connects measure the TCP connect cost.
	var tcp time.Duration
	for range 5 {
		tcp += timed(func() {
			nc, err := h.Connect(t)
			if err != nil {
				t.Fatal(err)
			}
			nc.Close()
		})
	}
	workload, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer workload.Close()
	dropped := make(chan struct{})
	workload.SetClosedHandler(func(*nats.Conn) { close(dropped) })
	var creds []*record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
	var appCred, hostID string
	for _, c := range creds {
		if c.Workload == "app" {
			appCred, hostID = c.ID, c.Host
		}
	}

	b := browsertest.Start(t)
	alice, bob := b.Page(t, browsertest.AuthenticatorOptions{}), b.Page(t, browsertest.AuthenticatorOptions{Synced: true})
	loginTook := timed(func() { idpLogin(t, alice, base, "alice", "pw") })
	registerPasskey(t, alice, "work laptop")
	alice.Screenshot(filepath.Join(shots, "passkeys.png"))
	idpLogin(t, bob, base, "bob", "pw")
	registerPasskey(t, bob, "phone")

	t.Run("webSocketPublish", func(t *testing.T) {
		got := browsertest.MustEval[string](alice, natsJS(`
			const nc = await m.connect();
			window.nc = nc; window.st = [];
			(async () => { for await (const s of nc.status()) window.st.push(s.type + ":" + (s.error ? s.error.message : "")); })();
			const cfg = await m.config();
			const sub = nc.subscribe("dev." + cfg.person + ".>", {max: 1});
			nc.publish("dev." + cfg.person + ".hello", "hi");
			for await (const msg of sub) return msg.subject + "=" + msg.string();`))
		if !strings.HasSuffix(got, ".hello=hi") {
			t.Fatalf("allowed publish: %q", got)
		}
		browsertest.MustEval[bool](alice, `(nc.publish("billing.secret", "x"), nc.flush().then(() => true))`)
		alice.MustDo(browsertest.Until(`window.st.some(s => s.includes("Permissions Violation"))`, 5*time.Second))
	})

	// Connect costs in the same run: the session key (silent), the passkey
	// (a ceremony with the virtual authenticator), a TPM workload over TCP.
	costs := browsertest.MustEval[map[string]float64](alice, natsJS(`
		const t = async (opts) => { let sum = 0; for (let i = 0; i < 5; i++) { const s = performance.now(); const nc = await m.connect(opts); await nc.flush(); sum += performance.now() - s; await nc.close(); } return sum / 5; };
		return {session: await t({}), passkey: await t({mode: "passkey"})};`))
	t.Logf("connect, mean of 5: WebSocket with a session key %.1f ms, WebSocket with a passkey ceremony %.1f ms; TCP with the agent's TPM key (swtpm) %.1f ms",
		costs["session"], costs["passkey"], float64(tcp.Microseconds())/5000)

	loads := map[string]string{}
	load := func(p *browsertest.Page, path, ready string) {
		t.Helper()
		took := timed(func() { p.MustDo(chromedp.Navigate(base+path), chromedp.WaitVisible(ready)) })
		// The browser's own timing of the navigation: the server's answer
		// (request to first byte) and the whole load.
		nav := browsertest.MustEval[map[string]float64](p, `(() => { const n = performance.getEntriesByType("navigation")[0];
			return {server: n.responseStart - n.requestStart, load: n.loadEventEnd - n.startTime}; })()`)
		loads[path] = fmt.Sprintf("server %.1f ms, load event %.1f ms (chromedp round trip %v)", nav["server"], nav["load"], took.Round(time.Millisecond))
	}
	t.Run("fleet", func(t *testing.T) {
		load(alice, "/console/", "#hosts")
		alice.MustDo(browsertest.Until(fmt.Sprintf(`document.querySelector('tr[data-host=%q] .act[data-op="host.revoke"]')`, hostID), time.Second))
		if txt := browsertest.MustEval[string](alice, `document.querySelector("#hosts").innerText`); !strings.Contains(txt, "host-under-test") || !strings.Contains(txt, "active") {
			t.Fatalf("fleet page: %s", txt)
		}
		alice.Screenshot(filepath.Join(shots, "fleet.png"))
		load(alice, "/console/hosts/"+hostID, "#credentials")
		txt := browsertest.MustEval[string](alice, `document.querySelector("#credentials").innerText + document.querySelector("#sessions").innerText`)
		if !strings.Contains(txt, "app") || strings.Contains(txt, "None.") {
			t.Fatalf("host page: credential app and its live session: %s", txt)
		}
		alice.Screenshot(filepath.Join(shots, "host.png"))
	})

	t.Run("liveAudit", func(t *testing.T) {
		load(alice, "/console/audit", "#audit")
		alice.MustDo(browsertest.Until(`document.getElementById("live").textContent != ""`, 10*time.Second))
		start := time.Now()
		nc, err := h.Connect(t) // a connect: an audit event
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
		alice.MustDo(browsertest.Until(`[...document.querySelectorAll("#audit tbody tr")].slice(0, 5).some(r => r.innerText.includes("connect") && r.innerText.includes("app"))`, 3*time.Second))
		if d := time.Since(start); d > time.Second {
			t.Errorf("the connect's audit event appeared after %v (want within 1s)", d)
		} else {
			t.Logf("live audit: a connect's event on the page %v after the connect began", d)
		}
		alice.Screenshot(filepath.Join(shots, "audit.png"))
	})

	t.Run("nonAdmin", func(t *testing.T) {
		load(bob, "/console/", "#hosts")
		if n := browsertest.MustEval[int](bob, `document.querySelectorAll("button.act").length`); n != 0 {
			t.Fatalf("bob (reads only) sees %d admin actions", n)
		}
		// Posting one directly: his session's permissions and the operator
		// API's gate both refuse it, whatever page sends it.
		res := browsertest.MustEval[string](bob, natsJS(fmt.Sprintf(`
			const nc = await m.connect({mode: "passkey"});
			try { const r = await nc.request("tpmauthn.admin.credential.revoke", JSON.stringify({id: %q}), {timeout: 2000});
			  return "answered " + (r.headers ? r.headers.get("Nats-Service-Error-Code") : "ok"); }
			catch (e) { return "refused " + e.message; } finally { await nc.close(); }`, appCred)))
		if !strings.HasPrefix(res, "refused") && !strings.Contains(res, api.CodeForbidden) {
			t.Fatalf("bob's direct revoke: %s", res)
		}
		t.Logf("bob's direct revoke: %s", res)
		if c := credential(t, f, appCred); c.Status != api.CredentialActive {
			t.Fatalf("after bob's refused revoke the credential is %s", c.Status)
		}
	})

	t.Run("adminRevokes", func(t *testing.T) {
		load(alice, "/console/hosts/"+hostID, "#credentials")
		sel := fmt.Sprintf(`button.act[data-op="credential.revoke"][data-id=%q]`, appCred)
		start := time.Now()
		// window.beforeReload marks this page: the page reloads itself
		// 300 ms after a done action, and a navigation of the next subtest
		// in that window would lose to the reload (it did, twice).
		alice.MustDo(chromedp.Evaluate[chromedp.Void](`window.beforeReload = true; document.querySelector(` + strconv.Quote(sel) + `).click()`))
		select {
		case <-dropped:
			t.Logf("revoked from the console: the workload's TCP session dropped %v after the click (passkey ceremony included)", time.Since(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("the workload's session is still up after the console's revoke: %s", browsertest.MustEval[string](alice, `document.getElementById("status").textContent`))
		}
		if c := credential(t, f, appCred); c.Status != api.CredentialRevoked {
			t.Fatalf("credential %s", c.Status)
		}
		// The operator API audits the revoke with the person and the
		// passkey session that asked (its event may trail the kick).
		deadline := time.Now().Add(3 * time.Second)
		for !revokeAudited(t, f, appCred) {
			if time.Now().After(deadline) {
				t.Fatal("the console's revoke is not audited with the person")
			}
			time.Sleep(50 * time.Millisecond)
		}
		alice.MustDo(browsertest.Until(`!window.beforeReload && document.readyState == "complete"`, 5*time.Second))
	})

	t.Run("websocketOrigin", func(t *testing.T) {
		// Another site's page cannot even open the WebSocket (nor would a
		// cookie let it in: the CONNECT needs a signed nonce).
		for origin, want := range map[string]int{base: http.StatusSwitchingProtocols, "https://evil.example.com": http.StatusForbidden} {
			if got := wsHandshake(t, f.Verifier.WebsocketURL(), origin); got != want {
				t.Errorf("WebSocket handshake from %s: HTTP %d, want %d", origin, got, want)
			}
		}
	})

	t.Run("pages", func(t *testing.T) {
		load(alice, "/console/people", "#people")
		alice.Screenshot(filepath.Join(shots, "people.png"))
		load(alice, "/console/alerts", "#audit")
		load(alice, "/passkeys", "#passkeys")
		hd := browsertest.MustEval[string](alice, `fetch("/console/").then(r => r.headers.get("content-security-policy"))`)
		if !strings.Contains(hd, "frame-ancestors 'none'") || !strings.Contains(hd, "script-src 'self'") {
			t.Fatalf("CSP %q", hd)
		}
	})

	t.Run("passkeySignIn", func(t *testing.T) {
		alice.MustDo(chromedp.Evaluate[chromedp.Void](`document.querySelector("header form button").click()`),
			browsertest.Until(`location.pathname == "/signin" && document.readyState == "complete" && document.getElementById("signin")`, 10*time.Second))
		took := timed(func() {
			alice.MustDo(chromedp.Evaluate[chromedp.Void](`document.getElementById("signin").click()`),
				browsertest.Until(`location.pathname == "/passkeys" && document.getElementById("register")`, 10*time.Second))
		})
		if txt := browsertest.MustEval[string](alice, `document.querySelector("main p").innerText`); !strings.Contains(txt, "with a passkey") {
			t.Fatalf("after the passkey sign-in: %s", txt)
		}
		t.Logf("passkey-only sign-in: %v", took)
	})

	t.Run("removedPasskey", func(t *testing.T) {
		// Bob's page keeps a connection with his session key while he
		// removes the passkey that certified it (the form, posted from the
		// page so that the connection lives on).
		bob.MustDo(chromedp.Navigate(base+"/passkeys"), chromedp.WaitVisible("button.remove"))
		browsertest.MustEval[bool](bob, natsJS(`window.bnc = await m.connect({nats: {maxReconnectAttempts: 2, reconnectTimeWait: 100}}); window.bclosed = false; window.bnc.closed().then(() => { window.bclosed = true; }); return true;`))
		status := browsertest.MustEval[int](bob, `(async () => { const f = document.querySelector("form[action='/passkeys/remove']");
			const r = await fetch(f.action, {method: "POST", body: new URLSearchParams(new FormData(f))}); return r.status; })()`)
		if status != 200 {
			t.Fatalf("remove: HTTP %d", status)
		}
		// Its session key's connection is kicked (the key is revoked with
		// its certifier) and its reconnects refused; the passkey's next
		// connect is refused.
		bob.MustDo(browsertest.Until(`window.bclosed`, 5*time.Second))
		res := browsertest.MustEval[string](bob, natsJS(`
			try { const nc = await m.connect({mode: "passkey", nats: {maxReconnectAttempts: 0, timeout: 5000}}); await nc.close(); return "connected"; }
			catch (e) { return "refused " + e.message; }`))
		if !strings.HasPrefix(res, "refused") {
			t.Fatalf("a removed passkey's connect: %s", res)
		}
	})

	t.Run("disablePerson", func(t *testing.T) {
		// Alice offboards Bob from the console (a passkey ceremony again):
		// his web session ends at once.
		bobID := browsertest.MustEval[string](bob, natsJS(`return (await m.config()).person;`))
		load(alice, "/console/people", "#people")
		alice.MustDo(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector('button.act[data-op="person.disable"][data-id=%q]').click()`, bobID)),
			browsertest.Until(fmt.Sprintf(`document.readyState == "complete" && document.querySelector('tr[data-person=%q]').innerText.includes("disabled")`, bobID), 10*time.Second))
		if code := browsertest.MustEval[int](bob, `fetch("/nats/config").then(r => r.status)`); code != http.StatusUnauthorized {
			t.Fatalf("a disabled person's web session: HTTP %d", code)
		}
	})

	for _, path := range []string{"/console/", "/console/hosts/" + hostID, "/console/people", "/console/audit", "/console/alerts", "/passkeys"} {
		t.Logf("page %s: %s", path, loads[path])
	}
	t.Logf("IdP login in Chromium: %v", loginTook)
}

// wsHandshake opens a WebSocket upgrade to ws with Origin origin and
// returns the HTTP status.
func wsHandshake(t *testing.T, ws, origin string) int {
	t.Helper()
	u, err := url.Parse(ws)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+u.Port()+"/", nil)
	for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": origin} {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// revokeAudited reports whether the trail holds credential id's revoke,
// with the person and their session as its actor.
func revokeAudited(t *testing.T, f *fleettest.Fleet, id string) bool {
	for _, e := range f.AuditEvents(t) {
		if e.Kind == "revoke" && e.Credential == id && e.Person != "" && strings.Contains(e.Actor, "person:") {
			return true
		}
	}
	return false
}

// credential reads a credential through the operator API.
func credential(t *testing.T, f *fleettest.Fleet, id string) *record.Credential {
	t.Helper()
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: id}, &c)
	return &c
}
