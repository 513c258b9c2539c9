// Package browsertest drives headless Chromium for tests (chromedp over
// the DevTools protocol): one browser per test, each page a tab of its own
// browser context (its own cookies and IndexedDB) with a CDP virtual
// authenticator (internal transport, resident keys, user verification), so
// that WebAuthn ceremonies run as they do with a platform authenticator.
//
// Tests that need it call Require: it skips without Chromium, and fails
// under CI=true (.ci/run installs Debian's chromium).
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
)

// Binaries are where Chromium is looked for: Debian's real binary first
// (its /usr/bin/chromium is a shell wrapper that chromedp's flags upset).
var Binaries = []string{"/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "headless-shell"}

// InstallHint says how to get Chromium.
const InstallHint = "apt-get install -y chromium"

// Require returns Chromium's path, or skips t (fails it under CI=true).
func Require(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test runs Chromium")
	}
	for _, b := range Binaries {
		if p, err := exec.LookPath(b); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("Chromium not found (%v): this test drives a real browser; install it with: %s", Binaries, InstallHint)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// Browser is a running headless Chromium.
type Browser struct {
	ctx context.Context // the browser's
}

// Start runs Chromium until the test ends.
func Start(t testing.TB) *Browser {
	t.Helper()
	path := Require(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 800))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	// The first Run starts the browser.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelA()
		t.Fatalf("start %s: %v", path, err)
	}
	t.Cleanup(func() {
		cancel()
		cancelA()
	})
	return &Browser{ctx: ctx}
}

// Page is a tab in a browser context of its own, with a virtual
// authenticator.
type Page struct {
	Ctx context.Context
	// Authenticator is its virtual authenticator's ID.
	Authenticator webauthn.AuthenticatorID
	t             testing.TB
}

// AuthenticatorOptions are a page's virtual authenticator's (Page).
type AuthenticatorOptions struct {
	// Synced makes its credentials backup eligible and backed up (BE, BS),
	// as a passkey provider's.
	Synced bool
}

// Page opens a tab with a fresh virtual authenticator.
func (b *Browser) Page(t testing.TB, o AuthenticatorOptions) *Page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	p := &Page{Ctx: ctx, t: t}
	if _, err := chromedp.Call(ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		t.Fatalf("WebAuthn.enable: %v", err)
	}
	// AutomaticPresenceSimulation has no omitempty: Go's false would turn
	// CDP's default true off, and every ceremony would time out.
	res, err := chromedp.Call(ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{Options: &webauthn.VirtualAuthenticatorOptions{
		Protocol: webauthn.AuthenticatorProtocolCtap2, Ctap2version: webauthn.Ctap2versionCtap21, Transport: webauthn.AuthenticatorTransportInternal,
		HasResidentKey: true, HasUserVerification: true, IsUserVerified: true, AutomaticPresenceSimulation: true,
		DefaultBackupEligibility: o.Synced, DefaultBackupState: o.Synced,
	}})
	if err != nil {
		t.Fatalf("WebAuthn.addVirtualAuthenticator: %v", err)
	}
	p.Authenticator = res.AuthenticatorID
	return p
}

// Do runs actions on the page.
func (p *Page) Do(actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(p.Ctx, 30*time.Second)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

// MustDo runs actions on the page or fails the test.
func (p *Page) MustDo(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := p.Do(actions...); err != nil {
		text, _ := Eval[string](p, "document.body ? document.body.innerText.slice(0, 800) : ''")
		p.t.Fatalf("%s: %v\npage: %s", p.URL(), err, text)
	}
}

// URL is the page's location.
func (p *Page) URL() string {
	u, _ := Eval[string](p, "location.href")
	return u
}

// Eval evaluates a JavaScript expression on the page, awaiting a promise,
// and returns its value.
func Eval[T any](p *Page, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(p.Ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, func(e *runtime.EvaluateParams) {
		t := true
		e.AwaitPromise = &t
	}))
	var ex *chromedp.ExceptionError
	if errors.As(err, &ex) && ex.ExceptionDetails.Exception != nil {
		return v, fmt.Errorf("%s: %s", ex.ExceptionDetails.Text, ex.ExceptionDetails.Exception.Description)
	}
	return v, err
}

// MustEval is Eval or fails the test.
func MustEval[T any](p *Page, expr string) T {
	p.t.Helper()
	v, err := Eval[T](p, expr)
	if err != nil {
		p.t.Fatalf("%s: eval %q: %v", p.URL(), expr, err)
	}
	return v
}

// Credentials are the virtual authenticator's credentials.
func (p *Page) Credentials() []*webauthn.Credential {
	p.t.Helper()
	res, err := chromedp.Call(p.Ctx, webauthn.GetCredentials, webauthn.GetCredentialsParams{AuthenticatorID: p.Authenticator})
	if err != nil {
		p.t.Fatalf("WebAuthn.getCredentials: %v", err)
	}
	return res.Credentials
}

// Screenshot saves the page's viewport as a PNG at path (directories made).
func (p *Page) Screenshot(path string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o755)
	}
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		p.t.Errorf("screenshot %s: %v", path, err)
	}
}

// Until waits (at most timeout) until the expression is truthy on the
// page, across navigations (each check is a fresh evaluation).
func Until(expr string, timeout time.Duration) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		deadline := time.Now().Add(timeout)
		var last error
		for time.Now().Before(deadline) {
			ok, err := chromedp.Evaluate[bool]("!!("+expr+")")(ctx, t)
			if err == nil && ok {
				return chromedp.Void{}, nil
			}
			last = err
			select {
			case <-ctx.Done():
				return chromedp.Void{}, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return chromedp.Void{}, fmt.Errorf("%q not true within %v (last error %v)", expr, timeout, last)
	}
}
