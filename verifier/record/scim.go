package record

import "time"

// SCIMUser is what an IdP's SCIM client said of a person (RFC 7643 §4.1):
// the attributes it identifies them by, and whether they are active.
type SCIMUser struct {
	UserName   string    `json:"user_name,omitempty"`
	ExternalID string    `json:"external_id,omitempty"`
	Active     bool      `json:"active"`
	Updated    time.Time `json:"updated"`
}

// SCIMGroup is a group an IdP's SCIM client created (bucket people, key
// SCIMGroupKey(idp, id): never a person's ID, which has no '.').
// Members are person IDs of the same IdP; Name is what the person's groups
// list (the name the policy's bindings use).
type SCIMGroup struct {
	V          int       `json:"v"`
	ID         string    `json:"id"`
	IdP        string    `json:"idp"`
	Name       string    `json:"name"`
	Display    string    `json:"display"`
	ExternalID string    `json:"external_id,omitempty"`
	Members    []string  `json:"members,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
}

// RecordVersion implements Versioned.
func (g *SCIMGroup) RecordVersion() int { return g.V }

// SCIMGroupPrefix starts the key of every SCIM group in the people bucket.
const SCIMGroupPrefix = "scimgroup."

// SCIMGroupKey is the people-bucket key of IdP idp's SCIM group id.
func SCIMGroupKey(idp, id string) string { return SCIMGroupPrefix + idp + "." + id }
