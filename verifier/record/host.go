package record

import (
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// Host is an enrolled host (bucket hosts, key = ID).
type Host struct {
	V        int    `json:"v"`
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	EKHash   string `json:"ek_hash"`
	// Claims are the keys of the eks bucket held for this host (its EKs'
	// hashes and its AK's claim); offboarding releases them. Hosts enrolled
	// before claims were kept have only EKHash.
	Claims     []string       `json:"claims,omitempty"`
	AKPublic   []byte         `json:"ak_public"` // PKIX DER
	AKCert     []byte         `json:"ak_cert,omitempty"`
	TPM        TPMIdent       `json:"tpm"`
	Roles      []string       `json:"roles"`
	Tags       []string       `json:"tags,omitempty"`
	Status     api.HostStatus `json:"status"`
	Reason     string         `json:"reason,omitempty"`
	Via        string         `json:"via"`        // "token:<id>" or "ek-allowlist"
	ProofHash  []byte         `json:"proof_hash"` // SHA-256 of the activation secret
	Created    time.Time      `json:"created"`
	Updated    time.Time      `json:"updated"`
	ApprovedBy string         `json:"approved_by,omitempty"`
}

// TPMIdent is the TPM's identity as read at enrollment.
type TPMIdent struct {
	Manufacturer string `json:"manufacturer"`
	Model        string `json:"model"`
	Version      string `json:"version"`
}
