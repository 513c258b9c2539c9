package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/personkey"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

var loginKeys = []cliconf.Key{
	cliconf.K("login.url", "url", "", "the verifier's login URL (its --http-public-url, e.g. https://login.example.com; default: the one recorded in --data-dir)"),
	cliconf.K("login.idp", "idp", "", "the identity provider to log in with (default: choose on the verifier's page)"),
	cliconf.K("login.device", "device", false, "no browser here: print a code and a URL to open on another device (RFC 8628)"),
	cliconf.K("login.no_browser", "no-browser", false, "print the login URL instead of opening a browser"),
	cliconf.K("login.ca", "http-ca", "", "PEM bundle to verify the verifier's HTTPS with (default: the system's roots, and --data-dir's NATS CA)"),
	cliconf.K("login.out", "out", "", "where to keep the login (default: the user config directory's tpmauthn/login.json, 0600)"),
	cliconf.K("login.wait", "wait", 3*time.Minute, "how long to wait for the login to finish"),
	cliconf.K("login.no_agent", "no-agent", false, "do not hand the login to this host's agent: keep a software key instead"),
	cliconf.K("login.key", "key", "", "where to keep a software key when the login does not go to an agent (default: the user config directory's tpmauthn/person-key.json, 0600)"),
}

type loginSettings struct {
	Login struct {
		URL       string        `mapstructure:"url"`
		IdP       string        `mapstructure:"idp"`
		Device    bool          `mapstructure:"device"`
		NoBrowser bool          `mapstructure:"no_browser"`
		CA        string        `mapstructure:"ca"`
		Out       string        `mapstructure:"out"`
		Wait      time.Duration `mapstructure:"wait"`
		NoAgent   bool          `mapstructure:"no_agent"`
		Key       string        `mapstructure:"key"`
	} `mapstructure:"login"`
}

// openBrowser opens a URL in the user's browser (replaced in tests):
// $BROWSER if set (a command, given the URL as its last argument), else
// the desktop's opener.
var openBrowser = func(u string) error {
	if b := strings.Fields(os.Getenv("BROWSER")); len(b) > 0 {
		return exec.Command(b[0], append(b[1:], u)...).Start()
	}
	name := "xdg-open"
	if runtime.GOOS == "darwin" {
		name = "open"
	}
	return exec.Command(name, u).Start()
}

func (a *app) loginCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in as a person with your identity provider, through the verifier",
		Long: `Opens the verifier's login page in your browser; after you log in at your
identity provider, the browser hands a one-time code to this command on a
loopback address (RFC 8252), which it redeems with a secret only it holds
(PKCE). With --device (a host without a browser) it prints a code and a URL
to open on another device instead (RFC 8628).

The login is kept in the user config directory (tpmauthn/login.json, 0600):
a short-lived grant bound to you, which the agent redeems for your device
credential, and who you are.`,
		Example: `  tpmauthnctl login --url https://login.example.com --idp okta
  tpmauthnctl login --url https://login.example.com --device`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ls loginSettings
			if err := cliconf.LoadFlags(cmd.Flags(), loginKeys, &ls); err != nil {
				return err
			}
			return a.login(cmd.Context(), ls, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().AddFlagSet(flagsOf(loginKeys))
	return cmd
}

func (a *app) login(ctx context.Context, ls loginSettings, tell io.Writer) error {
	l := ls.Login
	if l.URL == "" && a.s.DataDir != "" {
		if b, err := os.ReadFile(keys.LoginURLFile(a.s.DataDir)); err == nil {
			l.URL = strings.TrimSpace(string(b))
		}
	}
	base, err := loginBase(l.URL)
	if err != nil {
		return err
	}
	hc, err := a.loginClient(l.CA)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, l.Wait)
	defer cancel()
	// The grant is bound before the login starts to where it will be
	// redeemed: this host's agent for this user, or the software key made
	// here now. A grant that leaks (a log, a terminal's scrollback) is
	// refused, and spent, anywhere else.
	useAgent := false
	if _, err := os.Stat(a.s.Agent.Socket); err == nil && !l.NoAgent {
		useAgent = true
	}
	bind, priv, err := a.loginPlace(ctx, useAgent, l.NoAgent, tell)
	if err != nil {
		return err
	}
	var res *api.LoginResult
	if l.Device {
		res, err = deviceLogin(ctx, hc, base, bind, tell)
	} else {
		res, err = loopbackLogin(ctx, hc, base, l.IdP, !l.NoBrowser, bind, tell)
	}
	if err != nil {
		return err
	}
	out := l.Out
	if out == "" {
		if out, err = defaultLoginFile(); err != nil {
			return err
		}
	}
	// Who logged in is said before the login is kept: a login that is not
	// the person's (someone else's, handed to this command) shows here.
	if err := a.printLogin(res); err != nil {
		return err
	}
	saved := &savedLogin{LoginResult: *res}
	if useAgent {
		if saved.Device, err = a.agentLogin(ctx, a.s.Agent.Socket, res.AccessToken, tell); err != nil {
			return err
		}
	} else if saved.Key, err = a.keyLogin(ctx, hc, base, l.Key, res.AccessToken, priv); err != nil {
		return err
	}
	saved.AccessToken = "" // redeemed: worth nothing now
	if err := saveLogin(out, saved); err != nil {
		return err
	}
	if !a.s.JSON {
		fmt.Fprintf(a.out, "Login kept in %s\n", out)
	}
	return nil
}

