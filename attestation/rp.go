package attestation

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/go-webauthn/webauthn/metadata"
	"github.com/go-webauthn/webauthn/metadata/providers/memory"
	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/uuid"
)

// RPConfig configures a RelyingParty.
type RPConfig struct {
	RPID    string   // a domain name, e.g. fleet.example.com
	Origins []string // e.g. tpmauthn://fleet.example.com
	// FleetRoots are the CAs whose AK certificates are trusted.
	FleetRoots []*x509.Certificate
}

// RelyingParty verifies registrations and assertions of tpmauthn credentials
// with go-webauthn, and adds the checks the library leaves to its caller.
type RelyingParty struct {
	wa  *webauthn.WebAuthn
	cfg RPConfig
}

// NewRelyingParty builds a relying party whose only trusted authenticator is
// the tpmauthn AAGUID with `attca` attestation chaining to the fleet roots.
// go-webauthn checks an x5c chain only through a metadata provider, so the
// roots are handed to it as an in-memory metadata entry.
func NewRelyingParty(cfg RPConfig) (*RelyingParty, error) {
	if len(cfg.FleetRoots) == 0 {
		return nil, errors.New("relying party: at least one fleet CA root is required")
	}
	mds, err := memory.New(memory.WithMetadata(map[uuid.UUID]*metadata.Entry{
		AAGUID: {
			AaGUID: AAGUID,
			MetadataStatement: metadata.Statement{
				AaGUID:                      AAGUID,
				Description:                 "tpmauthn TPM platform authenticator",
				AttestationTypes:            metadata.AuthenticatorAttestationTypes{metadata.AttCA},
				AttestationRootCertificates: cfg.FleetRoots,
			},
		},
	}))
	if err != nil {
		return nil, fmt.Errorf("relying party: metadata: %w", err)
	}
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          cfg.RPID,
		RPDisplayName: "tpmauthn",
		RPOrigins:     cfg.Origins,
		MDS:           mds,
	})
	if err != nil {
		return nil, fmt.Errorf("relying party: %w", err)
	}
	return &RelyingParty{wa: wa, cfg: cfg}, nil
}

// Registration is a verified registration: what the verifier stores.
type Registration struct {
	CredentialID []byte
	PublicKey    []byte // COSE_Key
	Counter      uint32
	AKCert       *x509.Certificate // x5c[0], chained to a fleet root
}

// VerifyRegistration verifies a registration response (PublicKeyCredential
// JSON) for the challenge the verifier issued and the user handle it chose.
func (rp *RelyingParty) VerifyRegistration(challenge, userHandle, response []byte) (*Registration, error) {
	parsed, err := protocol.ParseCredentialCreationResponseBytes(response)
	if err != nil {
		return nil, fmt.Errorf("%w: registration: %s", ErrMalformed, describe(err))
	}
	// go-webauthn would accept fmt "none" too: require a TPM statement.
	if f := parsed.Response.AttestationObject.Format; f != "tpm" {
		return nil, fmt.Errorf("%w: attestation format %q, want tpm", ErrAttestation, f)
	}
	session := webauthn.SessionData{
		Challenge:        b64(challenge),
		RelyingPartyID:   rp.cfg.RPID,
		UserID:           userHandle,
		UserVerification: protocol.VerificationRequired,
		CredParams: []protocol.CredentialParameter{
			{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgES256},
		},
	}
	if err := checkAKCertTime(parsed.Response.AttestationObject.AttStatement, time.Now()); err != nil {
		return nil, err
	}
	cred, err := rp.wa.CreateCredential(user{id: userHandle}, session, parsed)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrAttestation, describe(err))
	}
	if cred.AttestationFormat != "tpm" || cred.AttestationType != string(metadata.AttCA) {
		return nil, fmt.Errorf("%w: attestation %s/%s, want tpm/attca", ErrAttestation, cred.AttestationFormat, cred.AttestationType)
	}
	if err := checkPubArea(parsed.Response.AttestationObject.AttStatement); err != nil {
		return nil, err
	}
	if _, err := ParseCOSEKey(cred.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAttestation, err)
	}
	x5c, _ := parsed.Response.AttestationObject.AttStatement["x5c"].([]any)
	der, _ := x5c[0].([]byte) // present: the tpm format handler required it
	ak, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: AK certificate: %w", ErrAttestation, err)
	}
	return &Registration{CredentialID: cred.ID, PublicKey: cred.PublicKey, Counter: cred.Authenticator.SignCount, AKCert: ak}, nil
}

