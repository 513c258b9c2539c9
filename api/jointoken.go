package api

import "strings"

// A join token as tpmauthnctl prints it is its secret, then, when the
// verifier has a NATS CA of its own, "." and that CA's pin
// ("sha256-" + base64url of its public key's SHA-256): the agent verifies
// the server it sends the secret to against that CA before anything else
// (as kubeadm's discovery hash). Only the secret goes to the verifier, and
// only its hash is kept.

// SplitJoinToken returns a join token's secret and CA pin ("" if none).
func SplitJoinToken(token string) (secret, pin string) {
	secret, pin, _ = strings.Cut(token, ".")
	return secret, pin
}

// JoinToken joins a secret and a pin ("" : none).
func JoinToken(secret, pin string) string {
	if pin == "" {
		return secret
	}
	return secret + "." + pin
}
