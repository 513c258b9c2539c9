package oidclogin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// finishLoopback ends a CLI's login: a one-time code, bound to the CLI's
// PKCE challenge, sent to its loopback address. Whoever else receives the
// code (another local user listening on that port, a log) cannot redeem it
// without the CLI's verifier.
func (h *Handler) finishLoopback(w http.ResponseWriter, r *http.Request, st *record.LoginState, p *record.Person) {
	code := randomToken()
	c := &record.LoginCode{V: record.Version, Person: p.ID, Challenge: st.Challenge, Expires: h.cfg.Now().UTC().Add(CodeTTL), Bound: st.Bound}
	if err := store.Create(r.Context(), h.cfg.Store.Logins, "code."+record.SecretKey(code), c); err != nil {
		h.fail(w, r, fmt.Errorf("store login code: %w", err))
		return
	}
	cb, err := url.Parse(st.Callback) // checked at the start
	if err != nil {
		h.fail(w, r, fmt.Errorf("%w: callback: %w", ErrBadRequest, err))
		return
	}
	q := cb.Query()
	q.Set("code", code)
	cb.RawQuery = q.Encode()
	http.Redirect(w, r, cb.String(), http.StatusFound)
}

// cliToken redeems a loopback login's one-time code with the PKCE verifier
// of its challenge, for a login grant (RFC 6749 §4.1.3's shape).
func (h *Handler) cliToken(w http.ResponseWriter, r *http.Request) {
	if err := h.notFromPage(r); err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	if r.PostFormValue("grant_type") != api.GrantTypeCode {
		oauthError(w, http.StatusBadRequest, api.OAuthUnsupported, "grant_type must be "+api.GrantTypeCode)
		return
	}
	code, verifier := r.PostFormValue("code"), r.PostFormValue("code_verifier")
	if code == "" || verifier == "" {
		oauthError(w, http.StatusBadRequest, api.OAuthInvalidRequest, "code and code_verifier are required")
		return
	}
	// Taken before the verifier is checked: a code is tried once.
	c, err := takeRecord[record.LoginCode](r.Context(), h.cfg.Store, "code."+record.SecretKey(code), ErrCode)
	if err == nil && !h.cfg.Now().Before(c.Expires) {
		err = fmt.Errorf("%w: expired", ErrCode)
	}
	if err == nil && subtle.ConstantTimeCompare([]byte(s256(verifier)), []byte(c.Challenge)) != 1 {
		err = fmt.Errorf("%w: the code_verifier does not match the challenge", ErrCode)
	}
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	h.grant(w, r, c.Person, record.FlowLoopback, c.Bound)
}

// grantBinding reads where a login's grant will be redeemed (get: the
// query's or the form's fields): api.FormGrantHost and FormGrantUID, or
// FormGrantKey, and nothing else. A host must be an active host of the
// fleet (Config.HostName), looked up once: where is the binding as the
// pages name it. Whoever asks learns no more than that a host is not an
// active one (not whether it exists, nor its status: the detail is logged).
func (h *Handler) grantBinding(ctx context.Context, get func(string) string) (bound *record.GrantBinding, where string, err error) {
	host, uid, key := get(api.FormGrantHost), get(api.FormGrantUID), get(api.FormGrantKey)
	switch {
	case key != "" && host == "" && uid == "":
		if !validThumbprint(key) {
			return nil, "", fmt.Errorf("%w: %s: the hex SHA-256 of the software key's public key", ErrBadRequest, api.FormGrantKey)
		}
		b := &record.GrantBinding{Key: key}
		return b, describe(b, ""), nil
	case key == "" && host != "" && uid != "":
		n, err := strconv.ParseUint(uid, 10, 32)
		if err != nil || !validHostID(host) {
			return nil, "", fmt.Errorf("%w: %s and %s: a host ID and a decimal uid", ErrBadRequest, api.FormGrantHost, api.FormGrantUID)
		}
		name, err := h.activeHostName(ctx, host)
		if err != nil {
			return nil, "", err
		}
		b := &record.GrantBinding{Host: host, UID: uint32(n)}
		return b, describe(b, name), nil
	}
	return nil, "", ErrUnbound
}

