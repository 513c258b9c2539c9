package passkey

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/register"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// user is a person as go-webauthn sees them (webauthn.User).
type user struct {
	p     *record.Person
	creds []webauthn.Credential
}

var _ webauthn.User = (*user)(nil)

// UserHandle is a person's WebAuthn user handle: SHA-256 of a label and
// their person ID, so a person's passkeys share it (an authenticator keeps
// one passkey per user and RP) and it holds nothing personal (WebAuthn
// §14.6.1).
func UserHandle(personID string) []byte {
	h := sha256.Sum256([]byte("tpmauthn/user-handle/v1\x00" + personID))
	return h[:]
}

func (u *user) WebAuthnID() []byte { return UserHandle(u.p.ID) }
func (u *user) WebAuthnName() string {
	if u.p.Email != "" {
		return u.p.Email
	}
	return u.p.ID
}
func (u *user) WebAuthnDisplayName() string {
	if u.p.Name != "" {
		return u.p.Name
	}
	return u.WebAuthnName()
}
func (u *user) WebAuthnCredentials() []webauthn.Credential { return u.creds }

// ceremony is a WebAuthn ceremony under way (bucket logins, key
// "ceremony." + SecretKey(token)): one use, then taken.
type ceremony struct {
	V       int                  `json:"v"`
	Kind    string               `json:"kind"` // ceremonyRegister, ceremonySignIn, ceremonySessionKey
	Person  string               `json:"person,omitempty"`
	Label   string               `json:"label,omitempty"`
	Session webauthn.SessionData `json:"session"`
	// SPKI and Nonce (ceremonySessionKey): the session key certified and
	// the verifier's nonce its certification's challenge binds.
	SPKI    []byte    `json:"spki,omitempty"`
	Nonce   []byte    `json:"nonce,omitempty"`
	Expires time.Time `json:"expires"`
}

func (c *ceremony) RecordVersion() int { return c.V }

const (
	ceremonyRegister   = "register"
	ceremonySignIn     = "signin"
	ceremonySessionKey = "session-key"
)

// newCeremony stores c and returns its token.
func (h *Handler) newCeremony(ctx context.Context, c *ceremony) (string, error) {
	token := randomToken()
	c.V, c.Expires = record.Version, h.cfg.Now().Add(CeremonyTTL)
	if err := store.Create(ctx, h.cfg.Store.Logins, "ceremony."+record.SecretKey(token), c); err != nil {
		return "", fmt.Errorf("store passkey ceremony: %w", err)
	}
	return token, nil
}

// takeCeremony consumes the ceremony token names, of kind: unknown, taken,
// expired or of another kind is ErrCeremony.
func (h *Handler) takeCeremony(ctx context.Context, token, kind string) (*ceremony, error) {
	key := "ceremony." + record.SecretKey(token)
	c, rev, err := store.Get[ceremony](ctx, h.cfg.Store.Logins, key)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("%w: unknown or used", ErrCeremony)
	}
	if err != nil {
		return nil, err
	}
	if err := store.Take(ctx, h.cfg.Store.Logins, key, rev); err != nil {
		if errors.Is(err, api.ErrConflict) {
			return nil, fmt.Errorf("%w: used", ErrCeremony)
		}
		return nil, err
	}
	if c.Kind != kind || !h.cfg.Now().Before(c.Expires) {
		return nil, fmt.Errorf("%w: expired or not a %s", ErrCeremony, kind)
	}
	return c, nil
}

// es256 is the only algorithm offered: the NATS bundle and its verifier
// are ECDSA P-256.
var es256 = []protocol.CredentialParameter{{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgES256}}

