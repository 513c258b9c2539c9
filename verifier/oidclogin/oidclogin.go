package oidclogin

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
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

// Defaults of the global rate of state creation: bounds how fast all
// clients together can fill the logins bucket (16 MB), whose records
// expire after StateTTL or DeviceTTL.
const (
	DefaultStateRate  = 50
	DefaultStateBurst = 200
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
	// StateRate and StateBurst bound the creation of login states and
	// device codes over all clients (defaults DefaultStateRate and
	// DefaultStateBurst): the per-address rate alone lets many addresses
	// fill the logins bucket.
	StateRate  float64
	StateBurst int
	// DevicePoll is the device flow's polling interval (DefaultPoll).
	DevicePoll time.Duration
	// OnBrowserLogin, if set, ends a browser's login (one started at
	// /login/IDP by the browser itself) instead of the "logged in" page:
	// the passkeys' web session (verifier/passkey).
	OnBrowserLogin func(w http.ResponseWriter, r *http.Request, p *record.Person)
	Logger         *slog.Logger
	// Now is the clock of states, codes and device codes (nil: time.Now).
	Now func() time.Time
	// HostName, if set, is an active host's hostname (an error for no such
	// host, or one not active): a login bound to a host must name one, and
	// the pages show its name. Nil: any well-formed host ID, shown as is.
	HostName func(ctx context.Context, id string) (string, error)
	// Offboard acts on the periodic re-check's answers (nil: no re-check).
	Offboard offboarder
	// HeldFile, with Sealer, is where refresh tokens an IdP rotated and the
	// store refused are kept, sealed, until the store takes them (a file
	// in the data directory): a restart does not lose them. Empty: memory
	// only.
	HeldFile string
	Sealer   *people.Sealer
}

// Handler serves the login endpoints.
type Handler struct {
	cfg       Config
	csrfKey   []byte
	origin    string        // the public URL's origin: what a form's Origin must be
	states    *rate.Limiter // the global rate of state creation
	mu        sync.Mutex
	rps       map[string]*relyingParty // by IdP name; rebuilt when its config changes
	rotated   rotated                  // refresh tokens the IdPs rotated that the store has not taken yet
	recheckMu sync.Mutex               // one re-check pass at a time
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
	if cfg.StateRate <= 0 {
		cfg.StateRate = DefaultStateRate
	}
	if cfg.StateBurst <= 0 {
		cfg.StateBurst = DefaultStateBurst
	}
	h := &Handler{cfg: cfg, csrfKey: newCSRFKey(), origin: publicOrigin(cfg.PublicURL),
		states: rate.NewLimiter(rate.Limit(cfg.StateRate), cfg.StateBurst), rps: map[string]*relyingParty{}}
	h.rotated.revoke = func(ctx context.Context, idp, token string) error {
		err := h.RevokeRefresh(ctx, idp, token)
		h.cfg.Logger.Info("re-check: a held refresh token no longer applies (a newer login, offboarding, or the person is gone): revoked at the IdP", keyIdP, idp, "revoke_error", err)
		return err
	}
	h.rotated.warn = func(msg string, err error) { h.cfg.Logger.Warn(msg, keyError, err) }
	if cfg.HeldFile != "" && cfg.Sealer != nil {
		n, err := h.rotated.restore(&heldFile{path: cfg.HeldFile, sealer: cfg.Sealer}, cfg.Now())
		if err != nil {
			h.cfg.Logger.Error("re-check: some refresh tokens the IdPs rotated, held for the store, could not be read back; their people may have to log in again", keyError, err)
		}
		if n > 0 {
			h.cfg.Logger.Info("re-check: refresh tokens the IdPs rotated, held for the store before a restart, read back; written at the next pass", "held", n)
		}
	}
	return h
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
