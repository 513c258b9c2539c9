// Package oidclogin is the verifier's OpenID Connect relying party for any
// number of identity providers, and the HTTP endpoints that log a person in:
//
//   - GET /login/{idp} starts an authorization code flow with PKCE (RFC 7636,
//     S256), state and nonce (OIDC Core §3.1.2.1), each one-time and
//     expiring, and the state bound to the browser by a cookie;
//   - GET /oidc/callback ends it: state taken once, cookie checked, code
//     exchanged with the PKCE verifier, ID token verified (signature,
//     issuer, audience, expiry: go-oidc) and its nonce compared;
//   - a CLI's login (RFC 8252 loopback redirect) is confirmed by the person
//     on a page of the verifier, and ends in a one-time code
//     sent to its loopback address, redeemed at POST /cli/token with the
//     CLI's own PKCE verifier;
//   - hosts without a browser use the verifier's own RFC 8628 device
//     authorization (/device/code, /device/token, and the /device page
//     where the person enters the code and is sent through the IdP login).
//
// Every login ends with verifier/people: a person is (IdP, subject claim),
// never an email; the login is audited naming the person; a CLI gets a login
// grant. Trust assumptions: the IdP's discovery document and keys come over
// TLS (the policy refuses http beyond loopback), the browser keeps its
// cookies, and the redirect URI registered at each IdP is this listener's
// PublicURL + /oidc/callback.
package oidclogin

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Sentinel errors (compare with errors.Is).
var (
	// ErrUnknownIdP: the policy names no such IdP.
	ErrUnknownIdP = errors.New("unknown identity provider")
	// ErrState: a login state unknown, used, expired, or not this browser's.
	ErrState = errors.New("login state unknown, used, expired or from another browser")
	// ErrIdP: the IdP refused, was unreachable, or answered with an ID token
	// that does not verify.
	ErrIdP = errors.New("identity provider login failed")
	// ErrNonce: the ID token's nonce is not the login's (a replayed or
	// substituted token).
	ErrNonce = errors.New("ID token nonce mismatch")
	// ErrClaims: the ID token lacks the subject claim the policy names.
	ErrClaims = errors.New("ID token lacks the subject claim")
	// ErrCode: a one-time code (or device code) unknown, used, expired, or
	// redeemed with the wrong PKCE verifier.
	ErrCode = errors.New("code unknown, used, expired or not yours")
	// ErrBadRequest: a request this endpoint cannot take.
	ErrBadRequest = errors.New("bad request")
)

// Lifetimes of what a login leaves in the logins bucket (each well below
// store.LoginTTL, after which the bucket drops it anyway).
const (
	StateTTL      = 10 * time.Minute // from /login to /oidc/callback
	CodeTTL       = 2 * time.Minute  // from the loopback redirect to its redeem
	DeviceTTL     = 10 * time.Minute // a device code (RFC 8628 expires_in)
	DefaultPoll   = 5 * time.Second  // RFC 8628 §3.2's default interval
	slowDownExtra = 5 * time.Second  // RFC 8628 §3.5
)

// Config configures a Handler.
type Config struct {
	People *people.Service
	Store  *store.Store
	Policy func() *policy.Policy
	// PublicURL is how browsers and IdPs reach this listener (scheme, host,
	// port, no path): the redirect URI is PublicURL + /oidc/callback.
	PublicURL string
	// Secure marks cookies Secure (the listener serves TLS).
	Secure bool
	// Client reaches the IdPs (nil: one with a 10 s timeout). Tests give
	// one that trusts their provider.
	Client *http.Client
	// DevicePoll is the device flow's polling interval (DefaultPoll).
	DevicePoll time.Duration
	Logger     *slog.Logger
	// Now is the clock of states, codes and device codes (nil: time.Now).
	Now func() time.Time
}

// Handler serves the login endpoints.
type Handler struct {
	cfg Config
	mu  sync.Mutex
	rps map[string]*relyingParty // by IdP name; rebuilt when its config changes
}

// New returns a Handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Client == nil {
		// A transport of its own: Close drops its idle connections to the
		// IdPs, which the shared default transport would keep.
		cfg.Client = &http.Client{Timeout: 10 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if cfg.DevicePoll == 0 {
		cfg.DevicePoll = DefaultPoll
	}
	return &Handler{cfg: cfg, rps: map[string]*relyingParty{}}
}

// Register adds the endpoints to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+api.PathLogin+"{$}", h.chooser)
	mux.HandleFunc("GET "+api.PathLogin+"{idp}", h.start)
	mux.HandleFunc("POST "+api.PathLogin+"{idp}", h.confirm)
	mux.HandleFunc("GET "+api.PathOIDCCallback, h.callback)
	mux.HandleFunc("POST "+api.PathCLIToken, h.cliToken)
	mux.HandleFunc("GET "+api.PathDevice, h.devicePage)
	mux.HandleFunc("POST "+api.PathDevice, h.deviceSubmit)
	mux.HandleFunc("POST "+api.PathDeviceCode, h.deviceCode)
	mux.HandleFunc("POST "+api.PathDeviceToken, h.deviceToken)
}

// Close drops the idle connections to the IdPs.
func (h *Handler) Close() { h.cfg.Client.CloseIdleConnections() }

// people returns the policy's people section, or nil.
func (h *Handler) people() *policy.People {
	return h.cfg.Policy().People
}

// Attribute keys of the package's log lines.
const (
	keyIdP   = "idp"
	keyError = "error"
	keyFlow  = "flow"
)
