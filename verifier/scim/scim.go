package scim

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/elimity-com/scim"
	"github.com/elimity-com/scim/optional"
	"github.com/elimity-com/scim/schema"

	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// PathPrefix is where the service is mounted: PathPrefix + <idp> + "/".
const PathPrefix = "/scim/v2/"

// workTimeout bounds one request's work (an offboarding kicks in
// parallel, well within a second; the IdP's RFC 7009 call is bounded at
// 5 s).
const workTimeout = 30 * time.Second

// maxBody bounds a request body (a group push with thousands of members
// fits; the library reads the body whole).
const maxBody = 1 << 20

func init() {
	// Entra ID sends booleans as strings ("False"). The setting is the
	// library's global; nothing else in the verifier uses the library.
	schema.SetAllowStringValues(true)
}

// Sentinel errors (compare with errors.Is).
var (
	// ErrUnauthorized: no bearer token, or not the token of the path's IdP.
	ErrUnauthorized = errors.New("SCIM bearer token refused")
	// ErrNoToken: the path's IdP has no SCIM token configured (or it
	// cannot be read): SCIM is off for it, every request refused.
	ErrNoToken = errors.New("no SCIM token configured for this IdP")
)

type offboarder interface {
	Offboard(ctx context.Context, id, reason, actor string) (*offboard.Result, error)
	Regroup(ctx context.Context, id string, change func([]string) []string, actor string) (int, error)
}

// Config is what a Handler needs.
type Config struct {
	People   *people.Service
	Offboard offboarder
	Store    *store.Store
	Policy   func() *policy.Policy
	Logger   *slog.Logger
	// Now is the clock of group records (nil: time.Now).
	Now func() time.Time
}

// Handler serves SCIM for every IdP with a token.
type Handler struct {
	cfg Config
	srv scim.Server
}

// New returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{cfg: cfg}
	srv, err := scim.NewServer(&scim.ServerArgs{
		ServiceProviderConfig: &scim.ServiceProviderConfig{
			SupportFiltering: true, SupportPatch: true, MaxResults: 200,
			AuthenticationSchemes: []scim.AuthenticationScheme{{Type: scim.AuthenticationTypeOauthBearerToken,
				Name: "OAuth Bearer Token", Description: "the IdP's SCIM token (scim_token_file / scim_token_env)", Primary: true}},
		},
		ResourceTypes: []scim.ResourceType{
			{ID: optional.NewString("User"), Name: "User", Endpoint: "/Users", Schema: schema.CoreUserSchema(),
				SchemaExtensions: []scim.SchemaExtension{{Schema: schema.ExtensionEnterpriseUser()}}, Handler: &users{h}},
			{ID: optional.NewString("Group"), Name: "Group", Endpoint: "/Groups", Schema: schema.CoreGroupSchema(), Handler: &groups{h}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("scim server: %w", err)
	}
	h.srv = srv
	return h, nil
}

// Register mounts the service on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle(PathPrefix+"{idp}/", h)
}

type idpKey struct{}

// ServeHTTP authenticates the request as its path's IdP and serves it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("idp")
	idp := h.cfg.Policy().People.IdP(name)
	if idp == nil {
		writeError(w, http.StatusNotFound, "no such IdP")
		return
	}
	if err := authorize(idp, r.Header.Get("Authorization")); err != nil {
		// The token itself is never logged.
		h.cfg.Logger.Warn("SCIM request refused", keyIdP, name, keyError, err, "client", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="tpmauthn-scim"`)
		writeError(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	// An IdP that hangs up mid-request must not stop an offboarding half
	// way (disabled, credentials still live): the work outlives the
	// connection, bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), workTimeout)
	defer cancel()
	r2 := r.WithContext(context.WithValue(ctx, idpKey{}, idp))
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, PathPrefix+name)
	r2.URL.RawPath = ""
	h.srv.ServeHTTP(w, r2)
}

func writeError(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/scim+json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"%d","detail":%q}`, status, detail)
}

// authorize checks header against idp's SCIM token: both hashed, compared
// in constant time (the digests hide the token's length too).
func authorize(idp *policy.IdP, header string) error {
	want, err := token(idp)
	if err != nil {
		return err
	}
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || got == "" {
		return fmt.Errorf("%w: no bearer token", ErrUnauthorized)
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return fmt.Errorf("%w: not %s's token", ErrUnauthorized, idp.Name)
	}
	return nil
}

// minToken is the shortest SCIM token accepted: a guessable one is off.
const minToken = 16

// token reads idp's SCIM token from its file or environment variable, on
// every request (a rotated token takes effect at once).
func token(idp *policy.IdP) (string, error) {
	var t string
	switch {
	case idp.SCIMTokenEnv != "":
		t = os.Getenv(idp.SCIMTokenEnv)
	case idp.SCIMTokenFile != "":
		b, err := os.ReadFile(idp.SCIMTokenFile)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %w", ErrNoToken, idp.Name, err)
		}
		t = strings.TrimSpace(string(b))
	}
	if len(t) < minToken {
		return "", fmt.Errorf("%w: %s (set scim_token_file or scim_token_env to a token of at least %d characters)", ErrNoToken, idp.Name, minToken)
	}
	return t, nil
}

// idpOf is the authenticated request's IdP.
func idpOf(r *http.Request) *policy.IdP {
	return r.Context().Value(idpKey{}).(*policy.IdP)
}

// actor names the IdP's SCIM client in the audit trail.
func actor(idp *policy.IdP) string { return offboard.SourceSCIM + ":" + idp.Name }

// Attribute keys of the package's log lines.
const (
	keyIdP    = "idp"
	keyError  = "error"
	keyPerson = "person"
)
