package record

import (
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// Credential is a registered workload credential (bucket credentials, key =
// the credential ID in base64url).
type Credential struct {
	V          int                  `json:"v"`
	ID         string               `json:"id"`
	Host       string               `json:"host"`
	Workload   string               `json:"workload"`
	PublicKey  []byte               `json:"public_key"` // COSE_Key
	UserHandle []byte               `json:"user_handle"`
	Counter    uint32               `json:"counter"` // highest accepted
	Seen       Window               `json:"seen"`    // which values below Counter were accepted (see AcceptCounter)
	Status     api.CredentialStatus `json:"status"`
	Reason     string               `json:"reason,omitempty"`
	Created    time.Time            `json:"created"`
	Updated    time.Time            `json:"updated"`
	// Sessions are the live NATS sessions granted to this credential, for
	// kicks on revocation.
	Sessions []SessionRef `json:"sessions,omitempty"`
	// Lineage is the ID of the first credential of a rotation chain: the
	// CONNECT nkey a workload keeps across rotations.
	Lineage         string    `json:"lineage,omitempty"`
	RotateRequested bool      `json:"rotate_requested,omitempty"`
	Retires         time.Time `json:"retires,omitzero"` // replaced: refused after this
	ReplacedBy      string    `json:"replaced_by,omitempty"`
	// Person is set on a person's device credential (record.PersonID): the
	// credential acts for that person, with the roles their IdP groups
	// grant, and is revoked when they are offboarded. Workload is then
	// api.PersonWorkload(...) and Expires the end of the login.
	Person string `json:"person,omitempty"`
	// GroupsGen is, for a person's credential, the generation of the
	// person's groups (Person.GroupsGen) a connect must have read at
	// least: raised by a regroup that took a role from this credential,
	// in the same compare-and-set that reads the sessions it kicks.
	GroupsGen uint64 `json:"groups_gen,omitempty"`
	// Expires is when the credential stops working (zero: never; a
	// person's credential expires with their login).
	Expires time.Time `json:"expires,omitzero"`
	// Assurance is how the key is held: "" or policy.AssuranceHardware
	// (a TPM), or policy.AssuranceSoftware (a key file of a person's).
	Assurance string `json:"assurance,omitempty"`
	// LocalUser is, for a person's credential on a host, the local user
	// (uid and name) its agent serves it to: for display and audit.
	LocalUser string `json:"local_user,omitempty"`
	// Kind is what holds a key that no host's TPM holds (Host is then
	// empty): KindPasskey, a person's passkey in their browser's
	// authenticator, or KindSessionKey, a browser's WebCrypto key that one
	// of the person's passkeys certified (verifier/passkey).
	Kind string `json:"kind,omitempty"`
	// Synced marks a passkey that is backup eligible (WebAuthn BE): copied
	// to the person's other devices by a passkey provider, so it is not
	// "one device", and its counter is always 0. A session key inherits it
	// from its certifier.
	Synced bool `json:"synced,omitempty"`
	// Certifier is, for a session key, the passkey that certified it: the
	// session key is refused once that passkey is not active.
	Certifier string `json:"certifier,omitempty"`
	// Label is a passkey's device, as its person named it, and the browser
	// it was registered in (for listings).
	Label string `json:"label,omitempty"`
	// AAGUID is the passkey authenticator's model (hex; zero for most
	// platform authenticators), for listings.
	AAGUID string `json:"aaguid,omitempty"`
	// WebSession is, for a session key, SecretKey of the web session it was
	// certified in: signing out revokes it.
	WebSession string `json:"web_session,omitempty"`
}

// Kinds of credentials without a host (Credential.Kind).
const (
	KindPasskey    = "passkey"
	KindSessionKey = "session-key"
)

// Browser reports whether the credential is a person's in a browser: a
// passkey or a session key, with no host.
func (c *Credential) Browser() bool {
	return c.Host == "" && c.Person != "" && (c.Kind == KindPasskey || c.Kind == KindSessionKey)
}

// NoHost is the host name in the NATS user name of a credential without a
// host (a person's software key): person:NAME@-/NKEY.
const NoHost = "-"

// Expired reports whether a credential with an end (a person's) is past it.
func (c *Credential) Expired(now time.Time) bool {
	return !c.Expires.IsZero() && !now.Before(c.Expires)
}

// Nkey is what a workload presents as CONNECT nkey for this credential.
func (c *Credential) Nkey() string {
	if c.Lineage != "" {
		return c.Lineage
	}
	return c.ID
}

// Retired reports whether a replaced credential's grace period is over.
func (c *Credential) Retired(now time.Time) bool {
	return !c.Retires.IsZero() && now.After(c.Retires)
}

// SessionRef is a granted session, kept with the credential for kicks:
// a kick names the server and its client ID, unique for a server's run. It
// is rewritten with the credential on every connect, so it holds nothing
// else (records written with a user_key field still decode).
type SessionRef struct {
	Server  string    `json:"server"`
	Client  uint64    `json:"client"`
	Expires time.Time `json:"expires"`
}
