package passkey

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// jsonRequest admits a JSON request of a signed-in browser's page: the
// verifier's own origin, a JSON body (which no cross-site form can send
// without a CORS preflight), a valid session.
func (h *Handler) jsonRequest(r *http.Request) (*Session, *record.Person, error) {
	if err := h.cfg.Guard.CheckOrigin(r); err != nil {
		return nil, nil, err
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return nil, nil, fmt.Errorf("%w: Content-Type %q, want application/json", ErrBadRequest, r.Header.Get("Content-Type"))
	}
	return h.Current(r)
}

func readBody(r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: body over %d bytes", ErrBadRequest, limit)
	}
	return b, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// Status maps an error to an HTTP status and what the person is told: the
// sentinel's text, never the detail (which goes to the log and the audit).
func Status(err error) (int, string) {
	for _, m := range []struct {
		err  error
		code int
	}{
		{ErrNoSession, http.StatusUnauthorized}, {ErrCeremony, http.StatusBadRequest}, {ErrPasskey, http.StatusForbidden},
		{ErrBadRequest, http.StatusBadRequest}, {api.ErrLoginInvalid, http.StatusForbidden}, {api.ErrReplay, http.StatusForbidden},
		{people.ErrDisabled, http.StatusForbidden}, {people.ErrIdentity, http.StatusForbidden}, {api.ErrForbidden, http.StatusForbidden},
		{api.ErrUnavailable, http.StatusServiceUnavailable}, {people.ErrAudit, http.StatusServiceUnavailable},
		{api.ErrNotFound, http.StatusNotFound},
	} {
		if errors.Is(err, m.err) {
			return m.code, m.err.Error()
		}
	}
	if errors.Is(err, oidclogin.ErrCrossOrigin) {
		return http.StatusForbidden, oidclogin.ErrCrossOrigin.Error()
	}
	return http.StatusInternalServerError, "internal error"
}

func (h *Handler) failJSON(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := Status(err)
	h.cfg.Logger.Warn("passkey request refused", keyError, err, "path", r.URL.Path, "client", clientAddr(r))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// fail answers a page request: without a session, to the sign-in page.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrNoSession) && r.Method == http.MethodGet {
		http.Redirect(w, r, PathSignIn+"?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	code, msg := Status(err)
	h.cfg.Logger.Warn("page refused", keyError, err, "path", r.URL.Path, "client", clientAddr(r))
	h.Render(w, code, "error", map[string]any{"Message": msg})
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
