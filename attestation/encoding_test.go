package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/tpmauthn/tpmauthn/api"
)

// fixtureAssertion is a real assertion captured from swtpm.
func fixtureAssertion(t testing.TB) *Assertion {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "swtpm", "assertion.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r api.AssertionResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	a, err := DecodeAssertionResponse(&r)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fixtureRegistrationAuthData is the authenticator data (with attested
// credential data) of a real registration captured from swtpm.
func fixtureRegistrationAuthData(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "swtpm", "registration.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r api.RegistrationResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	raw, err := DecodeB64URL(r.Response.AttestationObject)
	if err != nil {
		t.Fatal(err)
	}
	var obj AttestationObject
	if err := cbor.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	if obj.Fmt != "tpm" || obj.AttStmt.Ver != "2.0" || obj.AttStmt.Alg != COSEAlgES256 || len(obj.AttStmt.X5C) != 1 {
		t.Fatalf("fixture attestation object: fmt %q ver %q alg %d x5c %d", obj.Fmt, obj.AttStmt.Ver, obj.AttStmt.Alg, len(obj.AttStmt.X5C))
	}
	return obj.AuthData
}

func TestBundleRoundTrip(t *testing.T) {
	a := fixtureAssertion(t)
	b, err := MarshalBundle(a)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.CredentialID, a.CredentialID) || !bytes.Equal(got.AuthData, a.AuthData) ||
		!bytes.Equal(got.ClientDataJSON, a.ClientDataJSON) || !bytes.Equal(got.Signature, a.Signature) {
		t.Fatal("bundle round trip changed the assertion")
	}
	t.Logf("bundle: %d bytes, %d in base64url", len(b), len(b64(b)))
}

func TestUnmarshalBundleRejects(t *testing.T) {
	good, err := MarshalBundle(fixtureAssertion(t))
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"version-0", mod(func(b []byte) []byte { b[0] = 0; return b })},
		{"version-2", mod(func(b []byte) []byte { b[0] = 2; return b })},
		{"trailing-byte", append(append([]byte(nil), good...), 0)},
		{"id-len-0", mod(func(b []byte) []byte { b[1] = 0; return b })},
		{"id-len-too-long", mod(func(b []byte) []byte { b[1] = 0xff; return b })},
		{"oversized", make([]byte, MaxBundleLen+1)},
		{"sig-too-short", func() []byte {
			a := *fixtureAssertion(t)
			a.Signature = a.Signature[:4]
			return rawBundle(a)
		}()},
		{"authdata-too-short", func() []byte {
			a := *fixtureAssertion(t)
			a.AuthData = a.AuthData[:36]
			return rawBundle(a)
		}()},
	}
	for n := 1; n < len(good); n++ {
		tests = append(tests, struct {
			name string
			in   []byte
		}{"truncated", good[:n]})
	}
	for _, tc := range tests {
		if _, err := UnmarshalBundle(tc.in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s (%d bytes): err = %v, want ErrMalformed", tc.name, len(tc.in), err)
		}
	}
}

// rawBundle encodes fields without MarshalBundle's size checks.
func rawBundle(a Assertion) []byte {
	b := []byte{BundleVersion, byte(len(a.CredentialID))}
	b = append(b, a.CredentialID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.AuthData)))
	b = append(b, a.AuthData...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.ClientDataJSON)))
	b = append(b, a.ClientDataJSON...)
	b = append(b, byte(len(a.Signature)))
	return append(b, a.Signature...)
}

func TestMarshalBundleRejectsOversized(t *testing.T) {
	a := *fixtureAssertion(t)
	a.ClientDataJSON = bytes.Repeat([]byte("x"), maxBundleClientData+1)
	if _, err := MarshalBundle(&a); !errors.Is(err, ErrMalformed) {
		t.Fatalf("MarshalBundle with oversized clientDataJSON = %v", err)
	}
}

func TestBundleFitsConnectLine(t *testing.T) {
	// The largest bundle we produce must leave room in NATS's 4096-byte
	// CONNECT line for the rest of the JSON.
	a := fixtureAssertion(t)
	a.Signature = make([]byte, 72)
	b, err := MarshalBundle(a)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(b64(b)); n > 1024 {
		t.Fatalf("encoded bundle is %d bytes; keep it well under 4096", n)
	}
}

func TestAuthenticatorDataRoundTrip(t *testing.T) {
	for name, raw := range map[string][]byte{
		"assertion":    fixtureAssertion(t).AuthData,
		"registration": fixtureRegistrationAuthData(t),
	} {
		t.Run(name, func(t *testing.T) {
			ad, err := ParseAuthenticatorData(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ad.Marshal(), raw) {
				t.Fatal("Marshal(Parse(x)) != x")
			}
			want := sha256.Sum256([]byte("fleet.example.com"))
			if ad.RPIDHash != want || ad.Flags&FlagUserPresent == 0 {
				t.Fatalf("rpIdHash %x flags %#x", ad.RPIDHash, ad.Flags)
			}
			if name == "registration" && (ad.AAGUID != AAGUID || len(ad.CredentialID) != credentialIDByteLen) {
				t.Fatalf("attested data: aaguid %v id %d bytes", ad.AAGUID, len(ad.CredentialID))
			}
		})
	}
}

