package attestation

import (
	"bytes"
	"testing"
)

// The seed corpus in testdata/fuzz runs in every go test; `make fuzz` explores.

func FuzzUnmarshalBundle(f *testing.F) {
	if b, err := MarshalBundle(fixtureAssertion(f)); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := UnmarshalBundle(b)
		if err != nil {
			return
		}
		// Invariant: the encoding is canonical.
		again, err := MarshalBundle(a)
		if err != nil {
			t.Fatalf("decoded bundle does not re-encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
	})
}

func FuzzParseAuthenticatorData(f *testing.F) {
	f.Add(fixtureAssertion(f).AuthData)
	f.Add(fixtureRegistrationAuthData(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		ad, err := ParseAuthenticatorData(b)
		if err != nil {
			return
		}
		if !bytes.Equal(ad.Marshal(), b) {
			t.Fatalf("Marshal(Parse(x)) != x for %x", b)
		}
		if ad.Flags&FlagAttested != 0 {
			if _, err := ParseCOSEKey(ad.PublicKey); err != nil {
				t.Fatalf("accepted attested data with a bad key: %v", err)
			}
		}
	})
}

func FuzzParseCOSEKey(f *testing.F) {
	ad, err := ParseAuthenticatorData(fixtureRegistrationAuthData(f))
	if err == nil {
		f.Add(ad.PublicKey)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseCOSEKey(b)
		if err != nil {
			return
		}
		if !k.Curve.IsOnCurve(k.X, k.Y) { //nolint:staticcheck // the point check is the invariant
			t.Fatal("accepted a point off the curve")
		}
	})
}
