package record

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"
)

// Person is someone who logged in through an identity provider (bucket
// people, key = ID). A person is (IdP, Subject): the email and name are for
// display only, never an identity (two IdPs, or two accounts of one, may
// share an email).
type Person struct {
	V       int    `json:"v"`
	ID      string `json:"id"` // PersonID(IdP, Subject)
	IdP     string `json:"idp"`
	Subject string `json:"subject"`
	// Issuer and SubjectClaim are the IdP's issuer and the claim Subject
	// was read from when the person was created: the IdP's name alone is
	// not an identity (a renamed IdP, or the name reused for another
	// issuer, must not land in this person), so a login or grant whose IdP
	// has another issuer or subject claim now is refused.
	Issuer       string `json:"issuer"`
	SubjectClaim string `json:"subject_claim"`
	Name         string `json:"name,omitempty"`
	Email        string `json:"email,omitempty"`
	// Groups are the IdP's groups at the last login or check.
	Groups []string `json:"groups,omitempty"`
	// GroupsGen counts the changes of Groups (a login, a re-check, SCIM).
	// A regroup that takes a role from a credential raises the
	// credential's GroupsGen to this before it kicks its sessions; a
	// connect must then have read the person at this generation or later
	// (verifier/authn/person), so no decision made with the old groups
	// commits after the kick read the sessions.
	GroupsGen uint64 `json:"groups_gen,omitempty"`
	// FencedGen and FencedGroups are the generation and the groups of the
	// last change whose fences and kicks all completed: FencedGen below
	// GroupsGen is a regroup unfinished (a verifier died, or the store or
	// a server failed it for two minutes), which a sweep finishes
	// (verifier/offboard), from FencedGroups to Groups.
	FencedGen    uint64    `json:"fenced_gen,omitempty"`
	FencedGroups []string  `json:"fenced_groups,omitempty"`
	Created      time.Time `json:"created"`
	LastLogin    time.Time `json:"last_login"`
	// LastCheck is when the IdP last vouched for the person (a login, or a
	// re-check).
	LastCheck time.Time `json:"last_check"`
	// Disabled is when the person was disabled (zero: active): a disabled
	// person cannot log in.
	Disabled       time.Time `json:"disabled,omitzero"`
	DisabledReason string    `json:"disabled_reason,omitempty"`
	// Credentials are the IDs of the person's device credentials (one per
	// device: a TPM key through a host's agent, a software key, a passkey),
	// added when each is registered: offboarding revokes them all.
	Credentials []string `json:"credentials,omitempty"`
	// SCIM is what the IdP's provisioning (SCIM 2.0, verifier/scim) last
	// said of the person; nil if it never did. A person provisioned before
	// their first login has a record with a zero LastLogin.
	SCIM *SCIMUser `json:"scim,omitempty"`
	// RefreshToken is the IdP's refresh token of the last login, sealed
	// (verifier/people.Sealer: AES-256-GCM, bound to the person's ID); nil
	// without one. The periodic re-check spends it.
	RefreshToken []byte `json:"refresh_token,omitempty"`
}

// PersonID is a person's ID: the IdP's name, '_', and 32 hex digits of
// SHA-256(idp NUL subject). It is one NATS subject token and one KV key
// whatever characters the IdP puts in its subjects, so {{person}} in a role
// can never widen a subject, and the same subject at two IdPs is two people.
func PersonID(idp, subject string) string {
	h := sha256.Sum256([]byte(idp + "\x00" + subject))
	return idp + "_" + hex.EncodeToString(h[:16])
}

// Login flows: how a login started, and so how it ends.
const (
	FlowBrowser  = "browser"  // a page at the verifier
	FlowLoopback = "loopback" // a CLI's loopback redirect (RFC 8252)
	FlowDevice   = "device"   // the verifier's device authorization (RFC 8628)
)

// LoginState is a login under way at an IdP (bucket logins, key
// "state." + SecretKey(state)): one use, then taken.
type LoginState struct {
	V     int    `json:"v"`
	IdP   string `json:"idp"`
	Nonce string `json:"nonce"`
	// PKCEVerifier is the RFC 7636 verifier the code is redeemed with.
	PKCEVerifier string `json:"pkce_verifier"`
	// Binding is SecretKey of the browser's login cookie: the callback must
	// come from the browser that started the login.
	Binding string `json:"binding"`
	Flow    string `json:"flow"`
	// Callback and Challenge (FlowLoopback) are the CLI's loopback URL and
	// its PKCE S256 challenge for the one-time code.
	Callback  string `json:"callback,omitempty"`
	Challenge string `json:"challenge,omitempty"`
	// Device (FlowDevice) is the key of the device authorization approved
	// by this login.
	Device string `json:"device,omitempty"`
	// Bound (FlowLoopback) is where the CLI's grant may be redeemed, as it
	// said when the login started and the person confirmed.
	Bound   *GrantBinding `json:"bound,omitempty"`
	Created time.Time     `json:"created"`
	Expires time.Time     `json:"expires"`
}