// loginPlace is where the login's grant is bound (api.FormGrantHost and
// FormGrantUID, or FormGrantKey), and the software key it is bound to when
// there is no agent.
func (a *app) loginPlace(ctx context.Context, useAgent, noAgent bool, tell io.Writer) (url.Values, *ecdsa.PrivateKey, error) {
	if useAgent {
		place, err := client.New(a.s.Agent.Socket).PersonLoginPlace(ctx)
		var ae *client.Error
		switch {
		case errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed):
			return nil, nil, fmt.Errorf("the agent at %s is older than this tpmauthnctl: upgrade it (agents first, then tpmauthnctl, then the verifier), or log in with a software key: --no-agent", a.s.Agent.Socket)
		case err != nil:
			return nil, nil, fmt.Errorf("the agent at %s cannot say which host this is: %w (or log in with a software key: --no-agent)", a.s.Agent.Socket, err)
		}
		fmt.Fprintf(tell, "This login is for local user %d on host %s: confirm it only on a verifier page that says so.\n", place.UID, esc(place.Host))
		return url.Values{api.FormGrantHost: {place.Host}, api.FormGrantUID: {strconv.FormatUint(uint64(place.UID), 10)}}, nil, nil
	}
	if !noAgent {
		fmt.Fprintf(tell, "No tpmauthn agent at %s (--agent-socket): keeping a software key instead (roles that require hardware refuse it)\n", a.s.Agent.Socket)
	}
	priv, err := personkey.Generate()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	thumb := personkey.Thumbprint(der)
	fmt.Fprintf(tell, "This login is for a software key (SHA-256 %s…): confirm it only on a verifier page that says so.\n", thumb[:16])
	return url.Values{api.FormGrantKey: {thumb}}, priv, nil
}

// savedLogin is login.json: the login, and the device credential the
// host's agent registered with it, or the software key registered instead.
type savedLogin struct {
	api.LoginResult
	Device *api.PersonLoginResponse `json:"device,omitempty"`
	Key    *savedKey                `json:"software_key,omitempty"`
}

type savedKey struct {
	api.PersonKeyResponse
	Path string `json:"path"`
}

// agentLogin hands the login grant to this host's agent, which registers a
// TPM credential bound to this user.
func (a *app) agentLogin(ctx context.Context, socket, grant string, tell io.Writer) (*api.PersonLoginResponse, error) {
	fmt.Fprintln(tell, "Registering your TPM credential with this host's agent ...")
	dev, err := client.New(socket).PersonLogin(ctx, grant)
	if err != nil {
		return nil, fmt.Errorf("the agent at %s did not register your credential: %w", socket, err)
	}
	if !a.s.JSON {
		fmt.Fprintf(a.out, "TPM credential %s for uid %d on host %s: your programs connect as %s until %s\n",
			esc(dev.CredentialID), dev.UID, esc(dev.Host), esc(dev.Name), when(dev.Expires))
	}
	return dev, nil
}

// loginBase checks the verifier's URL: https, or http on loopback only
// (the login's code and grant are bearer secrets).
func loginBase(s string) (string, error) {
	if s == "" {
		return "", errors.New("say where the verifier serves logins: --url https://... (its --http-public-url), or --data-dir of a local verifier with --http-listen")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("--url %q: want https://host[:port]", s)
	}
	if u.Scheme == "http" && !natstls.LoopbackHost(u.Hostname()) {
		return "", fmt.Errorf("--url %q: plain http beyond loopback would send your login in clear; use https", s)
	}
	return strings.TrimSuffix(u.Scheme+"://"+u.Host+u.Path, "/"), nil
}

