// Command demo-idp is a stand-in identity provider for `make demo`: an
// OpenID provider (zitadel/oidc's, the one the tests use) with demo people,
// and a scripted browser that logs one of them in. Not for anything real:
// its users, passwords and keys live in memory.
//
//	demo-idp serve --issuer-file F --client-secret S --redirect-uri URI
//	BROWSER="demo-idp browse --issuer URL --user dana --password pw" tpmauthnctl login ...
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/oidctest"
)

// People of the demo: dana develops, olga operates.
var people = []oidctest.User{
	{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana Scully", Email: "dana.scully@example.com", Groups: []string{"developers"}},
	{ID: "u-olga", Username: "olga", Password: "pw", Name: "Olga Ops", Email: "olga@example.com", Groups: []string{"ops"}},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: demo-idp serve|browse [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "browse":
		err = browse(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: serve or browse", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo-idp:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	issuerFile := fs.String("issuer-file", "", "write the issuer URL here once serving")
	secret := fs.String("client-secret", "", "the verifier's client secret (client ID tpmauthn)")
	redirect := fs.String("redirect-uri", "", "the verifier's redirect URI (PUBLIC_URL/oidc/callback)")
	_ = fs.Parse(args)
	if *issuerFile == "" || *secret == "" || *redirect == "" {
		return errors.New("serve needs --issuer-file, --client-secret and --redirect-uri")
	}
	t := &tb{}
	defer t.cleanup()
	op := oidctest.Start(t, people...)
	op.AddClient("tpmauthn", *secret, *redirect)
	if err := os.WriteFile(*issuerFile, []byte(op.Issuer+"\n"), 0o644); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

// browse is the person at their browser: open the verifier's login URL,
// confirm, log in at the provider, and follow the redirects back to the
// verifier and on to tpmauthnctl's loopback address.
func browse(args []string) error {
	fs := flag.NewFlagSet("browse", flag.ExitOnError)
	issuer := fs.String("issuer", "", "the provider's issuer URL")
	user := fs.String("user", "", "who logs in")
	password := fs.String("password", "", "their password")
	_ = fs.Parse(args)
	if *issuer == "" || *user == "" || fs.NArg() != 1 {
		return errors.New("browse needs --issuer, --user, --password and the URL to open")
	}
	if _, err := url.Parse(fs.Arg(0)); err != nil {
		return err
	}
	t := &tb{}
	defer t.cleanup()
	op := &oidctest.OP{Issuer: *issuer, URL: strings.TrimSuffix(*issuer, "/")}
	b := oidctest.Browser(t)
	resp, err := b.Get(fs.Arg(0))
	if err != nil {
		return err
	}
	cb := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), *user, *password)
	resp, err = b.Get(cb.String()) // the verifier, then tpmauthnctl's loopback
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// tb lets the test helpers of internal/oidctest run in a program: a failure
// ends it, cleanups run at exit. Only the methods they call are here (the
// embedded interface is nil).
type tb struct {
	testing.TB
	cleanups []func()
}

func (*tb) Helper() {}

func (t *tb) Fatal(args ...any) {
	t.cleanup()
	fmt.Fprintln(os.Stderr, append([]any{"demo-idp:"}, args...)...)
	os.Exit(1)
}

func (t *tb) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }

func (t *tb) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }

func (t *tb) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}
