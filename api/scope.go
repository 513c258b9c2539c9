package api

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// The v1 endpoints learn who calls them from the subject, never from a
// header: every session that may call them is granted exactly its own
// scope's subjects (Scope.Permission), and the server enforces that on
// publish. A request's Nats-Request-Info header, which the server writes,
// is no proof: nats-server strips a client's copy only where it starts a
// CRLF line, and nats.go splits header lines at a bare LF, stops at a bare
// blank line and drops headers it cannot decode, so a client can make the
// verifier read its own.

// SubjectV1Prefix prefixes every v1 subject: SubjectV1Prefix + KIND.ID.OP.
const SubjectV1Prefix = "tpmauthn.v1."

// Kinds of caller, the first token of a scope.
const (
	ScopeHost  = "h" // a host's agent: its credential's session, or its host proof's
	ScopeToken = "t" // the enrollment session of one join token: the secret's hash
	ScopeEK    = "k" // the enrollment session of one allow-listed EK: its hash
)

// The v1 operations; each kind of caller may call some (verifier/verifier.go
// serves each on the scopes that may call it).
const (
	OpEnrollBegin       = "enroll.begin"   // ScopeToken, ScopeEK
	OpEnrollFinish      = "enroll.finish"  // ScopeToken, ScopeEK
	OpEnrollStatus      = "enroll.status"  // ScopeHost
	OpRegisterBegin     = "register.begin" // ScopeHost
	OpRegisterFinish    = "register.finish"
	OpCredentialsStatus = "credentials.status" // ScopeHost
	OpCredentialsWatch  = "credentials.watch"  // ScopeHost
	OpPersonLogout      = "person.logout"      // ScopeHost
)

// Scope is who calls the v1 API: a kind and its ID.
type Scope struct {
	Kind string
	ID   string
}

// HostScope is host id's agent's scope.
func HostScope(id string) Scope { return Scope{ScopeHost, id} }

// TokenScope is the scope of the session a join token opened.
func TokenScope(token string) Scope { return Scope{ScopeToken, JoinTokenHash(token)} }

// EKScope is the scope of the session an allow-listed EK opened (ekHash:
// hex SHA-256 of its public key).
func EKScope(ekHash string) Scope { return Scope{ScopeEK, ekHash} }

// JoinTokenHash is what the verifier keeps of a join token: the hex SHA-256
// of its secret (the CA pin is public, and not part of it). It is the ID of
// its session's scope.
func JoinTokenHash(token string) string {
	secret, _ := SplitJoinToken(token)
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// scopeID is what a scope's ID may hold: one subject token with no
// wildcard (host IDs, hex hashes).
var scopeID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Valid reports whether s names a kind and an ID that is one plain subject
// token: a permission built from anything else could cover other scopes.
func (s Scope) Valid() bool {
	return (s.Kind == ScopeHost || s.Kind == ScopeToken || s.Kind == ScopeEK) && scopeID.MatchString(s.ID)
}

// Subject is where a session of this scope calls op.
func (s Scope) Subject(op string) string { return SubjectV1Prefix + s.Kind + "." + s.ID + "." + op }

// Permission is the publish permission of a session of this scope: its own
// subjects and no other scope's.
func (s Scope) Permission() string { return SubjectV1Prefix + s.Kind + "." + s.ID + ".>" }

// Endpoint is the subject the verifier serves op on for every caller of
// kind.
func Endpoint(kind, op string) string { return SubjectV1Prefix + kind + ".*." + op }

// ParseScope returns the scope a v1 subject names, and false for any other
// subject.
func ParseScope(subject string) (Scope, bool) {
	rest, ok := strings.CutPrefix(subject, SubjectV1Prefix)
	if !ok {
		return Scope{}, false
	}
	kind, rest, _ := strings.Cut(rest, ".")
	id, op, _ := strings.Cut(rest, ".")
	s := Scope{kind, id}
	if op == "" || !s.Valid() {
		return Scope{}, false
	}
	return s, true
}

// LegacyV1Subjects are where agents before host-scoped subjects called the
// v1 API: the verifier answers them with ErrUpgradeAgent, so an old agent
// says what to do instead of timing out.
var LegacyV1Subjects = []string{SubjectV1Prefix + "enroll.>", SubjectV1Prefix + "register.>", SubjectV1Prefix + "credentials.>"}
