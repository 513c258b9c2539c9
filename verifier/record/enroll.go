package record

import (
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// EnrollSession is an open enrollment between begin and finish (bucket
// enroll, TTL).
type EnrollSession struct {
	V        int       `json:"v"`
	Secret   []byte    `json:"secret"`
	EKHash   string    `json:"ek_hash"`
	AKPublic []byte    `json:"ak_public"`
	TPM      TPMIdent  `json:"tpm"`
	Hostname string    `json:"hostname"`
	Token    string    `json:"token,omitempty"` // hash; empty for the allow-list
	Created  time.Time `json:"created"`
	// MoreEKs are the hashes of the TPM's other EKs and MoreSecrets their
	// activation secrets; AKHash names the AK. Finish claims them all.
	MoreEKs     []string `json:"more_eks,omitempty"`
	MoreSecrets [][]byte `json:"more_secrets,omitempty"`
	AKHash      string   `json:"ak_hash,omitempty"`
}

// Claims are the keys of the eks bucket an enrollment holds for its host:
// the EK's hash, the other EKs' and the AK's (AKClaim).
func (s *EnrollSession) Claims() []string {
	out := append([]string{s.EKHash}, s.MoreEKs...)
	if s.AKHash != "" {
		out = append(out, AKClaim(s.AKHash))
	}
	return out
}

// AKClaim is an AK's key in the eks bucket (EK hashes are bare hex).
func AKClaim(akHash string) string { return "ak_" + akHash }

// Challenge is an issued registration challenge (bucket challenges, TTL,
// key = the challenge in base64url).
type Challenge struct {
	V          int       `json:"v"`
	Host       string    `json:"host"`
	Workload   string    `json:"workload"`
	UserHandle []byte    `json:"user_handle"`
	Expires    time.Time `json:"expires"`
	RotateFrom string    `json:"rotate_from,omitempty"`
	// Reissue names the revoked credential a reissued registration takes
	// the workload index from (credential.reissue allowed it).
	Reissue string `json:"reissue,omitempty"`
	// Person (a person's device credential) is who the redeemed login
	// grant named, LoginExpires when their login ends, and UID and User the
	// local user the agent bound the credential to.
	Person       string    `json:"person,omitempty"`
	LoginExpires time.Time `json:"login_expires,omitzero"`
	UID          uint32    `json:"uid,omitempty"`
	User         string    `json:"user,omitempty"`
}

// WorkloadIndex names a host's current credential for a workload (bucket
// workloads, key host.workload): one credential per workload, replaced only
// by a rotation the old one vouches for, or, once it is revoked and an
// operator reissued it, by a fresh registration of the host's (a new
// lineage; the revoked credential stays revoked).
type WorkloadIndex struct {
	V          int    `json:"v"`
	Credential string `json:"credential"`
	// Reissued is when an operator allowed the host to register a new
	// credential for the workload in place of Credential, which is revoked
	// (zero: not allowed).
	Reissued time.Time `json:"reissued,omitzero"`
	// ReissueReason is the operator's reason for it.
	ReissueReason string `json:"reissue_reason,omitempty"`
}

// ReissueAllowed reports whether the host may register a new credential
// for the workload in place of current, the revoked credential the index
// names.
func (w *WorkloadIndex) ReissueAllowed(current *Credential) bool {
	return !w.Reissued.IsZero() && current != nil && current.ID == w.Credential && current.Status == api.CredentialRevoked
}

// EKEnrollment binds an EK to its host (bucket eks, key = EK hash, or
// AKClaim of an AK): one host per TPM until it is offboarded. A TPM holds
// several EKs and one AK per enrollment; each is claimed, so that a revoked
// TPM cannot enroll again with another of them.
type EKEnrollment struct {
	V    int    `json:"v"`
	Host string `json:"host"`
}

// EKAllow is an EK allow-list entry (bucket ek_allow, key = EK hash).
type EKAllow struct {
	V       int       `json:"v"`
	Roles   []string  `json:"roles"`
	Tags    []string  `json:"tags,omitempty"`
	Note    string    `json:"note,omitempty"`
	Created time.Time `json:"created"`
}