// LoginCode is the one-time code a loopback login ends with (bucket logins,
// key "code." + SecretKey(code)), redeemed once with the PKCE verifier of
// Challenge.
type LoginCode struct {
	V         int           `json:"v"`
	Person    string        `json:"person"`
	Challenge string        `json:"challenge"`
	Expires   time.Time     `json:"expires"`
	Bound     *GrantBinding `json:"bound,omitempty"` // the login's (LoginState.Bound)
}

// UsedChallenge marks a CLI's PKCE challenge as taken by a login (bucket
// logins, key "challenge." + SecretKey(challenge)): the challenge is
// visible to other local users (the login URL is on the browser's command
// line), so a second login with it (theirs, meant to hand the CLI their
// code) is refused.
type UsedChallenge struct {
	V       int       `json:"v"`
	Expires time.Time `json:"expires"`
}

// Device authorization states.
const (
	DevicePending  = "pending"
	DeviceApproved = "approved"
)

// DeviceAuth is an RFC 8628 device authorization (bucket logins, key
// "device." + SecretKey(device code)).
type DeviceAuth struct {
	V        int       `json:"v"`
	UserCode string    `json:"user_code"`
	Status   string    `json:"status"`
	Person   string    `json:"person,omitempty"` // once approved
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	LastPoll time.Time `json:"last_poll,omitzero"`
	// Interval is the polling interval the client was given; slow_down
	// adds 5 s (RFC 8628 §3.5).
	Interval time.Duration `json:"interval"`
	// ClientAddr is who asked for the code, shown on the approval page.
	ClientAddr string `json:"client_addr,omitempty"`
	// Bound is where the device asked its grant to be redeemed (shown on
	// the approval page too); nil: a software key.
	Bound *GrantBinding `json:"bound,omitempty"`
}

// DeviceUserCode maps a user code to its device authorization (bucket
// logins, key "user." + the code without its dash).
type DeviceUserCode struct {
	V       int       `json:"v"`
	Device  string    `json:"device"`
	Expires time.Time `json:"expires"`
}

// LoginGrant is what a finished login hands its client (bucket logins, key
// "grant." + SecretKey(token)): a short-lived, one-time token bound to the
// person, which the step that registers the person's device credential
// redeems. LoginExpires is when the login ends, and with it that credential.
// Bound is where it may be redeemed: the host's agent, for the local user
// who logged in, or the software key the client made before it logged in.
// A grant without it (an earlier version's) is redeemed nowhere.
type LoginGrant struct {
	V            int           `json:"v"`
	Person       string        `json:"person"`
	Flow         string        `json:"flow"`
	ClientAddr   string        `json:"client_addr,omitempty"`
	Created      time.Time     `json:"created"`
	Expires      time.Time     `json:"expires"`
	LoginExpires time.Time     `json:"login_expires"`
	Bound        *GrantBinding `json:"bound,omitempty"`
}

// GrantBinding is where a login grant was asked for, and so where it may be
// redeemed: a host and a local user of it (its agent registers a TPM
// credential), or a software key's public key (Key: personkey.Thumbprint).
type GrantBinding struct {
	Host string `json:"host,omitempty"`
	UID  uint32 `json:"uid,omitempty"`
	Key  string `json:"key,omitempty"`
}

func (b *GrantBinding) String() string {
	switch {
	case b == nil:
		return "nowhere (an earlier client's login)"
	case b.Key != "":
		return "software key " + b.Key[:min(len(b.Key), 16)]
	}
	return fmt.Sprintf("uid %d on host %s", b.UID, b.Host)
}

// SecretKey is how a bearer secret (state, code, device code, grant) is
// keyed: hex SHA-256, so the bucket never holds the secret itself.
func SecretKey(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// LogValue keeps the nonce and PKCE verifier out of logs (slog.LogValuer).
func (l *LoginState) LogValue() slog.Value {
	return slog.GroupValue(slog.String("idp", l.IdP), slog.String("flow", l.Flow), slog.String("secrets", "[REDACTED]"))
}