// activeHostName is the hostname of an active host of the fleet ("" when
// the Handler has no way to look hosts up). A host the fleet does not have,
// or has but not active, is ErrNotInFleet, with no more said; a store that
// cannot answer is its own error (a 503, not the client's fault).
func (h *Handler) activeHostName(ctx context.Context, host string) (string, error) {
	if h.cfg.HostName == nil {
		return "", nil
	}
	name, err := h.cfg.HostName(ctx, host)
	switch {
	case errors.Is(err, api.ErrNotFound), errors.Is(err, api.ErrHostNotActive):
		h.cfg.Logger.Info("login names a host not active in the fleet", keyError, err)
		return "", ErrNotInFleet
	case err != nil:
		return "", fmt.Errorf("looking up host %s: %w", host, err)
	}
	return name, nil
}

// describe says where a binding is, for a page: the host's ID first (the
// fleet's own name for it), then the hostname it reported at enrollment
// when the fleet knows it (the host chose that one).
func describe(b *record.GrantBinding, hostName string) string {
	switch {
	case b == nil:
		return "an unknown place"
	case b.Key != "":
		return "a software key (SHA-256 " + b.Key[:16] + "…)"
	case hostName != "":
		return fmt.Sprintf("local user %d on host %s (hostname %s)", b.UID, b.Host, hostName)
	}
	return fmt.Sprintf("local user %d on host %s", b.UID, b.Host)
}

// describeNow is describe with the host's name looked up now (a host since
// revoked is named by its ID alone).
func (h *Handler) describeNow(ctx context.Context, b *record.GrantBinding) string {
	name := ""
	if b != nil && b.Host != "" {
		name, _ = h.activeHostName(ctx, b.Host)
	}
	return describe(b, name)
}

// validHostID: what an enrollment names a host (h-<hex>), loosely: short,
// and nothing a page or a log would have to escape.
func validHostID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validThumbprint: 64 lowercase hex digits.
func validThumbprint(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// grant answers a token request with a login grant for the person, bound
// where the client said when the login started.
func (h *Handler) grant(w http.ResponseWriter, r *http.Request, personID, flow string, bound *record.GrantBinding) {
	p, err := h.cfg.People.Person(r.Context(), personID)
	if err == nil && !p.Disabled.IsZero() {
		err = fmt.Errorf("%w: %s", people.ErrDisabled, p.ID)
	}
	var res *api.LoginResult
	if err == nil {
		res, err = h.cfg.People.Grant(r.Context(), p, flow, clientAddr(r), bound)
	}
	if err != nil {
		h.tokenFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// tokenFailed answers a token endpoint's refusal in RFC 6749 §5.2's form.
func (h *Handler) tokenFailed(w http.ResponseWriter, r *http.Request, err error) {
	h.cfg.Logger.Warn("token request refused", keyError, err, "path", r.URL.Path, "client", clientAddr(r))
	switch {
	case errors.Is(err, api.ErrUnavailable):
		oauthError(w, http.StatusServiceUnavailable, api.OAuthTemporarilyDown, "the verifier's store is unavailable; retry")
	case errors.Is(err, people.ErrAudit), errors.Is(err, ErrBusy):
		oauthError(w, http.StatusServiceUnavailable, api.OAuthTemporarilyDown, "the verifier cannot take logins now; retry")
	case errors.Is(err, people.ErrDisabled):
		oauthError(w, http.StatusBadRequest, api.OAuthAccessDenied, people.ErrDisabled.Error())
	case errors.Is(err, people.ErrIdentity):
		oauthError(w, http.StatusBadRequest, api.OAuthAccessDenied, people.ErrIdentity.Error())
	case errors.Is(err, ErrCrossOrigin):
		oauthError(w, http.StatusForbidden, api.OAuthInvalidRequest, ErrCrossOrigin.Error())
	case errors.Is(err, ErrCode), errors.Is(err, people.ErrGrantInvalid):
		oauthError(w, http.StatusBadRequest, api.OAuthInvalidGrant, ErrCode.Error())
	case errors.Is(err, ErrBadRequest):
		oauthError(w, http.StatusBadRequest, api.OAuthInvalidRequest, err.Error())
	default:
		oauthError(w, http.StatusInternalServerError, api.OAuthInvalidRequest, "internal error")
	}
}

// s256 is RFC 7636 §4.2's code challenge of a verifier.
func s256(verifier string) string {
	h := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

func oauthError(w http.ResponseWriter, code int, oauthCode, desc string) {
	writeJSON(w, code, api.OAuthError{Code: oauthCode, Description: desc})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store") // RFC 6749 §5.1
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
