package attestation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
)

// softAssertion signs like the agent does, with a software key: the TPM's
// part is tested against swtpm elsewhere; this tests the checks.
func softAssertion(t *testing.T, k *ecdsa.PrivateKey, rpID, origin, typ string, chal []byte, flags byte, counter uint32) *Assertion {
	t.Helper()
	ad := NewAuthenticatorData(rpID, counter)
	ad.Flags = flags
	authData := ad.Marshal()
	cdj, err := NewClientDataJSON(typ, chal, origin)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(SignedData(authData, cdj))
	sig, err := ecdsa.SignASN1(rand.Reader, k, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return &Assertion{CredentialID: []byte("0123456789abcdef"), AuthData: authData, ClientDataJSON: cdj, Signature: sig}
}

func TestVerifyAssertion(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const rp, origin = "fleet.example.com", "tpmauthn://fleet.example.com"
	chal := NATSChallenge([]byte("nonce-1"))
	want := AssertionCheck{RPIDHash: sha256.Sum256([]byte(rp)), Origin: origin, Challenge: chal, RequireUV: true}
	upuv := FlagUserPresent | FlagUserVerified
	good := softAssertion(t, k, rp, origin, TypeGet, chal, upuv, 7)
	if c, err := VerifyAssertion(good, &k.PublicKey, want); err != nil || c != 7 {
		t.Fatalf("good assertion: %d, %v", c, err)
	}
	tests := []struct {
		name string
		a    *Assertion
		pub  *ecdsa.PublicKey
		want error
	}{
		{"other-nonce", softAssertion(t, k, rp, origin, TypeGet, NATSChallenge([]byte("nonce-2")), upuv, 7), &k.PublicKey, ErrAssertion},
		{"raw-nonce-hash", softAssertion(t, k, rp, origin, TypeGet, func() []byte { h := sha256.Sum256([]byte("nonce-1")); return h[:] }(), upuv, 7), &k.PublicKey, ErrAssertion},
		{"other-rp", softAssertion(t, k, "other.example.com", origin, TypeGet, chal, upuv, 7), &k.PublicKey, ErrAssertion},
		{"other-origin", softAssertion(t, k, rp, "https://fleet.example.com", TypeGet, chal, upuv, 7), &k.PublicKey, ErrAssertion},
		{"create-type", softAssertion(t, k, rp, origin, TypeCreate, chal, upuv, 7), &k.PublicKey, ErrAssertion},
		{"no-up", softAssertion(t, k, rp, origin, TypeGet, chal, FlagUserVerified, 7), &k.PublicKey, ErrAssertion},
		{"no-uv", softAssertion(t, k, rp, origin, TypeGet, chal, FlagUserPresent, 7), &k.PublicKey, ErrAssertion},
		{"other-key", good, &other.PublicKey, ErrAssertion},
		{"bad-cdj", &Assertion{AuthData: good.AuthData, ClientDataJSON: []byte("{"), Signature: good.Signature}, &k.PublicKey, ErrMalformed},
		{"short-authdata", &Assertion{AuthData: good.AuthData[:20], ClientDataJSON: good.ClientDataJSON, Signature: good.Signature}, &k.PublicKey, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := VerifyAssertion(tc.a, tc.pub, want); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// Every flipped byte of a real assertion fails.
	for _, field := range []*[]byte{&good.AuthData, &good.ClientDataJSON, &good.Signature} {
		for i := range *field {
			(*field)[i] ^= 0x01
			if _, err := VerifyAssertion(good, &k.PublicKey, want); err == nil {
				t.Fatalf("byte %d flipped: accepted", i)
			}
			(*field)[i] ^= 0x01
		}
	}
}

func TestVerifyAssertionAgreesWithSwtpmFixture(t *testing.T) {
	// The captured swtpm assertion verifies with the key from the captured
	// registration, using the challenge it was made for.
	a := fixtureAssertion(t)
	ad, err := ParseAuthenticatorData(fixtureRegistrationAuthData(t))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseCOSEKey(ad.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	chal := fixtureChallenge(t)
	want := AssertionCheck{RPIDHash: sha256.Sum256([]byte("fleet.example.com")), Origin: "tpmauthn://fleet.example.com", Challenge: chal, RequireUV: true}
	if c, err := VerifyAssertion(a, pub, want); err != nil || c != 1 {
		t.Fatalf("fixture: %d, %v", c, err)
	}
}

func BenchmarkVerifyAssertion(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chal := NATSChallenge([]byte("nonce"))
	a := softAssertion(&testing.T{}, k, "fleet.example.com", "tpmauthn://fleet.example.com", TypeGet, chal, FlagUserPresent|FlagUserVerified, 1)
	want := AssertionCheck{RPIDHash: sha256.Sum256([]byte("fleet.example.com")), Origin: "tpmauthn://fleet.example.com", Challenge: chal}
	for b.Loop() {
		if _, err := VerifyAssertion(a, &k.PublicKey, want); err != nil {
			b.Fatal(err)
		}
	}
}
