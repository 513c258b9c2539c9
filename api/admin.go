package api

import (
	"encoding/json"
	"time"
)

// The operator API (tpmauthnctl), on SubjectAdminPrefix + <op>: JSON
// requests and replies. The records it returns (hosts, credentials, tokens)
// are verifier/record's types.

// AdminOps are the operator API's operations (SubjectAdminPrefix + op).
// A role grants them with admin: [ops] ("*" all, "read" AdminReadOps).
var AdminOps = []string{
	"token.create", "token.list", "token.revoke",
	"host.list", "host.show", "host.approve", "host.revoke", "host.offboard",
	"credential.list", "credential.show", "credential.revoke", "credential.release", "credential.rotate", "credential.reissue",
	"audit.read", "backup.read", "ek.allow", "ek.disallow", "status",
	"person.list", "person.show", "person.disable", "person.enable",
}

// AdminReadOps change nothing and reveal no secret (backup.read holds the
// fleet's state whole: it is not one of them).
var AdminReadOps = []string{"token.list", "host.list", "host.show", "credential.list", "credential.show", "audit.read", "status",
	"person.list", "person.show"}

// TokenCreateRequest asks for a join token.
type TokenCreateRequest struct {
	Roles []string      `json:"roles"`
	Tags  []string      `json:"tags,omitempty"`
	TTL   time.Duration `json:"ttl"`
}

// TokenCreateResponse carries the token; only its hash is kept.
type TokenCreateResponse struct {
	Token string `json:"token"` // the secret, then "." and the CA pin if there is one
	// CAPin is the NATS CA the agent verifies the server with before it
	// sends the secret; empty when the verifier has no CA of its own to
	// pin (the agent then needs --nats-ca or the system's roots).
	CAPin   string    `json:"ca_pin,omitempty"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// IDRequest names one record.
type IDRequest struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

// ReissueResponse says what credential.reissue allowed: host may register
// a new credential for workload in place of Revoked, which stays revoked.
// The request is an IDRequest whose ID is the revoked credential's ID or
// "<host ID>/<workload>".
type ReissueResponse struct {
	Host     string    `json:"host"`
	Workload string    `json:"workload"`
	Revoked  string    `json:"revoked"`
	Reissued time.Time `json:"reissued"`
}

// EKAllowRequest adds an EK to the allow-list.
type EKAllowRequest struct {
	EKHash string   `json:"ek_hash"`
	Roles  []string `json:"roles"`
	Tags   []string `json:"tags,omitempty"`
	Note   string   `json:"note,omitempty"`
}

// CredentialListRequest filters credentials.
type CredentialListRequest struct {
	Host string `json:"host,omitempty"`
}

// Status summarizes the fleet.
type Status struct {
	Version     string         `json:"version"`
	RPID        string         `json:"rp_id"`
	Origin      string         `json:"origin"`
	Approval    string         `json:"approval"`
	EKRoots     int            `json:"ek_roots"`
	Hosts       map[string]int `json:"hosts"`
	Credentials map[string]int `json:"credentials"`
	Tokens      map[string]int `json:"tokens"`
	// AuditKey is the public key that signs the audit trail.
	AuditKey string `json:"audit_key"`
	// Streams: every bucket's and the audit stream's replication.
	Streams []StreamHealth `json:"streams,omitempty"`
	// AuditCheckpoint is the answering verifier's last signed checkpoint
	// of the audit chain's head (an audit.Checkpoint as JSON; absent before
	// its first): tpmauthnctl audit verify checks the stream against it.
	AuditCheckpoint json.RawMessage `json:"audit_checkpoint,omitempty"`
	// AuditBytes and AuditMaxBytes are the audit stream's size and bound
	// (-1: none; both 0 until the verifier has looked).
	AuditBytes    uint64 `json:"audit_bytes"`
	AuditMaxBytes int64  `json:"audit_max_bytes"`
	// Time is the answering verifier's clock (tpmauthnctl doctor compares).
	Time time.Time `json:"time,omitzero"`
	// Policy is the policy in force.
	Policy *PolicyState `json:"policy,omitempty"`
}

// PolicyState describes the policy in force.
type PolicyState struct {
	File     string    `json:"file,omitempty"` // empty: none (nothing granted)
	Modified time.Time `json:"modified,omitzero"`
	Roles    int       `json:"roles"`
	Bindings int       `json:"bindings"`
	IdPs     int       `json:"idps"`
	// Error is the last reload's failure: the previous policy stays.
	Error string `json:"error,omitempty"`
}

// AuditReadRequest pages through the audit stream.
type AuditReadRequest struct {
	From uint64 `json:"from"` // stream message sequence (RawEvent.Msg)
	Max  int    `json:"max"`
}

// StreamHealth is one JetStream stream's replication, as its leader sees it
// (a KV bucket is the stream KV_<bucket>).
type StreamHealth struct {
	Stream   string       `json:"stream"`
	Replicas int          `json:"replicas"`
	Leader   string       `json:"leader,omitempty"` // empty on a standalone server
	Peers    []PeerHealth `json:"peers,omitempty"`  // the followers
	Messages uint64       `json:"messages"`
	Bytes    uint64       `json:"bytes"`
	Error    string       `json:"error,omitempty"` // could not be asked
}

// PeerHealth is a follower's state: current, lagging or offline.
type PeerHealth struct {
	Name    string        `json:"name"`
	State   string        `json:"state"`
	Current bool          `json:"current"`
	Offline bool          `json:"offline,omitempty"`
	Lag     uint64        `json:"lag,omitempty"`
	Active  time.Duration `json:"active,omitempty"` // since last heard from
}

// BackupReadRequest reads one page of a backup (backup.read): the records
// of one KV bucket, or, with Bucket empty, the audit stream's messages.
type BackupReadRequest struct {
	Bucket string `json:"bucket,omitempty"` // a bucket the backup holds; "": the audit stream
	After  string `json:"after,omitempty"`  // KV: the last key of the page before ("": the first page)
	From   uint64 `json:"from,omitempty"`   // audit: the first stream message (0: the stream's first)
}

// BackupPage is a page of a backup. Values and message data are the bytes
// as stored (JSON encodes them as base64): audit messages are hash-chained
// and signed, so they must not be re-encoded on the way.
type BackupPage struct {
	Records  []BackupRecord  `json:"records,omitempty"`
	Messages []BackupMessage `json:"messages,omitempty"`
	// More says there are more pages: ask again from the last key or
	// message of this one.
	More bool `json:"more"`
}

// BackupRecord is a KV record as stored.
type BackupRecord struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

// BackupMessage is an audit stream message as stored, by its sequence.
type BackupMessage struct {
	Msg  uint64 `json:"msg"`
	Data []byte `json:"data"`
}
