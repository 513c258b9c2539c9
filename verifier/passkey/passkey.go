// Package passkey is people's passkeys at the verifier (WebAuthn in the
// browser, go-webauthn): after a login at their identity provider, a person
// registers passkeys (ES256, discoverable, user verification required),
// lists and removes them per device, and later signs in with a passkey
// alone. A passkey is a credential without a host (record.KindPasskey)
// listed with its person, so that offboarding revokes it.
//
// The browser speaks NATS over WebSocket (the client module served at
// PathClient, on the official @nats-io/nats-core) and signs each
// connection's nonce exactly as a TPM does: the same challenge
// (attestation.NATSChallenge), the same bundle, checked by the same
// connect path (verifier/authn/workload, through Checker). The signer is
// either the passkey, a ceremony per connect, or by default a
// non-extractable WebCrypto P-256 session key that one passkey assertion
// certified for the rest of the web session (sessionkey.go: the
// certification's challenge binds the key's SPKI to a nonce of this
// verifier, and the key's record names its certifying passkey, which must
// stay active).
//
// Web sessions are a MAC'd cookie (HttpOnly, SameSite=Lax, __Host- with
// TLS) under a key of this process, re-checked on every request against the
// person (active, IdP still in the policy) and, for a passkey sign-in, the
// passkey (active).
package passkey

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"
	"golang.org/x/time/rate"

	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Paths served (Register).
const (
	PathPasskeys       = "/passkeys"
	PathSignIn         = "/signin"
	PathSignOut        = "/signout"
	PathClient         = "/assets/nats-passkey.js"
	PathNATSCore       = "/assets/nats-core.js"
	PathClientConfig   = "/nats/config"
	pathRegisterBegin  = "/passkeys/register/begin"
	pathRegisterFinish = "/passkeys/register/finish"
	pathRemove         = "/passkeys/remove"
	pathSignInBegin    = "/signin/begin"
	pathSignInFinish   = "/signin/finish"
	pathSessionBegin   = "/passkeys/session-key/begin"
	pathSessionFinish  = "/passkeys/session-key/finish"
)

// CeremonyTTL is how long a registration, sign-in or certification may
// take from its options to its answer.
const CeremonyTTL = 5 * time.Minute

// guard is the login handler's checks of where a form comes from
// (verifier/oidclogin): the pages here use the same keyed CSRF tokens and
// Origin checks.
type guard interface {
	FormToken(cookie string) string
	CheckForm(r *http.Request, cookie string) error
	CheckOrigin(r *http.Request) error
}

// Config configures a Handler.
type Config struct {
	Store  *store.Store
	Fleet  *fleet.Fleet
	People *people.Service
	Policy func() *policy.Policy
	Trail  *auditlog.Trail
	Guard  guard
	// PublicURL is how browsers reach the verifier's pages: its host is
	// the passkeys' RP ID (a domain name, or localhost), its origin the
	// only one their assertions may name.
	PublicURL string
	// Secure marks cookies Secure and __Host- (the pages are served with TLS).
	Secure bool
	// WebsocketURL is the NATS WebSocket listener the browser client
	// connects to ("" : none).
	WebsocketURL string
	Logger       *slog.Logger
	// Now is the clock of web sessions and ceremonies (nil: time.Now).
	Now func() time.Time
}

// Handler serves passkeys, sign-in and the browser client.
type Handler struct {
	cfg      Config
	wa       *webauthn.WebAuthn
	rpID     string
	rpIDHash [32]byte
	origin   string
	key      []byte // the web sessions' MAC key
	// signIns bounds the creation of sign-in ceremonies over all clients:
	// they need no session, and each is a record in the logins bucket
	// until it expires (the per-address limit alone lets many addresses
	// fill it), as oidclogin bounds login states.
	signIns *rate.Limiter
}

// New returns a Handler; the public URL's host must be usable as a
// WebAuthn RP ID.
func New(cfg Config) (*Handler, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rpID, err := RPIDOf(cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(cfg.PublicURL)
	origin := u.Scheme + "://" + u.Host
	wa, err := webauthn.New(&webauthn.Config{RPID: rpID, RPDisplayName: "tpmauthn", RPOrigins: []string{origin}})
	if err != nil {
		return nil, fmt.Errorf("passkeys: RP ID %q: %w", rpID, err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key) // never fails (crypto/rand, Go 1.24)
	return &Handler{cfg: cfg, wa: wa, rpID: rpID, rpIDHash: sha256.Sum256([]byte(rpID)), origin: origin, key: key,
		signIns: rate.NewLimiter(rate.Limit(oidclogin.DefaultStateRate), oidclogin.DefaultStateBurst)}, nil
}

// RPIDOf is the passkeys' RP ID for pages at publicURL: its host, which
// must be a domain name or localhost (WebAuthn §5.1.4.1: not an IP address).
func RPIDOf(publicURL string) (string, error) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("passkeys: public URL %q: want scheme://host[:port]", publicURL)
	}
	if net.ParseIP(u.Hostname()) != nil {
		return "", fmt.Errorf("passkeys: public URL %q: browsers refuse passkeys for an IP address; give the verifier a host name (--http-public-url http://localhost:PORT for development)", publicURL)
	}
	return u.Hostname(), nil
}

// Register adds the endpoints to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathPasskeys, h.page)
	mux.HandleFunc("POST "+pathRegisterBegin, h.registerBegin)
	mux.HandleFunc("POST "+pathRegisterFinish, h.registerFinish)
	mux.HandleFunc("POST "+pathRemove, h.remove)
	mux.HandleFunc("GET "+PathSignIn, h.signInPage)
	mux.HandleFunc("POST "+pathSignInBegin, h.signInBegin)
	mux.HandleFunc("POST "+pathSignInFinish, h.signInFinish)
	mux.HandleFunc("POST "+PathSignOut, h.signOut)
	mux.HandleFunc("POST "+pathSessionBegin, h.sessionKeyBegin)
	mux.HandleFunc("POST "+pathSessionFinish, h.sessionKeyFinish)
	mux.HandleFunc("GET "+PathClientConfig, h.clientConfig)
	mux.HandleFunc("GET /assets/{name}", serveAsset)
}

// RPID is the passkeys' relying party ID.
func (h *Handler) RPID() string { return h.rpID }

// Origin is the pages' origin.
func (h *Handler) Origin() string { return h.origin }

// Sentinel errors (compare with errors.Is).
var (
	// ErrNoSession: no valid web session (sign in).
	ErrNoSession = errors.New("not signed in")
	// ErrCeremony: a WebAuthn ceremony's answer is unknown, expired or
	// does not verify.
	ErrCeremony = errors.New("passkey ceremony failed")
	// ErrPasskey: the passkey is not one this verifier accepts (not ES256,
	// credential ID too long, not active, another person's).
	ErrPasskey = errors.New("passkey refused")
	// ErrBadRequest: a request this endpoint cannot read.
	ErrBadRequest = errors.New("bad request")
)

// Attribute keys of the package's log lines.
const (
	keyPerson     = "person"
	keyCredential = "credential"
	keyError      = "error"
)
