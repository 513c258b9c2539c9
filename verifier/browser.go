package verifier

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/verifier/console"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/passkey"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// People in browsers: passkeys, NATS over WebSocket, the console.

func (c *Config) validateWebsocket() []error {
	if c.WebsocketListen == "" {
		return nil
	}
	var errs []error
	host, _, err := net.SplitHostPort(c.WebsocketListen)
	if err != nil {
		return []error{fmt.Errorf("websocket.listen: %q: want host:port (%w)", c.WebsocketListen, err)}
	}
	if c.HTTPListen == "" {
		errs = append(errs, errors.New("websocket.listen: needs http.listen: the WebSocket listener admits the pages the verifier serves there, and no others"))
	}
	if c.NATSURL != "" {
		errs = append(errs, errors.New("websocket.listen: for the embedded server only; on an existing cluster, add the block tpmauthnctl nats-config --websocket-listen prints"))
	}
	if c.HTTPListen != "" && !c.httpTLS() && !natstls.LoopbackHost(host) {
		errs = append(errs, fmt.Errorf("websocket.listen: %q is beyond loopback and the pages are plain HTTP: the NATS WebSocket serves TLS exactly when the pages do; serve http with TLS or listen on 127.0.0.1", c.WebsocketListen))
	}
	if t := c.WebsocketAuthTimeout; t != 0 && (t < 5*time.Second || t > 5*time.Minute) {
		errs = append(errs, fmt.Errorf("websocket.auth_timeout: %v: between 5s and 5m", t))
	}
	return errs
}

// websocketOptions is the embedded server's WebSocket block: the pages'
// origin only, their TLS certificate (when they serve TLS), the longer
// authorization timeout.
func (v *Verifier) websocketOptions() keys.Websocket {
	if v.cfg.WebsocketListen == "" || v.http == nil {
		return keys.Websocket{}
	}
	ws := keys.Websocket{Listen: v.cfg.WebsocketListen, AllowedOrigins: []string{origin(v.httpURL)},
		AuthTimeout: int(v.cfg.WebsocketAuthTimeout / time.Second)}
	if v.httpTLS {
		ws.CertFile, ws.KeyFile = v.cfg.HTTPTLSCert, v.cfg.HTTPTLSKey
		if ws.CertFile == "" {
			// httpTLSConfig made (or found) it already.
			ws.CertFile, ws.KeyFile, _ = keys.HTTPServerCert(v.cfg.DataDir, v.keys, v.httpHosts(), time.Now())
		}
	}
	return ws
}

// websocketURL is how browsers reach the WebSocket listener: the pages'
// host name, the listener's port.
func (v *Verifier) websocketURL(srv *server.Server) string {
	if v.cfg.WebsocketListen == "" || v.http == nil {
		return ""
	}
	u, err := url.Parse(srv.WebsocketURL())
	if err != nil {
		return ""
	}
	page, _ := url.Parse(v.httpURL)
	return u.Scheme + "://" + net.JoinHostPort(page.Hostname(), u.Port())
}

func origin(public string) string {
	u, err := url.Parse(public)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// browserCheck is what the connect path asks of a browser credential
// (workload.Config.Browser).
type browserCheck interface {
	Check(ctx context.Context, cred *record.Credential) (attestation.AssertionCheck, error)
}

// browserChecker checks browser credentials against the pages' origin; nil
// (no pages: every credential without a host is refused).
func (v *Verifier) browserChecker() browserCheck {
	if v.http == nil {
		return nil
	}
	c, err := passkey.NewChecker(v.httpURL, v.st.Credentials)
	if err != nil {
		v.log.Warn("browser credentials refused", "error", err)
		return nil
	}
	return c
}

// browserLogin is where a browser's IdP login ends: the passkeys' web
// session (set by serveBrowsers), if the pages can have passkeys.
func (v *Verifier) browserLogin(pk **passkey.Handler) func(http.ResponseWriter, *http.Request, *record.Person) {
	if _, err := passkey.RPIDOf(v.httpURL); err != nil {
		// An IP address for a host name: logins work, passkeys cannot.
		v.log.Warn("passkeys and the console are off", "error", err)
		return nil
	}
	return func(w http.ResponseWriter, r *http.Request, p *record.Person) { (*pk).StartIdPSession(w, r, p) }
}

// serveBrowsers adds passkeys, the browser client and the console to mux; pk is set
// before any request can reach browserLogin's hook.
func (v *Verifier) serveBrowsers(mux *http.ServeMux, login *oidclogin.Handler, pk **passkey.Handler) error {
	if _, err := passkey.RPIDOf(v.httpURL); err != nil {
		return nil
	}
	h, err := passkey.New(passkey.Config{Store: v.st, Fleet: v.fleet, People: v.people, Policy: func() *policy.Policy { return v.policy.Current() },
		Trail: v.trail, Guard: login, PublicURL: v.httpURL, Secure: v.httpTLS, WebsocketURL: v.wsURL, Logger: v.log, Now: v.cfg.Clock})
	if err != nil {
		return err
	}
	cascade, err := h.StartCascade(context.Background())
	if err != nil {
		return err
	}
	v.onClose(cascade.Close)
	*pk = h
	h.Register(mux)
	console.New(console.Config{Store: v.st, Audit: v.audit, Policy: func() *policy.Policy { return v.policy.Current() },
		Passkeys: h, WebsocketURL: v.wsURL, Logger: v.log, Now: v.cfg.Clock}).Register(mux)
	if v.wsURL != "" {
		v.log.Info("NATS over WebSocket for browsers", "url", v.wsURL, "origin", origin(v.httpURL), "rp_id", h.RPID())
	}
	return nil
}

// WebsocketURL is where browsers connect to NATS ("" without a WebSocket
// listener).
func (v *Verifier) WebsocketURL() string { return v.wsURL }
