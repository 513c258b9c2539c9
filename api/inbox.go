package api

import (
	"crypto/sha256"
	"encoding/hex"
)

// Every session the verifier grants may subscribe only to replies under its
// own inbox prefix, never _INBOX.> (which would read every other session's
// replies: registration challenges, status answers). The prefix follows
// from what the client presents in its CONNECT, so both sides know it
// before the session exists: set it with nats.CustomInboxPrefix.
// agent/client.NATSOptions does; WhoAmI names it for other clients.

// InboxForCredential is the inbox prefix of a session authenticated by a
// credential: nkey is the CONNECT nkey (the credential's lineage, which
// stays the same across rotations).
func InboxForCredential(nkey string) string { return "_INBOX.c." + nkey }

// InboxForToken is the inbox prefix of a join token's enrollment session.
func InboxForToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return "_INBOX.t." + hex.EncodeToString(h[:12])
}

// InboxForHost is the inbox prefix of a host's session by its host proof.
func InboxForHost(hostID string) string { return "_INBOX.h." + hostID }

// InboxForEK is the inbox prefix of an allow-listed EK's enrollment session
// (ekHash: hex SHA-256 of the EK's public key).
func InboxForEK(ekHash string) string {
	if len(ekHash) > 24 {
		ekHash = ekHash[:24]
	}
	return "_INBOX.e." + ekHash
}