func TestParseAuthenticatorDataRejects(t *testing.T) {
	reg := fixtureRegistrationAuthData(t)
	plain := fixtureAssertion(t).AuthData
	mod := func(src []byte, f func(b []byte) []byte) []byte { return f(append([]byte(nil), src...)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short", plain[:36]},
		{"trailing", append(append([]byte(nil), plain...), 0)},
		{"extensions-flag", mod(plain, func(b []byte) []byte { b[32] |= FlagExtensions; return b })},
		{"attested-flag-no-data", mod(plain, func(b []byte) []byte { b[32] |= FlagAttested; return b })},
		{"id-len-0", mod(reg, func(b []byte) []byte { b[53], b[54] = 0, 0; return b })},
		{"id-len-65", mod(reg, func(b []byte) []byte { b[53], b[54] = 0, 65; return b })},
		{"id-len-past-end", mod(reg, func(b []byte) []byte { b[53], b[54] = 0x03, 0xff; return b })},
		{"trailing-after-key", append(append([]byte(nil), reg...), 0xa0)},
		{"key-truncated", reg[:len(reg)-1]},
		{"oversized", make([]byte, MaxAuthDataLen+1)},
	}
	for _, tc := range tests {
		if _, err := ParseAuthenticatorData(tc.in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", tc.name, err)
		}
	}
}

func TestCOSEKey(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	x, y := pt[1:33], pt[33:]
	enc, err := EncodeCOSEKey(x, y)
	if err != nil {
		t.Fatal(err)
	}
	// CTAP2 canonical order: 1, 3, -1, -2, -3.
	if !bytes.HasPrefix(enc, []byte{0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20}) {
		t.Fatalf("COSE key not in canonical form: %x", enc[:10])
	}
	got, err := ParseCOSEKey(enc)
	if err != nil || !got.Equal(&k.PublicKey) {
		t.Fatalf("ParseCOSEKey = %v, %v", got, err)
	}
	offCurve := append([]byte(nil), y...)
	offCurve[31] ^= 1
	bad := map[string]map[int]any{
		"rsa-kty":   {1: 3, 3: -7, -1: 1, -2: x, -3: y},
		"es384-alg": {1: 2, 3: -35, -1: 1, -2: x, -3: y},
		"p384-crv":  {1: 2, 3: -7, -1: 2, -2: x, -3: y},
		"short-x":   {1: 2, 3: -7, -1: 1, -2: x[1:], -3: y},
		"off-curve": {1: 2, 3: -7, -1: 1, -2: x, -3: offCurve},
		"missing-y": {1: 2, 3: -7, -1: 1, -2: x},
	}
	for name, m := range bad {
		b, err := cbor.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseCOSEKey(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"garbage":       []byte("not cbor"),
		"duplicate-key": {0xa2, 0x01, 0x02, 0x01, 0x02},
		"indefinite":    {0xbf, 0x01, 0x02, 0xff},
		"oversized":     make([]byte, maxCOSEKeyLen+1),
	} {
		if _, err := ParseCOSEKey(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	if _, err := EncodeCOSEKey(x[1:], y); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeCOSEKey with a 31-byte coordinate = %v", err)
	}
}

func TestNATSChallengeIsDomainSeparated(t *testing.T) {
	nonce := []byte("server-nonce")
	plain := sha256.Sum256(nonce)
	c := NATSChallenge(nonce)
	if bytes.Equal(c, plain[:]) || len(c) != 32 {
		t.Fatal("NATS challenge is not domain-separated")
	}
	if bytes.Equal(c, NATSChallenge([]byte("server-noncf"))) {
		t.Fatal("different nonces gave the same challenge")
	}
}

func TestClientDataJSONShape(t *testing.T) {
	b, err := NewClientDataJSON(TypeGet, []byte{0xfb, 0xff}, "tpmauthn://fleet.example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"webauthn.get","challenge":"-_8","origin":"tpmauthn://fleet.example.com","crossOrigin":false}`
	if string(b) != want {
		t.Fatalf("clientDataJSON = %s\nwant %s", b, want)
	}
}

func TestDecodeB64URL(t *testing.T) {
	for in, want := range map[string]string{"-_8": "\xfb\xff", "-_8=": "\xfb\xff", "": ""} {
		got, err := DecodeB64URL(in)
		if err != nil || string(got) != want {
			t.Errorf("DecodeB64URL(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"+/8", "a", "!!"} {
		if _, err := DecodeB64URL(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeB64URL(%q) = %v, want ErrMalformed", in, err)
		}
	}
}

func TestAssertionResponseDecodeRejects(t *testing.T) {
	good := fixtureAssertion(t).JSON()
	bad := *good
	bad.Type = "password"
	if _, err := DecodeAssertionResponse(&bad); !errors.Is(err, ErrMalformed) {
		t.Errorf("type password: %v", err)
	}
	bad = *good
	bad.Response.Signature = "***"
	if _, err := DecodeAssertionResponse(&bad); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "signature") {
		t.Errorf("bad signature encoding: %v", err)
	}
}

func fixtureChallenge(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "swtpm", "challenge.txt"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeB64URL(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
