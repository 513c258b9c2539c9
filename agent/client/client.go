// Package client is what a workload imports to use the tpmauthn agent on
// its host: NATS connection options whose nonce signer is the host's TPM,
// and WebAuthn assertions for any relying party. It speaks HTTP over the
// agent's Unix socket and holds no secret: the agent names the caller by its
// process credentials.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

// DefaultSocket is the agent's socket.
const DefaultSocket = "/run/tpmauthn/agent.sock"

// Client talks to the agent.
type Client struct {
	socket string
	hc     *http.Client
	turnHC *http.Client // the same transport, for waits as long as a turn's
}

// New returns a client for the agent at socket ("" for DefaultSocket).
func New(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 2,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		turnHC: &http.Client{Transport: tr, Timeout: turnWait + 5*time.Second}}
}

// Error is the agent's refusal. RetryAfter, when the TPM was busy, is when
// the agent expects it to have room.
type Error struct {
	Status     int
	Message    string `json:"error"`
	Hint       string `json:"hint"`
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Hint != "" {
		return fmt.Sprintf("tpmauthn agent: %s (%s)", e.Message, e.Hint)
	}
	return "tpmauthn agent: " + e.Message
}

// WhoAmI is how the agent sees the caller (api.WhoAmI, named here so that a
// workload importing this package needs nothing else).
type WhoAmI = api.WhoAmI

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.doBy(ctx, time.Time{}, method, path, in, out)
}

// doBy sends a request whose deadline, if not zero, the agent is told
// (api.AgentHeaderDeadline): it then signs nothing after it and refuses at
// once what it cannot sign before it. ctx should end a little later, so
// that such a refusal is read.
func (c *Client) doBy(ctx context.Context, deadline time.Time, method, path string, in, out any) error {
	return c.send(ctx, c.hc, deadline, method, path, in, out)
}

