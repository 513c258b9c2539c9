package api

// The agent's socket API: HTTP/1.1 + JSON over a Unix socket
// (/run/tpmauthn/agent.sock). Callers are named by their peer credentials;
// every refusal is an AgentError.

// Agent socket API paths.
const (
	AgentPathWhoAmI    = "/v1/whoami"    // GET: WhoAmI
	AgentPathAssertion = "/v1/assertion" // POST AssertionRequest: AssertionResponse
	AgentPathNATSSign  = "/v1/nats/sign" // POST NATSSignRequest: NATSSignResponse
	AgentPathHealth    = "/healthz"      // GET
)

// AgentError is the body of every refusal of the agent.
type AgentError struct {
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

// WhoAmI is how the agent sees the caller.
type WhoAmI struct {
	Workload     string `json:"workload"`
	Host         string `json:"host"`
	CredentialID string `json:"credential_id"`
	// NKey is what to present as CONNECT nkey: the credential's lineage,
	// which stays the same when the credential rotates.
	NKey string `json:"nkey"`
	// Inbox is the session's inbox prefix (InboxForCredential(NKey)): set it
	// as the NATS client's inbox prefix, the session may subscribe to no
	// other.
	Inbox  string  `json:"inbox"`
	RPID   string  `json:"rp_id"`
	Caller *Caller `json:"caller,omitempty"`
	// NATSCA is the PEM bundle the agent verifies the NATS server with
	// (empty: the system's roots), and NATSTLSRequired says the agent's
	// NATS URL is beyond loopback: a workload must then connect with TLS,
	// or an on-path server could relay its signature over the nonce.
	NATSCA          string `json:"nats_ca,omitempty"`
	NATSTLSRequired bool   `json:"nats_tls_required,omitempty"`
}

// Caller is what the agent read of a caller's process (SO_PEERCRED and
// /proc), as its selectors match it.
type Caller struct {
	PID         int    `json:"pid"`
	UID         uint32 `json:"uid"`
	GID         uint32 `json:"gid"`
	User        string `json:"user,omitempty"`
	Group       string `json:"group,omitempty"`
	Exe         string `json:"exe,omitempty"`
	ExeSHA256   string `json:"exe_sha256,omitempty"`
	SystemdUnit string `json:"systemd_unit,omitempty"`
}

// AssertionRequest asks for a WebAuthn assertion over a challenge.
type AssertionRequest struct {
	Challenge string `json:"challenge"` // base64url, at least 16 bytes
}

// NATSSignRequest asks for the CONNECT fields for a server nonce.
type NATSSignRequest struct {
	Nonce string `json:"nonce"` // the server nonce as received
}

// NATSSignResponse holds exactly the two CONNECT fields.
type NATSSignResponse struct {
	NKey string `json:"nkey"`
	Sig  string `json:"sig"`
}
