package attestation

import (
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func TestEKPublicKeyRejects(t *testing.T) {
	signing := tpm2.ECCSRKTemplate
	signing.ObjectAttributes.Restricted, signing.ObjectAttributes.Decrypt, signing.ObjectAttributes.SignEncrypt = true, false, true
	for _, tc := range []struct {
		name string
		area []byte
	}{
		{"empty", nil},
		{"oversized", make([]byte, maxEKPublicArea+1)},
		{"garbage", []byte{0x00, 0x23, 0x00}},
		{"signingKey", tpm2.Marshal(signing)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := EKPublicKey(tc.area); !errors.Is(err, ErrMalformed) {
				t.Fatalf("EKPublicKey = %v, want ErrMalformed", err)
			}
		})
	}
}