// loginClient verifies the verifier with --http-ca, else the system's roots
// plus a local verifier's NATS CA (which its HTTP certificate comes from
// unless the operator gave one).
func (a *app) loginClient(caFile string) (*http.Client, error) {
	var pool *x509.CertPool
	switch {
	case caFile != "":
		p, _, err := natstls.LoadRoots(caFile)
		if err != nil {
			return nil, err
		}
		pool = p
	case a.s.DataDir != "":
		b, err := os.ReadFile(keys.NATSCAFile(a.s.DataDir))
		if err == nil {
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
			pool.AppendCertsFromPEM(b)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// loopbackLogin is RFC 8252 §7.3: a listener on 127.0.0.1 receives the
// verifier's one-time code, redeemed with this process's PKCE verifier.
func loopbackLogin(ctx context.Context, client *http.Client, base, idp string, browser bool, bind url.Values, tell io.Writer) (*api.LoginResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("loopback listener: %w", err)
	}
	path := "/callback/" + randomString()
	codes := make(chan url.Values, 1)
	tell = &lockedWriter{w: tell} // the listener's refusals are told too
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		// Only the person's own browser is listened to: another local
		// user's code (their login, with the challenge they read in this
		// login's URL) or error is refused, and the login goes on.
		if err := peerIsMe(r); err != nil {
			fmt.Fprintf(tell, "(refused a callback not from your browser: %s)\n", esc(err.Error()))
			http.Error(w, "not this user's login", http.StatusForbidden)
			return
		}
		select {
		case codes <- r.URL.Query():
			_, _ = io.WriteString(w, "Logged in: you can close this window and return to the terminal.\n")
		default:
			http.Error(w, "this login is already finished", http.StatusConflict)
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	verifier := randomString()
	start := url.Values{"cb": {"http://" + ln.Addr().String() + path}, "cc": {s256(verifier)}}
	maps.Copy(start, bind)
	loginURL := base + api.PathLogin + url.PathEscape(idp) + "?" + start.Encode()
	fmt.Fprintf(tell, "Log in at:\n  %s\n", loginURL)
	if browser {
		if err := openBrowser(loginURL); err != nil {
			fmt.Fprintf(tell, "(could not open a browser: %v; open the URL yourself)\n", err)
		}
	}
	var q url.Values
	select {
	case q = <-codes:
	case <-ctx.Done():
		return nil, fmt.Errorf("no login within the time allowed (--wait): %w", ctx.Err())
	}
	if q.Get("code") == "" {
		return nil, fmt.Errorf("the login failed: %s", esc(q.Get("error")))
	}
	return tokenRequest(ctx, client, base+api.PathCLIToken, url.Values{"grant_type": {api.GrantTypeCode}, "code": {q.Get("code")}, "code_verifier": {verifier}})
}

// lockedWriter serializes writes from the listener's goroutines and the
// command's.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// peerIsMe is nil if the request's TCP peer is a socket of this process's
// uid (checkPeerUID).
func peerIsMe(r *http.Request) error {
	la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	local, err1 := netip.ParseAddrPort(fmt.Sprint(la))
	remote, err2 := netip.ParseAddrPort(r.RemoteAddr)
	if la == nil || err1 != nil || err2 != nil {
		return fmt.Errorf("%w: addresses %v, %q", errPeerUnknown, la, r.RemoteAddr)
	}
	return checkPeerUID(local, remote, os.Getuid())
}

// deviceLogin is RFC 8628: a code for the person to enter at the verifier
// on another device, then polls until they have logged in.
func deviceLogin(ctx context.Context, client *http.Client, base string, bind url.Values, tell io.Writer) (*api.LoginResult, error) {
	var da api.DeviceAuthResponse
	form := url.Values{"client_id": {"tpmauthnctl"}}
	maps.Copy(form, bind)
	if err := postForm(ctx, client, base+api.PathDeviceCode, form, &da, nil); err != nil {
		return nil, fmt.Errorf("device authorization: %w", err)
	}
	fmt.Fprintf(tell, "On a device with a browser, open\n  %s\nand enter the code %s\n", esc(da.VerificationURI), esc(da.UserCode))
	interval := time.Duration(max(da.Interval, 1)) * time.Second
	for {
		select {
		case <-time.After(interval):
		case <-ctx.Done():
			return nil, fmt.Errorf("no login within the time allowed (--wait): %w", ctx.Err())
		}
		res, err := tokenRequest(ctx, client, base+api.PathDeviceToken, url.Values{"grant_type": {api.GrantTypeDeviceCode}, "device_code": {da.DeviceCode}, "client_id": {"tpmauthnctl"}})
		var oe *oauthError
		switch {
		case errors.As(err, &oe) && oe.Code == api.OAuthPending:
		case errors.As(err, &oe) && oe.Code == api.OAuthSlowDown:
			interval += 5 * time.Second // RFC 8628 §3.5
		case err != nil:
			return nil, err
		default:
			return res, nil
		}
	}
}

// oauthError is a token endpoint's refusal.
type oauthError struct{ api.OAuthError }

func (e *oauthError) Error() string {
	if e.Description == "" {
		return "the verifier refused: " + esc(e.Code)
	}
	return "the verifier refused: " + esc(e.Code) + ": " + esc(e.Description)
}

func tokenRequest(ctx context.Context, client *http.Client, u string, form url.Values) (*api.LoginResult, error) {
	var res api.LoginResult
	if err := postForm(ctx, client, u, form, &res, new(oauthError)); err != nil {
		return nil, err
	}
	if res.AccessToken == "" {
		return nil, errors.New("the verifier answered without a login grant")
	}
	return &res, nil
}

// postForm posts form and decodes a 200 into out, a 4xx/5xx JSON body into
// refusal (if given).
func postForm(ctx context.Context, client *http.Client, u string, form url.Values, out any, refusal *oauthError) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		if refusal != nil && json.Unmarshal(body, &refusal.OAuthError) == nil && refusal.Code != "" {
			return refusal
		}
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	return json.Unmarshal(body, out)
}

func randomString() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// s256 is RFC 7636 §4.2's challenge of a verifier.
func s256(v string) string {
	h := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func defaultLoginFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user config directory (give --out): %w", err)
	}
	return filepath.Join(dir, "tpmauthn", "login.json"), nil
}

// saveLogin keeps the login for the user alone: the directory 0700, the
// file 0600 (it holds a bearer grant), written whole.
func saveLogin(path string, res *savedLogin) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// printLogin says who logged in; the IdP chose the name and email, so they
// are escaped before the terminal sees them.
func (a *app) printLogin(res *api.LoginResult) error {
	if a.s.JSON {
		view := *res
		view.AccessToken = "" // kept in the file, not printed
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(view)
	}
	p := res.Person
	fmt.Fprintf(a.out, "Logged in as %s", esc(p.Name))
	if p.Email != "" {
		fmt.Fprintf(a.out, " <%s>", esc(p.Email))
	}
	fmt.Fprintf(a.out, " at %s (person %s) until %s\n", esc(p.IdP), esc(p.ID), when(res.LoginExpires))
	fmt.Fprintf(a.out, "Roles: %s (with a software key: %s)\n", esc(list(res.Roles)), esc(list(res.SoftwareRoles)))
	return nil
}

// keyLogin makes a software key (no TPM here), registers it with the
// verifier by redeeming the grant, and keeps it in path (0600).
func (a *app) keyLogin(ctx context.Context, hc *http.Client, base, path, grant string, priv *ecdsa.PrivateKey) (*savedKey, error) {
	if path == "" {
		var err error
		if path, err = personkey.DefaultPath(); err != nil {
			return nil, err
		}
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	proof, err := ecdsa.SignASN1(rand.Reader, priv, personkey.ProofDigest(grant))
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(api.PersonKeyRequest{PublicKey: der, Proof: proof})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+api.PathPersonKey, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+grant)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("register the software key: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		return nil, fmt.Errorf("the verifier did not register the software key: %s: %s", resp.Status, esc(e.Error))
	}
	var reg api.PersonKeyResponse
	if err := json.Unmarshal(b, &reg); err != nil {
		return nil, err
	}
	if _, err := personkey.Save(path, priv, &reg); err != nil {
		return nil, err
	}
	if !a.s.JSON {
		fmt.Fprintf(a.out, "Software key %s kept in %s: your programs connect as %s until %s\n",
			esc(reg.CredentialID), path, esc(reg.Name), when(reg.Expires))
	}
	return &savedKey{PersonKeyResponse: reg, Path: path}, nil
}
