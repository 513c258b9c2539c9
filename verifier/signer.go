package verifier

import (
	"crypto/ed25519"
	"fmt"

	"github.com/nats-io/nkeys"
)

// fastKeyPair is an nkeys.KeyPair whose Sign uses an ed25519 key derived
// once: nkeys derives the key from the seed on every Sign, which costs more
// than the signature itself, and the issuer key signs twice per connect
// (the user JWT and the callout response) and once per audit event.
type fastKeyPair struct {
	nkeys.KeyPair
	priv ed25519.PrivateKey
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
	return &fastKeyPair{KeyPair: kp, priv: ed25519.NewKeyFromSeed(raw)}, nil
}

// Sign signs with the cached key; the signature is the one nkeys makes.
func (f *fastKeyPair) Sign(input []byte) ([]byte, error) { return ed25519.Sign(f.priv, input), nil }
