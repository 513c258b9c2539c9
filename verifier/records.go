package verifier

import (
	"time"
)

// recordVersion is the schema version of every record below; a reader
// refuses a version it does not know rather than guessing.
const recordVersion = 1

// Host is an enrolled host (bucket hosts, key = ID).
type Host struct {
	V          int       `json:"v"`
	ID         string    `json:"id"`
	Hostname   string    `json:"hostname"`
	EKHash     string    `json:"ek_hash"`
	AKPublic   []byte    `json:"ak_public"` // PKIX DER
	AKCert     []byte    `json:"ak_cert,omitempty"`
	TPM        TPMIdent  `json:"tpm"`
	Roles      []string  `json:"roles"`
	Tags       []string  `json:"tags,omitempty"`
	Status     string    `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	Via        string    `json:"via"`        // "token:<id>" or "ek-allowlist"
	ProofHash  []byte    `json:"proof_hash"` // SHA-256 of the activation secret
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	ApprovedBy string    `json:"approved_by,omitempty"`
}

// TPMIdent is the TPM's identity as read at enrollment.
type TPMIdent struct {
	Manufacturer string `json:"manufacturer"`
	Model        string `json:"model"`
	Version      string `json:"version"`
}

// Credential statuses.
const (
	CredActive      = "active"
	CredRevoked     = "revoked"
	CredQuarantined = "quarantined"
)

// Credential is a registered workload credential (bucket credentials, key =
// the credential ID in base64url).
type Credential struct {
	V          int       `json:"v"`
	ID         string    `json:"id"`
	Host       string    `json:"host"`
	Workload   string    `json:"workload"`
	PublicKey  []byte    `json:"public_key"` // COSE_Key
	UserHandle []byte    `json:"user_handle"`
	Counter    uint32    `json:"counter"` // highest accepted
	Seen       window    `json:"seen"`    // which values below Counter were accepted (see acceptCounter)
	Status     string    `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// Sessions are the live NATS sessions granted to this credential, for
	// kicks on revocation.
	Sessions []SessionRef `json:"sessions,omitempty"`
	// Lineage is the ID of the first credential of a rotation chain: the
	// CONNECT nkey a workload keeps across rotations.
	Lineage         string    `json:"lineage,omitempty"`
	RotateRequested bool      `json:"rotate_requested,omitempty"`
	Retires         time.Time `json:"retires,omitzero"` // replaced: refused after this
	ReplacedBy      string    `json:"replaced_by,omitempty"`
}

// nkey is what a workload presents as CONNECT nkey for this credential.
func (c *Credential) nkey() string {
	if c.Lineage != "" {
		return c.Lineage
	}
	return c.ID
}

// retired reports whether a replaced credential's grace period is over.
func (c *Credential) retired(now time.Time) bool {
	return !c.Retires.IsZero() && now.After(c.Retires)
}

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
}

// State of a token as operators see it.
func (t *Token) State(now time.Time) string {
	switch {
	case t.UsedBy != "":
		return "used"
	case !now.Before(t.Expires):
		return "expired"
	default:
		return "valid"
	}
}

// enrollSession is an open enrollment between begin and finish (bucket
// enroll, TTL).
type enrollSession struct {
	V        int       `json:"v"`
	Secret   []byte    `json:"secret"`
	EKHash   string    `json:"ek_hash"`
	AKPublic []byte    `json:"ak_public"`
	TPM      TPMIdent  `json:"tpm"`
	Hostname string    `json:"hostname"`
	Token    string    `json:"token,omitempty"` // hash; empty for the allow-list
	Created  time.Time `json:"created"`
}

// challenge is an issued registration challenge (bucket challenges, TTL,
// key = the challenge in base64url).
type challenge struct {
	V          int       `json:"v"`
	Host       string    `json:"host"`
	Workload   string    `json:"workload"`
	UserHandle []byte    `json:"user_handle"`
	Expires    time.Time `json:"expires"`
	RotateFrom string    `json:"rotate_from,omitempty"`
}

// workloadIndex names a host's current credential for a workload (bucket
// workloads, key host.workload): one credential per workload, replaced only
// by a rotation the old one vouches for.
type workloadIndex struct {
	V          int    `json:"v"`
	Credential string `json:"credential"`
}

// ekEnrollment binds an EK to its host (bucket eks, key = EK hash): one host
// per TPM until it is offboarded.
type ekEnrollment struct {
	V    int    `json:"v"`
	Host string `json:"host"`
}

// ekAllow is an EK allow-list entry (bucket ek_allow, key = EK hash).
type ekAllow struct {
	V       int       `json:"v"`
	Roles   []string  `json:"roles"`
	Tags    []string  `json:"tags,omitempty"`
	Note    string    `json:"note,omitempty"`
	Created time.Time `json:"created"`
}
