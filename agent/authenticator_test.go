package agent_test

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

const (
	rpID   = "fleet.example.com"
	origin = "tpmauthn://fleet.example.com"
)

// rig is an enrolled authenticator on a fresh swtpm, with its fleet CA.
type rig struct {
	sw   *swtpmtest.TPM
	auth *agent.Authenticator
	ca   *x509.Certificate
	rp   *attestation.RelyingParty
	dir  string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	sw := swtpmtest.New(t)
	ca, caKey, err := attestation.NewCA("test fleet CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sw: sw, ca: ca, dir: t.TempDir()}
	r.auth = r.open(t)
	if err := r.auth.EnrollWithCA(ca, caKey); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	r.rp = newRP(t, ca)
	return r
}

func (r *rig) open(t *testing.T) *agent.Authenticator {
	t.Helper()
	a, err := agent.NewAuthenticator(r.sw.Open(t), r.dir)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newRP(t *testing.T, roots ...*x509.Certificate) *attestation.RelyingParty {
	t.Helper()
	rp, err := attestation.NewRelyingParty(attestation.RPConfig{RPID: rpID, Origins: []string{origin}, FleetRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	return rp
}

func challenge(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// register creates a credential and returns it with its registration JSON.
func (r *rig) register(t *testing.T, chal []byte) (*agent.Credential, []byte) {
	t.Helper()
	resp, cred, err := r.auth.Register(agent.RegisterOptions{Name: "billing", RPID: rpID, Origin: origin, Challenge: chal})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	js, err := json.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	return cred, js
}

func stored(cred *agent.Credential, reg *attestation.Registration) attestation.StoredCredential {
	return attestation.StoredCredential{ID: reg.CredentialID, PublicKey: reg.PublicKey, Counter: reg.Counter, UserHandle: cred.UserHandle}
}

func TestRegistrationVerifiesWithGoWebAuthn(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, js := r.register(t, chal)
	reg, err := r.rp.VerifyRegistration(chal, cred.UserHandle, js)
	if err != nil {
		t.Fatalf("VerifyRegistration: %v", err)
	}
	if string(reg.CredentialID) != string(cred.ID) || reg.Counter != 0 {
		t.Fatalf("registration = id %x counter %d, want id %x counter 0", reg.CredentialID, reg.Counter, cred.ID)
	}
	if reg.AKCert.Subject.String() != "" || reg.AKCert.Version != 3 || reg.AKCert.IsCA {
		t.Fatalf("AK certificate profile: subject %q version %d CA %v", reg.AKCert.Subject, reg.AKCert.Version, reg.AKCert.IsCA)
	}
	id, err := attestation.TPMIdentityFromCertificate(reg.AKCert)
	if err != nil || id.Manufacturer != "id:49424D00" {
		t.Fatalf("AK certificate TPM identity = %+v, %v; want swtpm's manufacturer id:49424D00", id, err)
	}
}

func TestRegistrationRejects(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, js := r.register(t, chal)

	t.Run("wrong-challenge", func(t *testing.T) {
		_, err := r.rp.VerifyRegistration(challenge(t), cred.UserHandle, js)
		wantErr(t, err, attestation.ErrAttestation)
	})
	t.Run("other-fleet-ca", func(t *testing.T) {
		other, _, err := attestation.NewCA("another CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = newRP(t, other).VerifyRegistration(chal, cred.UserHandle, js)
		wantErr(t, err, attestation.ErrAttestation)
	})
	t.Run("ak-cert-from-other-ca", func(t *testing.T) {
		// The same TPM enrolled by a CA the relying party does not trust.
		a2, err := agent.NewAuthenticator(r.auth.TPM(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		r2 := &rig{sw: r.sw, auth: a2}
		other, otherKey, err := attestation.NewCA("rogue CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := a2.EnrollWithCA(other, otherKey); err != nil {
			t.Fatal(err)
		}
		c2, js2 := r2.register(t, chal)
		_, err = r.rp.VerifyRegistration(chal, c2.UserHandle, js2)
		wantErr(t, err, attestation.ErrAttestation)
	})
	for _, field := range []string{"certInfo", "pubArea", "sig"} {
		t.Run("flip-"+field, func(t *testing.T) {
			n := len(attStmtField(t, js, field))
			if n == 0 {
				t.Fatalf("attStmt has no %s", field)
			}
			for i := range n {
				bad := flipAttStmt(t, js, field, i)
				if _, err := r.rp.VerifyRegistration(chal, cred.UserHandle, bad); err == nil {
					t.Fatalf("%s with byte %d of %d flipped was accepted", field, i, n)
				}
			}
		})
	}
}

func decodeRegistration(t *testing.T, js []byte) (*api.RegistrationResponse, map[string]any) {
	t.Helper()
	var resp api.RegistrationResponse
	if err := json.Unmarshal(js, &resp); err != nil {
		t.Fatal(err)
	}
	raw, err := attestation.DecodeB64URL(resp.Response.AttestationObject)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := cbor.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	return &resp, obj
}

func attStmtField(t *testing.T, js []byte, field string) []byte {
	t.Helper()
	_, obj := decodeRegistration(t, js)
	b, _ := obj["attStmt"].(map[any]any)[field].([]byte)
	return b
}

// flipAttStmt flips byte i of an attStmt field and re-encodes the response.
func flipAttStmt(t *testing.T, js []byte, field string, i int) []byte {
	t.Helper()
	resp, obj := decodeRegistration(t, js)
	stmt := obj["attStmt"].(map[any]any)
	b := append([]byte(nil), stmt[field].([]byte)...)
	b[i] ^= 0xff
	stmt[field] = b
	raw, err := cbor.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	resp.Response.AttestationObject = base64url(raw)
	out, err := json.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func base64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

func TestAssertionVerifiesWithGoWebAuthn(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, js := r.register(t, chal)
	reg, err := r.rp.VerifyRegistration(chal, cred.UserHandle, js)
	if err != nil {
		t.Fatal(err)
	}
	sc := stored(cred, reg)
	for want := uint32(1); want <= 3; want++ {
		chal := challenge(t)
		as := r.assert(t, cred, chal)
		got, err := r.rp.VerifyAssertion(sc, chal, as)
		if err != nil {
			t.Fatalf("assertion %d: %v", want, err)
		}
		if got != want {
			t.Fatalf("counter = %d, want %d", got, want)
		}
		sc.Counter = got
	}
}

func (r *rig) assert(t *testing.T, cred *agent.Credential, chal []byte) []byte {
	t.Helper()
	a, err := r.auth.Assert(cred.ID, chal)
	if err != nil {
		t.Fatalf("assert: %v", err)
	}
	js, err := json.Marshal(a.JSON())
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestAssertionRejects(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, js := r.register(t, chal)
	reg, err := r.rp.VerifyRegistration(chal, cred.UserHandle, js)
	if err != nil {
		t.Fatal(err)
	}
	sc := stored(cred, reg)
	chal = challenge(t)
	first := r.assert(t, cred, chal)
	second := r.assert(t, cred, chal)

	t.Run("wrong-challenge", func(t *testing.T) {
		_, err := r.rp.VerifyAssertion(sc, challenge(t), first)
		wantErr(t, err, attestation.ErrAssertion)
	})
	t.Run("wrong-rpid", func(t *testing.T) {
		other, err := attestation.NewRelyingParty(attestation.RPConfig{RPID: "other.example.com", Origins: []string{origin}, FleetRoots: []*x509.Certificate{r.ca}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = other.VerifyAssertion(sc, chal, first)
		wantErr(t, err, attestation.ErrAssertion)
	})
	t.Run("wrong-origin", func(t *testing.T) {
		other, err := attestation.NewRelyingParty(attestation.RPConfig{RPID: rpID, Origins: []string{"tpmauthn://other.example.com"}, FleetRoots: []*x509.Certificate{r.ca}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = other.VerifyAssertion(sc, chal, first)
		wantErr(t, err, attestation.ErrAssertion)
	})
	t.Run("wrong-key", func(t *testing.T) {
		c2, js2 := r.register(t, chal)
		reg2, err := r.rp.VerifyRegistration(chal, c2.UserHandle, js2)
		if err != nil {
			t.Fatal(err)
		}
		wrong := sc
		wrong.PublicKey = reg2.PublicKey
		_, err = r.rp.VerifyAssertion(wrong, chal, first)
		wantErr(t, err, attestation.ErrAssertion)
	})
	for _, field := range []string{"authenticatorData", "clientDataJSON", "signature"} {
		t.Run("flip-"+field, func(t *testing.T) {
			n := len(assertionField(t, first, field))
			for i := range n {
				bad := flipAssertion(t, first, field, i)
				if _, err := r.rp.VerifyAssertion(sc, chal, bad); err == nil {
					t.Fatalf("%s with byte %d of %d flipped was accepted", field, i, n)
				}
			}
		})
	}
	t.Run("counter-equal", func(t *testing.T) {
		c := sc
		c.Counter = 1 // what first carries
		_, err := r.rp.VerifyAssertion(c, chal, first)
		wantErr(t, err, attestation.ErrCounterRegression)
	})
	t.Run("counter-lower", func(t *testing.T) {
		c := sc
		got, err := r.rp.VerifyAssertion(c, chal, second)
		if err != nil {
			t.Fatal(err)
		}
		c.Counter = got
		_, err = r.rp.VerifyAssertion(c, chal, first)
		wantErr(t, err, attestation.ErrCounterRegression)
	})
}

func decodeAssertion(t *testing.T, js []byte) *api.AssertionResponse {
	t.Helper()
	var a api.AssertionResponse
	if err := json.Unmarshal(js, &a); err != nil {
		t.Fatal(err)
	}
	return &a
}

func assertionFieldPtr(a *api.AssertionResponse, field string) *string {
	switch field {
	case "authenticatorData":
		return &a.Response.AuthenticatorData
	case "clientDataJSON":
		return &a.Response.ClientDataJSON
	default:
		return &a.Response.Signature
	}
}

func assertionField(t *testing.T, js []byte, field string) []byte {
	t.Helper()
	b, err := attestation.DecodeB64URL(*assertionFieldPtr(decodeAssertion(t, js), field))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flipAssertion(t *testing.T, js []byte, field string, i int) []byte {
	t.Helper()
	a := decodeAssertion(t, js)
	p := assertionFieldPtr(a, field)
	b, err := attestation.DecodeB64URL(*p)
	if err != nil {
		t.Fatal(err)
	}
	b[i] ^= 0xff
	*p = base64url(b)
	out, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSurvivesRestart: the AK, its certificate and the credentials live in
// the data directory and the TPM's persistent state; a new process on a
// restarted swtpm registers and asserts, and the counter continues.
func TestSurvivesRestart(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, js := r.register(t, chal)
	reg, err := r.rp.VerifyRegistration(chal, cred.UserHandle, js)
	if err != nil {
		t.Fatal(err)
	}
	sc := stored(cred, reg)
	if sc.Counter, err = r.rp.VerifyAssertion(sc, chal, r.assert(t, cred, chal)); err != nil {
		t.Fatal(err)
	}
	if err := r.auth.TPM().Close(); err != nil {
		t.Fatal(err)
	}
	r.sw.Restart(t)
	r.auth = r.open(t) // a new process: everything from disk

	got, err := r.rp.VerifyAssertion(sc, chal, r.assert(t, cred, chal))
	if err != nil {
		t.Fatalf("assertion after restart: %v", err)
	}
	if got <= sc.Counter {
		t.Fatalf("counter after restart = %d, not above %d", got, sc.Counter)
	}
	c2, js2 := r.register(t, chal)
	if _, err := r.rp.VerifyRegistration(chal, c2.UserHandle, js2); err != nil {
		t.Fatalf("registration with the reloaded AK: %v", err)
	}
	creds, err := r.auth.Credentials()
	if err != nil || len(creds) != 2 {
		t.Fatalf("credentials after restart = %d, %v; want 2", len(creds), err)
	}
}

func TestAssertErrors(t *testing.T) {
	r := newRig(t)
	if _, err := r.auth.Assert(make([]byte, 16), challenge(t)); !errors.Is(err, agent.ErrUnknownCredential) {
		t.Fatalf("Assert(unknown) = %v, want ErrUnknownCredential", err)
	}
	if _, err := r.auth.Assert([]byte("../../etc/passwd"), challenge(t)); !errors.Is(err, agent.ErrUnknownCredential) {
		t.Fatalf("Assert(path) = %v, want ErrUnknownCredential", err)
	}
	if _, _, err := r.auth.Register(agent.RegisterOptions{RPID: rpID, Origin: origin, Challenge: []byte("short")}); err == nil {
		t.Fatal("Register with a 5-byte challenge succeeded")
	}
}

func TestRegisterNeedsEnrollment(t *testing.T) {
	sw := swtpmtest.New(t)
	a, err := agent.NewAuthenticator(sw.Open(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = a.Register(agent.RegisterOptions{RPID: rpID, Origin: origin, Challenge: challenge(t)})
	if !errors.Is(err, agent.ErrNotEnrolled) {
		t.Fatalf("Register before enrollment = %v, want ErrNotEnrolled", err)
	}
}

// TestConcurrentAssertionsKeepCounterOrder: assertions for one credential
// are serialized, so a verifier that checks them in completion order never
// sees a counter go backwards.
func TestConcurrentAssertions(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, _ := r.register(t, chal)
	const n = 8
	done := make(chan uint32, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			a, err := r.auth.Assert(cred.ID, chal)
			if err != nil {
				errs <- err
				return
			}
			ad, err := attestation.ParseAuthenticatorData(a.AuthData)
			if err != nil {
				errs <- err
				return
			}
			done <- ad.Counter
		}()
	}
	seen := map[uint32]bool{}
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case c := <-done:
			if seen[c] {
				t.Fatalf("counter %d used twice", c)
			}
			seen[c] = true
		}
	}
	for c := uint32(1); c <= n; c++ {
		if !seen[c] {
			t.Fatalf("counters %v: %d missing", seen, c)
		}
	}
}

// TestCounterPersistedBeforeSignature: whatever counter an assertion carries,
// the data directory already holds a reservation covering it, so a process
// that restarts (or crashes right after signing) never reuses it.
func TestCounterPersistedBeforeSignature(t *testing.T) {
	r := newRig(t)
	cred, _ := r.register(t, challenge(t))
	var last uint32
	for i := range 300 { // crosses a reservation block
		a, err := r.auth.Assert(cred.ID, challenge(t))
		if err != nil {
			t.Fatal(err)
		}
		ad, err := attestation.ParseAuthenticatorData(a.AuthData)
		if err != nil {
			t.Fatal(err)
		}
		if ad.Counter <= last {
			t.Fatalf("assertion %d: counter %d after %d", i, ad.Counter, last)
		}
		last = ad.Counter
		onDisk, err := agent.NewAuthenticator(r.auth.TPM(), r.dir)
		if err != nil {
			t.Fatal(err)
		}
		c, err := onDisk.Credential(cred.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.CounterReserved < ad.Counter {
			t.Fatalf("assertion %d carries counter %d but only %d is persisted", i, ad.Counter, c.CounterReserved)
		}
	}
	// A new process resumes above everything persisted.
	fresh, err := agent.NewAuthenticator(r.auth.TPM(), r.dir)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := fresh.Credential(cred.ID)
	a, err := fresh.Assert(cred.ID, challenge(t))
	if err != nil {
		t.Fatal(err)
	}
	ad, _ := attestation.ParseAuthenticatorData(a.AuthData)
	if ad.Counter <= c.CounterReserved {
		t.Fatalf("restarted agent used counter %d, not above the reservation %d", ad.Counter, c.CounterReserved)
	}
}

// A credential the agent knows is revoked signs nothing, for any relying
// party, and still after a restart (the mark is on disk).
func TestRevokedCredentialNeverSigns(t *testing.T) {
	r := newRig(t)
	chal := challenge(t)
	cred, _ := r.register(t, chal)
	if err := r.auth.MarkRevoked(cred.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if _, err := r.auth.Assert(cred.ID, chal); !errors.Is(err, agent.ErrCredentialRevoked) {
			t.Fatalf("%s: Assert = %v, want ErrCredentialRevoked", when, err)
		}
		if _, err := r.auth.AssertForVerifier(cred.ID, chal); !errors.Is(err, agent.ErrCredentialRevoked) {
			t.Fatalf("%s: AssertForVerifier = %v, want ErrCredentialRevoked", when, err)
		}
	}
	check("marked")
	if err := r.auth.TPM().Close(); err != nil {
		t.Fatal(err)
	}
	r.sw.Restart(t)
	r.auth = r.open(t)
	check("after a restart")
	c, err := r.auth.Credential(cred.ID)
	if err != nil || c.Revoked.IsZero() {
		t.Fatalf("stored credential after restart: revoked %v, %v", c.Revoked, err)
	}
}