// send is doBy on hc.
func (c *Client) send(ctx context.Context, hc *http.Client, deadline time.Time, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if !deadline.IsZero() {
		req.Header.Set(api.AgentHeaderDeadline, strconv.FormatInt(deadline.UnixMilli(), 10))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("tpmauthn agent at %s: %w (is tpmauthn-agent running?)", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusNoContent && out == nil {
		return nil
	}
	if resp.StatusCode != http.StatusOK {
		return agentError(resp, b)
	}
	return json.Unmarshal(b, out)
}

// agentError reads a refusal, with when to come back: retry_after_ms, or
// the Retry-After header (whole seconds) from an agent that has only that.
func agentError(resp *http.Response, body []byte) *Error {
	var ae api.AgentError
	e := &Error{Status: resp.StatusCode}
	if json.Unmarshal(body, &ae) == nil && ae.Error != "" {
		e.Message, e.Hint = ae.Error, ae.Hint
		e.RetryAfter = time.Duration(ae.RetryAfterMS) * time.Millisecond
	} else {
		e.Message = resp.Status
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && e.RetryAfter == 0 && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// WhoAmI asks the agent which workload the caller is.
func (c *Client) WhoAmI(ctx context.Context) (*WhoAmI, error) {
	var w WhoAmI
	return &w, c.do(ctx, http.MethodGet, api.AgentPathWhoAmI, nil, &w)
}

// Assertion returns a WebAuthn assertion (PublicKeyCredential JSON) over
// challenge, signed by the caller's TPM credential.

// PersonLogin hands the agent a person's login grant (api.LoginResult's
// access token): it registers a TPM credential bound to the calling user,
// with which that user's programs then connect as the person.
func (c *Client) PersonLogin(ctx context.Context, grant string) (*api.PersonLoginResponse, error) {
	var out api.PersonLoginResponse
	// A key creation and a certify, maybe behind other TPM work: the turn
	// client's longer timeout.
	if err := c.send(ctx, c.turnHC, time.Time{}, http.MethodPost, api.AgentPathPersonLogin, &api.PersonLoginRequest{Grant: grant}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PersonLoginPlace is where a login on this host should bind its grant
// (api.FormGrantHost, FormGrantUID): this host's ID and the caller's uid as
// the agent sees it. Only a grant bound so is redeemed by PersonLogin.
func (c *Client) PersonLoginPlace(ctx context.Context) (*api.PersonLoginPlace, error) {
	var out api.PersonLoginPlace
	if err := c.do(ctx, http.MethodGet, api.AgentPathPersonLogin, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PersonLogout deletes the calling user's person credential on this host.
func (c *Client) PersonLogout(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, api.AgentPathPersonLogin, nil, nil)
}

// A refusal for a busy TPM is retried when the agent says, while ctx lasts.
func (c *Client) Assertion(ctx context.Context, challenge []byte) (json.RawMessage, error) {
	var out json.RawMessage
	// The agent's deadline ends a little before ctx, so that a refusal at
	// it is read rather than lost to ctx's end.
	deadline, ok := ctx.Deadline()
	if ok {
		deadline = deadline.Add(-replySlack)
	}
	err := retryBusy(ctx, func() error {
		return c.doBy(ctx, deadline, http.MethodPost, api.AgentPathAssertion, api.AssertionRequest{Challenge: base64.RawURLEncoding.EncodeToString(challenge)}, &out)
	})
	return out, err
}

// maxBusyRetries bounds the retries of a request without a deadline.
const maxBusyRetries = 3

// retryBusy runs f again after the wait the agent names (Error.RetryAfter)
// while the retry can still finish before ctx's deadline (at most
// maxBusyRetries times without one); any other outcome is f's.
func retryBusy(ctx context.Context, f func() error) error {
	for n := 0; ; n++ {
		err := f()
		var e *Error
		if !errors.As(err, &e) || e.RetryAfter <= 0 {
			return err
		}
		dl, ok := ctx.Deadline()
		if (ok && time.Now().Add(e.RetryAfter).After(dl)) || (!ok && n >= maxBusyRetries) {
			return err
		}
		select {
		case <-time.After(e.RetryAfter):
		case <-ctx.Done():
			return err
		}
	}
}

// NATSSign returns the CONNECT nkey and sig fields for a server nonce. The
// agent is told ctx's deadline, if it has one: it signs nothing after it.
func (c *Client) NATSSign(ctx context.Context, nonce []byte) (nkey, sig string, err error) {
	deadline, _ := ctx.Deadline()
	return c.natsSignBy(ctx, deadline, nonce)
}

func (c *Client) natsSignBy(ctx context.Context, deadline time.Time, nonce []byte) (nkey, sig string, err error) {
	var out api.NATSSignResponse
	err = c.doBy(ctx, deadline, http.MethodPost, api.AgentPathNATSSign, api.NATSSignRequest{Nonce: string(nonce)}, &out)
	return out.NKey, out.Sig, err
}

// NATSTurn waits until the agent expects its TPM to sign a NATS nonce sent
// now in time (api.AgentPathNATSTurn), or ctx ends. An agent that has no
// turns (404) gives one at once.
func (c *Client) NATSTurn(ctx context.Context) error {
	err := c.send(ctx, c.turnHC, time.Time{}, http.MethodPost, api.AgentPathNATSTurn, nil, nil)
	var e *Error
	if errors.As(err, &e) && e.Status == http.StatusNotFound {
		return nil
	}
	return err
}

// replySlack is how much longer than the deadline it gives the agent a
// request waits for the answer, so that a refusal at the deadline is read.
const replySlack = 250 * time.Millisecond

// NATSOptions returns the nats.go options that authenticate a connection
// with the caller's TPM credential: nats.Nkey with a signer that asks the
// agent, a 5 s handshake timeout (a real TPM signs in hundreds of
// milliseconds), and reconnect jitter so a fleet does not reconnect in step
// (each reconnect costs a TPM signature and an auth callout). Each
// signature request carries its deadline (api.NATSSignBudget from the
// nonce), and each reconnect waits for the agent's turn (NATSTurn), so a
// host whose workloads all reconnect at once signs each nonce in time, one
// after another, and none for a handshake already given up. A first connect
// takes no turn unless nats.RetryOnFailedConnect makes it a reconnect.
//
// The last option wraps the reconnect delay and the nats.ClosedHandler
// set before it, so that nc.Close ends a reconnect's wait (see
// reconnectOption): give a closed handler before these options, not after
// (Connect puts its extra options before it). A closed handler set after
// them, or with nc.SetClosedHandler, replaces the wrapper: a closed
// connection's wait then ends by its own bounds only, the delay (at most
// 16 s) and one turn request (at most turnWait).
func NATSOptions(socket string) ([]nats.Option, error) {
	c, opts, err := natsOptions(socket)
	if err != nil {
		return nil, err
	}
	return slices.Clip(append(opts, c.reconnectOption())), nil
}

// natsOptions is NATSOptions without its last option, and the client that
// option takes turns with.
func natsOptions(socket string) (*Client, []nats.Option, error) {
	c := New(socket)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	who, err := c.WhoAmI(ctx)
	if err != nil {
		return nil, nil, err
	}
	nkey := who.NKey
	if nkey == "" {
		nkey = who.CredentialID
	}
	signer := func(nonce []byte) ([]byte, error) {
		if len(nonce) == 0 {
			return nil, errors.New("tpmauthn: the NATS server sent no nonce")
		}
		// What is left of the handshake once the signature is back goes
		// to the auth callout: a later signature is useless, so the agent
		// is told not to make it.
		deadline := time.Now().Add(api.NATSSignBudget)
		ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(replySlack))
		defer cancel()
		got, sig, err := c.natsSignBy(ctx, deadline, nonce)
		if err != nil {
			return nil, err
		}
		if got != nkey {
			return nil, fmt.Errorf("tpmauthn: the agent signed for %s, not %s: the workload's credential was replaced, not rotated; reconnect with new options", got, nkey)
		}
		return base64.RawURLEncoding.DecodeString(sig)
	}
	tlsOpt, err := tlsOption(who)
	if err != nil {
		return nil, nil, err
	}
	// Clipped: callers append their own options, from many goroutines too.
	return c, slices.Clip(append([]nats.Option{
		tlsOpt,
		nats.Nkey(nkey, signer),
		nats.Name(who.Workload + "@" + who.Host),
		// The session may subscribe to replies under this prefix only.
		nats.CustomInboxPrefix(api.InboxForCredential(nkey)),
	}, ReconnectOptions()...)), nil
}

// turnWait bounds the wait for a turn before a reconnect: the agent's own
// bound (30 s, a storm of 50 signatures at a real TPM's pace with room to
// spare), after which the handshake is tried anyway.
const turnWait = 30 * time.Second

// reconnectOption makes each connection's reconnect delay the one set
// before it (ReconnectDelay unless the workload chose another) followed by
// a turn at the agent's TPM (see reconnectDelay), and ends that wait when
// the connection is closed: nats.go runs the delay on the connection's
// reconnect goroutine and cannot interrupt it, so the option wraps the
// connection's closed handler to cancel it. nats.go applies options once
// per connection, so each connection has its own.
func (c *Client) reconnectOption() nats.Option {
	return func(o *nats.Options) error {
		// Never leaks: no parent, no timer; cancelled when the
		// connection closes, collected with it otherwise.
		ctx, cancel := context.WithCancel(context.Background())
		delay, closed := o.CustomReconnectDelayCB, o.ClosedCB
		if delay == nil {
			delay = ReconnectDelay
		}
		o.CustomReconnectDelayCB = func(attempt int) time.Duration {
			return c.reconnectDelay(ctx, delay(attempt))
		}
		o.ClosedCB = func(nc *nats.Conn) {
			cancel()
			if closed != nil {
				closed(nc)
			}
		}
		return nil
	}
}

// reconnectDelay waits d, then for one turn at the agent's TPM (see
// NATSTurn), at most turnWait, and returns 0: the handshake starts at once,
// when its signature can be made in time, since nats.go reports each
// failed handshake to the workload. No turn (a refusal, an unreachable
// agent, the wait's end): the handshake is tried all the same and says
// why. nats.go calls it without the connection's lock, and neither
// nc.Close nor nc.ForceReconnect can interrupt it; ctx, which the closed
// handler cancels, ends both the delay and the turn request.
func (c *Client) reconnectDelay(ctx context.Context, d time.Duration) time.Duration {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, turnWait)
	defer cancel()
	_ = c.NATSTurn(ctx)
	return 0
}

// Connect is nats.Connect(url) with NATSOptions(socket) and then extra, for
// a workload's first connect: it takes a turn at the agent's TPM (NATSTurn)
// before each attempt, and tries again when the agent refused for a busy
// TPM, at the time it names, while ctx lasts. A host whose workloads all
// start at once then has each connected in its turn, none refused.
func Connect(ctx context.Context, socket, url string, extra ...nats.Option) (*nats.Conn, error) {
	c, opts, err := natsOptions(socket)
	if err != nil {
		return nil, err
	}
	opts = append(append(opts, extra...), c.reconnectOption()) // last: it wraps extra's
	var nc *nats.Conn
	err = retryBusy(ctx, func() error {
		if err := c.NATSTurn(ctx); err != nil {
			return err
		}
		nc, err = nats.Connect(url, opts...)
		return err
	})
	return nc, err
}

// tlsOption verifies the server as the agent does: with the agent's NATS
// CA, and TLS required when the agent's URL is beyond loopback (the
// signature over the nonce must reach the real server, not a relay).
func tlsOption(who *WhoAmI) (nats.Option, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if who.NATSCA != "" {
		certs, err := pemca.ParseCertificates([]byte(who.NATSCA))
		if err != nil {
			return nil, fmt.Errorf("tpmauthn: the agent's NATS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		for _, c := range certs {
			cfg.RootCAs.AddCert(c)
		}
	}
	if who.NATSTLSRequired {
		return nats.Secure(cfg), nil
	}
	return func(o *nats.Options) error { o.TLSConfig = cfg; return nil }, nil
}

// ReconnectOptions are how a tpmauthn workload reconnects; any number of
// connections may share them. A server restart sends the
// whole fleet back at once, through one auth callout:
//   - retries back off exponentially with jitter (see ReconnectDelay),
//     spreading the herd instead of aiming it;
//   - a failed handshake's socket is closed (see CloseFailedHandshakes).
//
// Two "Authorization Violation"s in a row still end the retries (nats.go's
// default): that is how a revoked workload stops. An overloaded verifier
// does not produce them: it drops requests it cannot answer in time, the
// server's first PING then ends the client's handshake after ~2 s, well
// before the server's 5 s authorization timeout would, and that error does
// not count (measured: 10,000 clients all back, 11.0 and 11.4 s).
func ReconnectOptions() []nats.Option {
	return []nats.Option{
		nats.Timeout(5 * time.Second),
		nats.CustomReconnectDelay(ReconnectDelay),
		nats.MaxReconnects(-1),
		CloseFailedHandshakes(),
	}
}

// ReconnectDelay is the wait before a reconnect attempt (1 for the first):
// 1–2 s, then 2–4 s, 4–8 s, and 8–16 s from then on ("equal jitter"). Every
// attempt the verifier cannot answer in time still costs the server a signed,
// sealed callout request, so clients that failed once must come back more
// slowly than they left, or a large fleet keeps the server busy with
// requests nobody will wait for.
func ReconnectDelay(attempt int) time.Duration {
	d := 2 * time.Second
	for i := 1; i < attempt && d < 16*time.Second; i++ {
		d *= 2
	}
	return d/2 + rand.N(d/2)
}