// registerBegin answers a signed-in person's request for passkey creation
// options: ES256 only, a discoverable credential, user verification.
func (h *Handler) registerBegin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Label string `json:"label"`
	}
	_, p, mine, ok := h.beginJSON(w, r, &req)
	if !ok {
		return
	}
	var exclude []protocol.CredentialDescriptor
	for _, c := range mine {
		if id, err := base64.RawURLEncoding.DecodeString(c.ID); err == nil {
			exclude = append(exclude, protocol.CredentialDescriptor{Type: protocol.PublicKeyCredentialType, CredentialID: id})
		}
	}
	opts, sess, err := h.wa.BeginRegistration(&user{p: p},
		webauthn.WithCredentialParameters(es256),
		webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{
			ResidentKey: protocol.ResidentKeyRequirementRequired, RequireResidentKey: protocol.ResidentKeyRequired(),
			UserVerification: protocol.VerificationRequired}),
		webauthn.WithExclusions(exclude),
		webauthn.WithConveyancePreference(protocol.PreferNoAttestation))
	if err != nil {
		h.failJSON(w, r, fmt.Errorf("%w: %w", ErrCeremony, err))
		return
	}
	token, err := h.newCeremony(r.Context(), &ceremony{Kind: ceremonyRegister, Person: p.ID, Label: label(req.Label, r), Session: *sess})
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	writeJSON(w, map[string]any{"ceremony": token, "publicKey": opts.Response})
}

// registerFinish verifies the new passkey and stores it, listed with its
// person (compare-and-set: a person disabled meanwhile gets none).
func (h *Handler) registerFinish(w http.ResponseWriter, r *http.Request) {
	_, p, err := h.jsonRequest(r)
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	ctx := r.Context()
	c, err := h.takeCeremony(ctx, r.URL.Query().Get("ceremony"), ceremonyRegister)
	if err == nil && c.Person != p.ID {
		err = fmt.Errorf("%w: the ceremony is another person's", ErrCeremony)
	}
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	ev := audit.Deny("passkey.register")
	ev.Person, ev.Actor, ev.ClientAddr = p.ID, "person", clientAddr(r)
	cred, err := h.createPasskey(r, p, c)
	if err != nil {
		ev.Reason = err.Error()
		h.cfg.Trail.RecordNow(ctx, ev)
		h.failJSON(w, r, err)
		return
	}
	ev.Result, ev.Credential, ev.Workload = audit.OK, cred.ID, cred.Workload
	ev.Reason = fmt.Sprintf("passkey %q (%s)", cred.Label, assuranceText(cred))
	h.cfg.Trail.RecordNow(ctx, ev)
	h.cfg.Logger.Info("passkey registered", keyPerson, p.ID, keyCredential, cred.ID, "synced", cred.Synced)
	writeJSON(w, map[string]any{"id": cred.ID, "synced": cred.Synced})
}

func (h *Handler) createPasskey(r *http.Request, p *record.Person, c *ceremony) (*record.Credential, error) {
	ctx := r.Context()
	parsed, err := protocol.ParseCredentialCreationResponseBody(http.MaxBytesReader(nil, r.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCeremony, err)
	}
	wc, err := h.wa.CreateCredential(&user{p: p}, c.Session, parsed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCeremony, err)
	}
	// The NATS bundle carries the ID in at most 64 bytes, and the key must
	// be P-256 (ES256 was the only algorithm offered; an authenticator
	// could still answer otherwise).
	if len(wc.ID) == 0 || len(wc.ID) > attestation.MaxCredentialIDLen {
		return nil, fmt.Errorf("%w: credential ID of %d bytes (at most %d)", ErrPasskey, len(wc.ID), attestation.MaxCredentialIDLen)
	}
	if _, err := attestation.ParseCOSEKey(wc.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: not an ES256 key: %w", ErrPasskey, err)
	}
	now := h.cfg.Now().UTC()
	cred := &record.Credential{V: record.Version, ID: base64.RawURLEncoding.EncodeToString(wc.ID), Workload: register.PersonName(p),
		PublicKey: wc.PublicKey, UserHandle: UserHandle(p.ID), Counter: wc.Authenticator.SignCount, Status: api.CredentialActive,
		Created: now, Updated: now, Person: p.ID, Kind: record.KindPasskey, Assurance: policy.AssuranceHardware,
		Synced: wc.Flags.BackupEligible, Label: c.Label, AAGUID: hex.EncodeToString(wc.Authenticator.AAGUID)}
	if cred.Synced {
		// Copied to other devices by its provider: not one device's key.
		cred.Assurance = policy.AssuranceSoftware
	}
	if err := h.storeLinked(ctx, p, cred); err != nil {
		return nil, err
	}
	return cred, nil
}

