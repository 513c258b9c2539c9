package record

import (
	"github.com/tpmauthn/tpmauthn/api"

	"time"
)

// Token is a join token (bucket tokens, key = hex SHA-256 of the token; the
// token itself is never stored).
type Token struct {
	V       int       `json:"v"`
	ID      string    `json:"id"` // first 12 hex digits of the hash: what operators see
	Hash    string    `json:"hash"`
	Roles   []string  `json:"roles"`
	Tags    []string  `json:"tags,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	UsedBy  string    `json:"used_by,omitempty"` // host ID once used
	UsedAt  time.Time `json:"used_at,omitzero"`
	// Revoked is when an operator revoked the token before its use.
	Revoked time.Time `json:"revoked,omitzero"`
}

// State of a token as operators see it.
func (t *Token) State(now time.Time) string {
	switch {
	case t.UsedBy != "":
		return "used"
	case !t.Revoked.IsZero():
		return "revoked"
	case !now.Before(t.Expires):
		return "expired"
	default:
		return "valid"
	}
}

// TokenHash is a join token's key in the tokens bucket (hex SHA-256): the
// token itself is never stored.
func TokenHash(token string) string {
	return api.JoinTokenHash(token)
}