// checkAKCertTime refuses an AK certificate outside its validity with an
// error that says what to do, where go-webauthn's would only say the
// attestation failed. A statement without one is left to go-webauthn.
func checkAKCertTime(stmt map[string]any, now time.Time) error {
	x5c, _ := stmt["x5c"].([]any)
	if len(x5c) == 0 {
		return nil
	}
	der, _ := x5c[0].([]byte)
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%w on %s: the verifier renews it at each registration's begin (agents store it from there); an agent that does not, re-enroll its host",
			ErrAKCertExpired, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w: AK certificate valid only from %s (clock skew?)", ErrAttestation, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkPubArea requires a key that was generated in this TPM and can never
// leave it, which go-webauthn does not check (WebAuthn §8.3 leaves key
// properties to the relying party).
func checkPubArea(stmt map[string]any) error {
	raw, ok := stmt["pubArea"].([]byte)
	if !ok {
		return fmt.Errorf("%w: pubArea missing", ErrAttestation)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](raw)
	if err != nil {
		return fmt.Errorf("%w: pubArea: %w", ErrAttestation, err)
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt {
		return fmt.Errorf("%w: key attributes fixedTPM=%v fixedParent=%v sensitiveDataOrigin=%v sign=%v, all required",
			ErrAttestation, a.FixedTPM, a.FixedParent, a.SensitiveDataOrigin, a.SignEncrypt)
	}
	return nil
}

// StoredCredential is what a relying party kept from a registration.
type StoredCredential struct {
	ID         []byte
	PublicKey  []byte // COSE_Key
	Counter    uint32
	UserHandle []byte
}

// VerifyAssertion verifies an assertion (PublicKeyCredential JSON) for the
// challenge and returns the new counter. A counter that does not increase
// fails with ErrCounterRegression: go-webauthn only flags it.
func (rp *RelyingParty) VerifyAssertion(cred StoredCredential, challenge, response []byte) (uint32, error) {
	parsed, err := protocol.ParseCredentialRequestResponseBytes(response)
	if err != nil {
		return 0, fmt.Errorf("%w: assertion: %s", ErrMalformed, describe(err))
	}
	session := webauthn.SessionData{
		Challenge:            b64(challenge),
		RelyingPartyID:       rp.cfg.RPID,
		UserID:               cred.UserHandle,
		AllowedCredentialIDs: [][]byte{cred.ID},
		UserVerification:     protocol.VerificationRequired,
	}
	u := user{id: cred.UserHandle, creds: []webauthn.Credential{{
		ID:            cred.ID,
		PublicKey:     cred.PublicKey,
		Authenticator: webauthn.Authenticator{AAGUID: AAGUID[:], SignCount: cred.Counter},
	}}}
	got, err := rp.wa.ValidateLogin(u, session, parsed)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", ErrAssertion, describe(err))
	}
	if got.Authenticator.CloneWarning || got.Authenticator.SignCount <= cred.Counter {
		return 0, fmt.Errorf("%w: got %d, last seen %d", ErrCounterRegression, parsed.Response.AuthenticatorData.Counter, cred.Counter)
	}
	return got.Authenticator.SignCount, nil
}

// describe flattens go-webauthn's errors, whose detail is in DevInfo.
func describe(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		if pe.DevInfo != "" {
			return pe.Details + ": " + pe.DevInfo
		}
		return pe.Details
	}
	return err.Error()
}

type user struct {
	id    []byte
	creds []webauthn.Credential
}

func (u user) WebAuthnID() []byte                         { return u.id }
func (u user) WebAuthnName() string                       { return "tpmauthn" }
func (u user) WebAuthnDisplayName() string                { return "tpmauthn" }
func (u user) WebAuthnCredentials() []webauthn.Credential { return u.creds }
