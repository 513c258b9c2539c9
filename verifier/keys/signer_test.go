package keys

import (
	"bytes"
	"log/slog"
	"strings"
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

func TestKeysNeverLogged(t *testing.T) {
	k, _, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("keys", "keys", k)
	seed, _ := k.Issuer.Seed()
	if !strings.Contains(buf.String(), "[REDACTED]") || strings.Contains(buf.String(), string(seed)) || strings.Contains(buf.String(), "PRIVATE") {
		t.Fatalf("logged: %s", buf.String())
	}
}
