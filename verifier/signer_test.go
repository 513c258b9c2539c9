package verifier

import (
	"bytes"
	"testing"

	"github.com/nats-io/nkeys"
)

func TestFastKeyPairSignsLikeNkeys(t *testing.T) {
	kp, _ := nkeys.CreateAccount()
	fast, err := newFastKeyPair(kp)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("audit event hash")
	a, _ := kp.Sign(msg)
	b, _ := fast.Sign(msg)
	if !bytes.Equal(a, b) {
		t.Fatal("signatures differ")
	}
	if err := kp.Verify(msg, b); err != nil {
		t.Fatal(err)
	}
	pa, _ := kp.PublicKey()
	pb, _ := fast.PublicKey()
	if pa != pb {
		t.Fatal("public keys differ")
	}
}

func BenchmarkIssuerSign(b *testing.B) {
	kp, _ := nkeys.CreateAccount()
	fast, _ := newFastKeyPair(kp)
	msg := []byte("0123456789abcdef0123456789abcdef")
	b.Run("nkeys", func(b *testing.B) {
		for b.Loop() {
			_, _ = kp.Sign(msg)
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			_, _ = fast.Sign(msg)
		}
	})
}
