package keys

import (
	"crypto/ed25519"
	"fmt"

	"github.com/nats-io/nkeys"
)

// fastKeyPair is an nkeys.KeyPair whose Sign and PublicKey use a key
// derived once: nkeys derives the ed25519 key from the seed on every Sign and
// every PublicKey, which costs more than the signature itself, and the
// issuer key signs twice per connect (the user JWT and the callout response;
// jwt asks for the public key each time) and once per audit event.
type fastKeyPair struct {
	nkeys.KeyPair
	priv ed25519.PrivateKey
	pub  string
}

func newFastKeyPair(kp nkeys.KeyPair) (nkeys.KeyPair, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	_, raw, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("decode seed: %w", err)
	}
	if len(raw) != ed25519.SeedSize {
		return nil, fmt.Errorf("seed is %d bytes, want %d", len(raw), ed25519.SeedSize)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return &fastKeyPair{KeyPair: kp, priv: ed25519.NewKeyFromSeed(raw), pub: pub}, nil
}

// PublicKey returns the encoded public key, computed once.
func (f *fastKeyPair) PublicKey() (string, error) { return f.pub, nil }

// Sign signs with the cached key; the signature is the one nkeys makes.
func (f *fastKeyPair) Sign(input []byte) ([]byte, error) { return ed25519.Sign(f.priv, input), nil }