// storeLinked stores a new browser credential listed with its person
// (people.Service.AddCredential: not listed, because the person was
// disabled meanwhile, it is deleted again: it would escape their
// offboarding).
func (h *Handler) storeLinked(ctx context.Context, _ *record.Person, cred *record.Credential) error {
	if _, err := h.cfg.People.AddCredential(ctx, cred); err != nil {
		return err
	}
	h.cfg.Fleet.CredentialCreated(cred.ID)
	return nil
}

// passkeysOf lists p's browser credentials that are active and unexpired
// (passkeys first, then session keys).
func (h *Handler) passkeysOf(ctx context.Context, p *record.Person) ([]*record.Credential, error) {
	var keys, sessions []*record.Credential
	now := h.cfg.Now()
	for _, id := range p.Credentials {
		c, _, err := store.Get[record.Credential](ctx, h.cfg.Store.Credentials, id)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !c.Browser() || c.Person != p.ID || c.Status != api.CredentialActive || c.Expired(now) {
			continue
		}
		if c.Kind == record.KindPasskey {
			keys = append(keys, c)
		} else {
			sessions = append(sessions, c)
		}
	}
	return append(keys, sessions...), nil
}

// remove revokes one of the person's passkeys (and the session keys it
// certified): their sessions are kicked, their next connect refused.
func (h *Handler) remove(w http.ResponseWriter, r *http.Request) {
	_, p, err := h.Current(r)
	if err == nil {
		err = h.CheckForm(r)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	id := r.PostFormValue("id")
	if err := h.revokePasskey(r.Context(), p, id, "removed by its person", "person"); err != nil {
		h.fail(w, r, err)
		return
	}
	http.Redirect(w, r, PathPasskeys, http.StatusSeeOther)
}

// revokePasskey revokes p's passkey id and the session keys it certified.
func (h *Handler) revokePasskey(ctx context.Context, p *record.Person, id, reason, actor string) error {
	ev := audit.Deny("passkey.remove")
	ev.Person, ev.Credential, ev.Actor, ev.Reason = p.ID, id, actor, reason
	_, err := h.cfg.Fleet.SetCredentialStatus(ctx, id, api.CredentialRevoked, reason, func(c *record.Credential) error {
		if c.Person != p.ID || !c.Browser() {
			return fmt.Errorf("%w: %s is not a passkey of %s", ErrPasskey, id, p.ID)
		}
		return nil
	})
	if err != nil {
		ev.Reason += ": " + err.Error()
		h.cfg.Trail.RecordNow(ctx, ev)
		return err
	}
	ev.Result = audit.OK
	h.cfg.Trail.RecordNow(ctx, ev)
	h.revokeSessionKeys(ctx, p, func(c *record.Credential) bool { return c.Certifier == id }, "its passkey was removed")
	return nil
}

// label is the person's name for the device, and the browser (from its
// User-Agent), bounded: for listings only.
func label(name string, r *http.Request) string {
	name = strings.TrimSpace(name)
	if len(name) > 40 {
		name = name[:40]
	}
	ua := browserName(r.UserAgent())
	if name == "" {
		return ua
	}
	return name + " (" + ua + ")"
}

func browserName(ua string) string {
	for _, b := range []string{"Edg/", "Firefox/", "Chrome/", "Safari/"} {
		if i := strings.Index(ua, b); i >= 0 {
			v, _, _ := strings.Cut(ua[i+len(b):], ".")
			return strings.TrimSuffix(b, "/") + " " + v
		}
	}
	return "a browser"
}

func assuranceText(c *record.Credential) string {
	if c.Synced {
		return "synced passkey"
	}
	return "device-bound passkey"
}

// beginJSON admits a ceremony's first request (jsonRequest), reads its
// body into req, and lists the person's browser credentials; false: it
// answered the refusal.
func (h *Handler) beginJSON(w http.ResponseWriter, r *http.Request, req any) (*Session, *record.Person, []*record.Credential, bool) {
	s, p, err := h.jsonRequest(r)
	var mine []*record.Credential
	if err == nil {
		err = decodeJSON(r, req)
	}
	if err == nil {
		mine, err = h.passkeysOf(r.Context(), p)
	}
	if err != nil {
		h.failJSON(w, r, err)
		return nil, nil, nil, false
	}
	return s, p, mine, true
}

// decodeJSON reads a small JSON body (an empty one is {}).
func decodeJSON(r *http.Request, v any) error {
	b, err := readBody(r, 16<<10)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return nil
}
