package audit

import "time"

// StreamName is the JetStream stream that holds the audit trail (in the AUTH
// account), and Subject the subject its events are appended on. They are
// here, not with the writer, because the server configuration the product
// generates (verifier/keys) denies destructive API calls on this stream by
// its name.
const (
	StreamName = "TPMAUTHN_AUDIT"
	Subject    = "tpmauthn.audit"
)

// Event is one audit record.
type Event struct {
	Seq        uint64    `json:"seq"` // its number in the chain, from 1
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"`   // enroll, register, connect, revoke, offboard, release, alert.<kind>, ...
	Result     string    `json:"result"` // allow, deny, ok, error, alert
	Reason     string    `json:"reason,omitempty"`
	Host       string    `json:"host,omitempty"`
	EKHash     string    `json:"ek_hash,omitempty"`
	Workload   string    `json:"workload,omitempty"`
	Credential string    `json:"credential,omitempty"`
	Counter    uint32    `json:"counter,omitempty"`
	Server     string    `json:"server,omitempty"`
	Client     uint64    `json:"client,omitempty"`
	ClientAddr string    `json:"client_addr,omitempty"`
	Roles      []string  `json:"roles,omitempty"`
	Actor      string    `json:"actor,omitempty"` // who asked (operator, agent, verifier)
	// Person is the person (IdP_hash, record.PersonID) an event is about.
	Person string `json:"person,omitempty"`
	// Session is what a session did, in its disconnect event.
	Session *SessionStats `json:"session,omitempty"`
	Prev    string        `json:"prev"` // hash of the event before; "" for the first
	Hash    string        `json:"hash"` // SHA-256 of this event with hash and sig empty
	// Sig is the issuer key's signature over Hash (nkeys, base64url), on the
	// last event of each stream message; "" on the others (see chain).
	Sig string `json:"sig"`
}

// SessionStats is a NATS session's lifetime and traffic as its server
// counted them (sent: from the client to the server).
type SessionStats struct {
	Start         time.Time `json:"start"`
	MsgsSent      int64     `json:"msgs_sent"`
	BytesSent     int64     `json:"bytes_sent"`
	MsgsReceived  int64     `json:"msgs_received"`
	BytesReceived int64     `json:"bytes_received"`
}

// denyByDefault makes a fresh event whose result is "deny".

// Results of an event.
const (
	Allow    = "allow" // a connect granted
	DenyText = "deny"  // refused
	OK       = "ok"    // an action done
	Error    = "error" // an action failed
	Alert    = "alert" // a tamper signal
)

// Deny makes a fresh event of kind whose result is "deny": whoever records
// it must say otherwise for it to mean anything else.
func Deny(kind string) Event { return Event{Kind: kind, Result: DenyText} }
