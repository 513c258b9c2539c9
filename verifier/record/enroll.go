package record

import "time"

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
}

// Challenge is an issued registration challenge (bucket challenges, TTL,
// key = the challenge in base64url).
type Challenge struct {
	V          int       `json:"v"`
	Host       string    `json:"host"`
	Workload   string    `json:"workload"`
	UserHandle []byte    `json:"user_handle"`
	Expires    time.Time `json:"expires"`
	RotateFrom string    `json:"rotate_from,omitempty"`
}

// WorkloadIndex names a host's current credential for a workload (bucket
// workloads, key host.workload): one credential per workload, replaced only
// by a rotation the old one vouches for.
type WorkloadIndex struct {
	V          int    `json:"v"`
	Credential string `json:"credential"`
}

// EKEnrollment binds an EK to its host (bucket eks, key = EK hash): one host
// per TPM until it is offboarded.
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
