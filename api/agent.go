package api

import "time"

// The agent's socket API: HTTP/1.1 + JSON over a Unix socket
// (/run/tpmauthn/agent.sock). Callers are named by their peer credentials;
// every refusal is an AgentError.

// Agent socket API paths.
const (
	AgentPathWhoAmI    = "/v1/whoami"    // GET: WhoAmI
	AgentPathAssertion = "/v1/assertion" // POST AssertionRequest: AssertionResponse
	AgentPathNATSSign  = "/v1/nats/sign" // POST NATSSignRequest: NATSSignResponse
	// AgentPathNATSTurn answers 204 once the TPM is expected to sign a
	// request sent now within NATSSignBudget: a workload asks before it
	// dials (a reconnect), so that its handshake's one signature is neither
	// refused nor late. POST, no body.
	AgentPathNATSTurn = "/v1/nats/turn"
	AgentPathHealth   = "/healthz" // GET
	// AgentPathStatus (GET: AgentStatus) is the agent's state for
	// tpmauthn-agent doctor: root and the agent's own user only.
	AgentPathStatus = "/v1/status"
	// AgentPathPersonLogin (POST PersonLoginRequest: PersonLoginResponse)
	// redeems a person's login grant for a TPM credential bound to the
	// calling user (uid): the person's programs on this host then connect
	// as the person. DELETE ends it (logout). GET (PersonLoginPlace) says
	// where a login should bind its grant (api.FormGrantHost).
	AgentPathPersonLogin = "/v1/person/login"
)

// PersonLoginRequest hands the agent a login grant (LoginResult's access
// token) to redeem.
type PersonLoginRequest struct {
	Grant string `json:"grant"`
}

// PersonLoginResponse names the credential the agent registered.
type PersonLoginResponse struct {
	Person       Person    `json:"person"`
	Host         string    `json:"host"`
	CredentialID string    `json:"credential_id"`
	NKey         string    `json:"nkey"`
	UID          uint32    `json:"uid"`
	Name         string    `json:"name"` // in NATS: <name>@<hostname>
	Expires      time.Time `json:"expires"`
}

// AgentHeaderDeadline is the request header in which a caller gives its
// deadline, as Unix milliseconds (caller and agent share the host's
// clock). The agent never signs for a request past it, and refuses at once
// one it cannot sign before it. Without it, the agent's own request timeout
// applies; a later deadline is cut to that.
const AgentHeaderDeadline = "Tpmauthn-Deadline"

// NATSSignBudget is how long a NATS nonce's signature may take, out of a
// handshake's 5 s (nats.Timeout, and the server's authorization timeout):
// the rest is for the dial, TLS and the auth callout. A signature later
// than that is refused or wasted.
const NATSSignBudget = 4 * time.Second

// AgentError is the body of every refusal of the agent. RetryAfterMS, on a
// refusal for a busy TPM (429 or 503, also in the Retry-After header, in
// whole seconds), says when the TPM is expected to have room.
type AgentError struct {
	Error        string `json:"error"`
	Hint         string `json:"hint,omitempty"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
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
	// NATSURL is the fleet's NATS as the agent reaches it.
	NATSURL string `json:"nats_url,omitempty"`
	// Person is set when the caller signs as a person (their login's
	// credential, bound to the caller's uid): the person's ID.
	Person string `json:"person,omitempty"`
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

// AgentStatus is what the agent knows of itself, its TPM and what the
// verifier said at its last check.
type AgentStatus struct {
	Host       string `json:"host,omitempty"`
	HostStatus string `json:"host_status,omitempty"`
	TPM        struct {
		Manufacturer string `json:"manufacturer"`
		Vendor       string `json:"vendor,omitempty"`
		Firmware     string `json:"firmware"`
		Slots        uint32 `json:"transient_slots"`
		Error        string `json:"error,omitempty"` // the TPM's last command failed
	} `json:"tpm"`
	// LastCheck is the last time the verifier answered the agent's
	// credential check; CheckError the last check's failure, if it failed.
	LastCheck  time.Time `json:"last_check,omitzero"`
	CheckError string    `json:"check_error,omitempty"`
	// Workloads: each configured workload's credential, and why it cannot
	// be used if it cannot.
	Workloads []AgentWorkloadStatus `json:"workloads"`
}

// AgentWorkloadStatus is one workload in AgentStatus.
type AgentWorkloadStatus struct {
	Name       string `json:"name"`
	Credential string `json:"credential,omitempty"`
	Problem    string `json:"problem,omitempty"`
	Hint       string `json:"hint,omitempty"`
}
