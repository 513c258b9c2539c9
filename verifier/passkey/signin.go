package passkey

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// signInBegin answers options for a discoverable sign-in: no user named,
// the authenticator offers the person's passkeys for this RP.
func (h *Handler) signInBegin(w http.ResponseWriter, r *http.Request) {
	if err := h.cfg.Guard.CheckOrigin(r); err != nil {
		h.failJSON(w, r, err)
		return
	}
	if !h.signIns.Allow() {
		h.failJSON(w, r, fmt.Errorf("%w: sign-ins are being started faster than %v/s", api.ErrUnavailable, h.signIns.Limit()))
		return
	}
	opts, sess, err := h.wa.BeginDiscoverableLogin(webauthn.WithUserVerification(protocol.VerificationRequired))
	if err != nil {
		h.failJSON(w, r, fmt.Errorf("%w: %w", ErrCeremony, err))
		return
	}
	token, err := h.newCeremony(r.Context(), &ceremony{Kind: ceremonySignIn, Session: *sess})
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	writeJSON(w, map[string]any{"ceremony": token, "publicKey": opts.Response})
}

// signInFinish verifies a passkey-only sign-in: the passkey active, its
// person active at an IdP still in the policy (whose re-checks keep
// vouching for them), its counter new (or a synced passkey's 0), and starts
// a web session for a login's lifetime.
func (h *Handler) signInFinish(w http.ResponseWriter, r *http.Request) {
	if err := h.cfg.Guard.CheckOrigin(r); err != nil {
		h.failJSON(w, r, err)
		return
	}
	ctx := r.Context()
	ev := audit.Deny("passkey.signin")
	ev.Actor, ev.ClientAddr = "person", clientAddr(r)
	p, cred, err := h.verifySignIn(r, &ev)
	if err != nil {
		ev.Reason = err.Error()
		h.cfg.Trail.RecordNow(ctx, ev)
		h.failJSON(w, r, err)
		return
	}
	ev.Result, ev.Reason = audit.OK, "signed in with passkey "+cred.Label
	if err := h.cfg.Trail.RecordDurable(ctx, ev); err != nil {
		h.failJSON(w, r, err)
		return
	}
	h.startSession(w, p, cred.ID, h.cfg.Now().Add(h.loginTTL()))
	writeJSON(w, map[string]any{"person": p.ID})
}

func (h *Handler) verifySignIn(r *http.Request, ev *audit.Event) (*record.Person, *record.Credential, error) {
	ctx := r.Context()
	c, err := h.takeCeremony(ctx, r.URL.Query().Get("ceremony"), ceremonySignIn)
	if err != nil {
		return nil, nil, err
	}
	b, err := readBody(r, 64<<10)
	if err != nil {
		return nil, nil, err
	}
	parsed, err := protocol.ParseCredentialRequestResponseBody(bytes.NewReader(b))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrCeremony, err)
	}
	var (
		p    *record.Person
		cred *record.Credential
	)
	find := func(rawID, userHandle []byte) (webauthn.User, error) {
		id := base64.RawURLEncoding.EncodeToString(rawID)
		ev.Credential = id
		got, _, err := store.Get[record.Credential](ctx, h.cfg.Store.Credentials, id)
		if errors.Is(err, api.ErrNotFound) {
			return nil, fmt.Errorf("%w: unknown passkey %s", ErrPasskey, id)
		}
		if err != nil {
			return nil, err
		}
		ev.Person = got.Person
		if p, err = h.activePerson(ctx, got.Person); err != nil {
			return nil, err
		}
		if cred, err = h.personsPasskey(ctx, p, id); err != nil {
			return nil, err
		}
		if !bytes.Equal(userHandle, cred.UserHandle) {
			return nil, fmt.Errorf("%w: user handle is not the passkey's", ErrPasskey)
		}
		wc := webauthn.Credential{ID: rawID, PublicKey: cred.PublicKey,
			Flags:         webauthn.CredentialFlags{UserPresent: true, UserVerified: true, BackupEligible: cred.Synced},
			Authenticator: webauthn.Authenticator{SignCount: cred.Counter}}
		return &user{p: p, creds: []webauthn.Credential{wc}}, nil
	}
	if _, _, err := h.wa.ValidatePasskeyLogin(find, c.Session, parsed); err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.DevInfo != "" {
			err = fmt.Errorf("%w: %s", err, pe.DevInfo)
		}
		if !errors.Is(err, ErrPasskey) && !errors.Is(err, ErrNoSession) {
			err = fmt.Errorf("%w: %w", ErrCeremony, err)
		}
		return nil, nil, err
	}
	if err := h.acceptCounter(r, cred, parsed.Response.AuthenticatorData.Counter); err != nil {
		return nil, nil, err
	}
	return p, cred, nil
}

// acceptCounter records a passkey assertion's counter (compare-and-set);
// one that is not new quarantines the passkey, as on a NATS connect.
func (h *Handler) acceptCounter(r *http.Request, cred *record.Credential, n uint32) error {
	ctx := r.Context()
	_, _, err := store.Mutate(ctx, h.cfg.Store.Credentials, cred.ID, func(c *record.Credential) error {
		c.Updated = h.cfg.Now().UTC()
		return c.AcceptCounter(n)
	})
	if errors.Is(err, record.ErrCounterRegression) {
		if _, qerr := h.cfg.Fleet.SetCredentialStatus(ctx, cred.ID, api.CredentialQuarantined, err.Error(), nil); qerr != nil {
			h.cfg.Logger.Error("quarantine failed", keyCredential, cred.ID, keyError, qerr)
		}
		return fmt.Errorf("%w: %w", api.ErrReplay, err)
	}
	return err
}

// localPath is next if it is a path of this site, else def.
func localPath(next, def string) string {
	if strings.HasPrefix(next, "/") && !strings.HasPrefix(next, "//") && !strings.ContainsAny(next, "\\\r\n") {
		return next
	}
	return def
}
