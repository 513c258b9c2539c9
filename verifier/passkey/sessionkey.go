package passkey

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/register"
)

// A session key is a browser's ECDSA P-256 WebCrypto key, created
// non-extractable and kept in IndexedDB, that signs the NATS nonce without
// a prompt for the rest of a web session. One passkey assertion certifies
// it, over
//
//	challenge = SHA-256("tpmauthn/session-key/v1\0" ‖ SPKI ‖ nonce)
//
// where SPKI is the key's DER SubjectPublicKeyInfo and nonce 32 random
// bytes this verifier chose for this one certification (a ceremony, used
// once): the assertion names this key and no other, and cannot be
// replayed. The assertion is checked as a connect's (RP ID hash, the pages'
// origin, user present and verified, signature, counter). The key's record
// (record.KindSessionKey) names its person, its certifier (which must stay
// active for the key to connect), the certifier's synced flag, assurance
// software, and expires with the web session.
const sessionKeyLabel = "tpmauthn/session-key/v1\x00"

// SessionKeyChallenge is the challenge a passkey signs to certify a
// session key.
func SessionKeyChallenge(spki, nonce []byte) []byte {
	h := sha256.New()
	h.Write([]byte(sessionKeyLabel))
	h.Write(spki)
	h.Write(nonce)
	return h.Sum(nil)
}

// sessionKeyBegin: the signed-in browser's key to certify; the answer is
// the challenge and the person's passkeys to sign it with.
func (h *Handler) sessionKeyBegin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SPKI string `json:"spki"`
	}
	_, p, mine, ok := h.beginJSON(w, r, &req)
	if !ok {
		return
	}
	spki, err := base64.RawURLEncoding.DecodeString(req.SPKI)
	if err == nil {
		_, err = parseP256(spki)
	}
	if err != nil {
		h.failJSON(w, r, fmt.Errorf("%w: spki: %w", ErrBadRequest, err))
		return
	}
	var allow []string
	for _, c := range mine {
		if c.Kind == record.KindPasskey {
			allow = append(allow, c.ID)
		}
	}
	if len(allow) == 0 {
		h.failJSON(w, r, fmt.Errorf("%w: register a passkey first", ErrPasskey))
		return
	}
	nonce := make([]byte, 32)
	_, _ = rand.Read(nonce) // never fails (crypto/rand, Go 1.24)
	token, err := h.newCeremony(r.Context(), &ceremony{Kind: ceremonySessionKey, Person: p.ID, SPKI: spki, Nonce: nonce})
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	writeJSON(w, map[string]any{"ceremony": token, "challenge": base64.RawURLEncoding.EncodeToString(SessionKeyChallenge(spki, nonce)),
		"rpId": h.rpID, "allowCredentials": allow})
}

// sessionKeyFinish checks the certification (a bundle, as a connect's) and
// stores the session key.
func (h *Handler) sessionKeyFinish(w http.ResponseWriter, r *http.Request) {
	s, p, err := h.jsonRequest(r)
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	ctx := r.Context()
	ev := audit.Deny("session-key.certify")
	ev.Person, ev.Actor, ev.ClientAddr = p.ID, "person", clientAddr(r)
	cred, err := h.certify(r, s, p, &ev)
	if err != nil {
		ev.Reason = err.Error()
		h.cfg.Trail.RecordNow(ctx, ev)
		h.failJSON(w, r, err)
		return
	}
	ev.Result, ev.Reason = audit.OK, fmt.Sprintf("session key %s certified by passkey %s until %s", cred.ID, cred.Certifier, cred.Expires.Format(time.RFC3339))
	h.cfg.Trail.RecordNow(ctx, ev)
	writeJSON(w, map[string]any{"id": cred.ID, "expires": cred.Expires})
}

func (h *Handler) certify(r *http.Request, s *Session, p *record.Person, ev *audit.Event) (*record.Credential, error) {
	ctx := r.Context()
	c, err := h.takeCeremony(ctx, r.URL.Query().Get("ceremony"), ceremonySessionKey)
	if err == nil && c.Person != p.ID {
		err = fmt.Errorf("%w: the ceremony is another person's", ErrCeremony)
	}
	if err != nil {
		return nil, err
	}
	var req struct {
		Bundle string `json:"bundle"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return nil, err
	}
	raw, err := base64.RawURLEncoding.DecodeString(req.Bundle)
	if err != nil {
		return nil, fmt.Errorf("%w: bundle is not base64url", ErrBadRequest)
	}
	a, err := attestation.UnmarshalBundle(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCeremony, err)
	}
	pkID := base64.RawURLEncoding.EncodeToString(a.CredentialID)
	ev.Credential = pkID
	pk, err := h.personsPasskey(ctx, p, pkID)
	if err != nil {
		return nil, err
	}
	pub, err := attestation.ParseCOSEKey(pk.PublicKey)
	if err != nil {
		return nil, err
	}
	n, err := attestation.VerifyAssertion(a, pub, attestation.AssertionCheck{RPIDHash: h.rpIDHash, Origin: h.origin,
		Challenge: SessionKeyChallenge(c.SPKI, c.Nonce), RequireUV: true})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCeremony, err)
	}
	if err := h.acceptCounter(r, pk, n); err != nil {
		return nil, err
	}
	key, _ := parseP256(c.SPKI) // checked at the beginning
	cose, err := attestation.EncodeCOSEKey(key.X.FillBytes(make([]byte, 32)), key.Y.FillBytes(make([]byte, 32)))
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	now := h.cfg.Now().UTC()
	cred := &record.Credential{V: record.Version, ID: base64.RawURLEncoding.EncodeToString(id), Workload: register.PersonName(p),
		PublicKey: cose, UserHandle: UserHandle(p.ID), Status: api.CredentialActive, Created: now, Updated: now,
		Person: p.ID, Expires: time.Unix(s.Expires, 0).UTC(), Assurance: policy.AssuranceSoftware,
		Kind: record.KindSessionKey, Synced: pk.Synced, Certifier: pk.ID, Label: "session key of " + pk.Label,
		WebSession: record.SecretKey(s.Nonce)}
	if err := h.storeLinked(ctx, p, cred); err != nil {
		return nil, err
	}
	return cred, nil
}

// parseP256 reads a P-256 public key's SPKI.
func parseP256(spki []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("not an ECDSA P-256 key")
	}
	return ek, nil
}
