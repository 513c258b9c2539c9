// Package natskey connects nats.go as the person of a software key
// (personkey): it signs the server's nonce in the bundle the verifier
// checks for every credential (attestation.MarshalBundle).
package natskey

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/personkey"
)

// SignNonce signs a NATS nonce for the verifier: the bundle to send as
// CONNECT sig.
func SignNonce(k *personkey.Key, nonce []byte) ([]byte, error) {
	id, err := base64.RawURLEncoding.DecodeString(k.NKey())
	if err != nil {
		return nil, fmt.Errorf("credential ID: %w", err)
	}
	counter, err := k.NextCounter()
	if err != nil {
		return nil, err
	}
	authData := attestation.NewAuthenticatorData(k.RPID(), counter).Marshal()
	cdj, err := attestation.NewClientDataJSON(attestation.TypeGet, attestation.NATSChallenge(nonce), attestation.VerifierOrigin(k.RPID()))
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(attestation.SignedData(authData, cdj))
	sig, err := k.Sign(digest[:])
	if err != nil {
		return nil, err
	}
	return attestation.MarshalBundle(&attestation.Assertion{CredentialID: id, AuthData: authData, ClientDataJSON: cdj, Signature: sig})
}

// Options are the nats.go options that connect as the key's person: the
// nonce signed with the key, and the session's own inbox prefix.
func Options(k *personkey.Key) []nats.Option {
	sign := func(nonce []byte) ([]byte, error) { return SignNonce(k, nonce) }
	return []nats.Option{nats.Nkey(k.NKey(), sign), nats.CustomInboxPrefix(api.InboxForCredential(k.NKey()))}
}
