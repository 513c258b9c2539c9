// Package softkey registers people's software keys (api.PathPersonKey): a
// person on a machine without a TPM (or its agent) redeems their login
// grant for a credential whose key is a file of theirs (personkey). It is a
// person's credential like any other (listed with them, revoked at
// offboarding, expiring with the login) with no host and assurance
// "software", which bindings that require hardware refuse.
package softkey

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/personkey"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/register"
)

type persons interface {
	Redeem(ctx context.Context, token string, at *record.GrantBinding) (*record.LoginGrant, *record.Person, error)
	AddCredential(ctx context.Context, cred *record.Credential) ([]string, error)
}

type auditor interface {
	RecordNow(context.Context, audit.Event)
}

// Config is what the handler needs.
type Config struct {
	People persons
	RPID   string
	// NATSURL is given to the key's owner: where its programs connect.
	NATSURL string
	Trail   auditor
	Logger  *slog.Logger
}

// Handler serves api.PathPersonKey.
type Handler struct{ cfg Config }

// New returns the handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg}
}

// Register mounts the endpoint on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathPersonKey, h.serve)
}

const maxBody = 4096

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	// A program's endpoint: a page of any origin has no business here.
	if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") == "cross-site" || r.Header.Get("Sec-Fetch-Site") == "same-site" {
		fail(w, http.StatusForbidden, "not from a browser page")
		return
	}
	grant, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || grant == "" {
		fail(w, http.StatusUnauthorized, "send the login grant as Authorization: Bearer")
		return
	}
	var req api.PersonKeyRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "request body: "+err.Error())
		return
	}
	pub, err := checkKey(req, grant)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := h.register(r.Context(), grant, pub, personkey.Thumbprint(req.PublicKey))
	switch {
	case errors.Is(err, people.ErrGrantInvalid), errors.Is(err, people.ErrDisabled), errors.Is(err, people.ErrIdentity):
		fail(w, http.StatusForbidden, err.Error())
	case errors.Is(err, people.ErrAudit), errors.Is(err, api.ErrUnavailable):
		fail(w, http.StatusServiceUnavailable, "the verifier cannot record this now; retry")
	case err != nil:
		h.cfg.Logger.Error("software key not registered", "error", err)
		fail(w, http.StatusInternalServerError, "not registered (see the verifier's log)")
	default:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	}
}

// checkKey parses the public key (P-256) and checks the proof of
// possession over the grant.
func checkKey(req api.PersonKeyRequest, grant string) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("public_key: %w", err)
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("public_key: a P-256 ECDSA key")
	}
	if !ecdsa.VerifyASN1(pub, personkey.ProofDigest(grant), req.Proof) {
		return nil, errors.New("proof: not a signature by this key over the grant")
	}
	return pub, nil
}

func (h *Handler) register(ctx context.Context, grant string, pub *ecdsa.PublicKey, thumbprint string) (*api.PersonKeyResponse, error) {
	// Only the key the login was made for (its proof of possession was
	// checked above); a host's grant is not redeemed here.
	g, p, err := h.cfg.People.Redeem(ctx, grant, &record.GrantBinding{Key: thumbprint})
	if err != nil {
		return nil, err
	}
	pt, err := pub.ECDH() // the uncompressed point: 0x04 ‖ X ‖ Y
	if err != nil {
		return nil, err
	}
	raw := pt.Bytes()
	cose, err := attestation.EncodeCOSEKey(raw[1:33], raw[33:65])
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	cred := &record.Credential{V: record.Version, ID: base64.RawURLEncoding.EncodeToString(id), Workload: register.PersonName(p),
		PublicKey: cose, Status: api.CredentialActive, Created: now, Updated: now,
		Person: p.ID, Expires: g.LoginExpires, Assurance: policy.AssuranceSoftware}
	ev := audit.Event{Kind: "register", Result: audit.Error, Person: p.ID, Workload: cred.Workload, Credential: cred.ID, Actor: "person",
		Reason: "person's software key, until " + cred.Expires.Format(time.RFC3339)}
	if _, err := h.cfg.People.AddCredential(ctx, cred); err != nil {
		ev.Reason += ": " + err.Error()
		h.cfg.Trail.RecordNow(ctx, ev)
		return nil, err
	}
	ev.Result = audit.OK
	h.cfg.Trail.RecordNow(ctx, ev)
	h.cfg.Logger.Info("person's software key registered", "person", p.ID, "credential", cred.ID)
	return &api.PersonKeyResponse{CredentialID: cred.ID, RPID: h.cfg.RPID, Name: cred.Workload, Expires: cred.Expires, NATSURL: h.cfg.NATSURL,
		Person: api.Person{ID: p.ID, IdP: p.IdP, Subject: p.Subject, Name: p.Name, Email: p.Email}}, nil
}

func fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
