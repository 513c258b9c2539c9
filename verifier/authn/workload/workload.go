// Package workload is the authentication method of a workload's (or an
// agent's own) TPM credential (DESIGN.md flow 3): the CONNECT carries the
// credential ID as nkey and a WebAuthn assertion bundle as sig, signed inside
// the TPM over a challenge derived from this connection's nonce. The method
// checks the credential and its host, the assertion, and the counter, builds
// the session's permissions from the policy, and makes the connect's one KV
// write: counter and session, compare-and-set, so that two verifiers cannot
// both accept one counter value.
package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

type alerter interface {
	Alert(kind string, e audit.Event)
}

// Config is what the method needs.
type Config struct {
	Fleet    *fleet.Fleet
	Sessions *sessions.Sessions
	Policy   *policy.Source
	// RPID is the WebAuthn RP ID the assertion's rpIdHash must name; its
	// clientDataJSON must name attestation.VerifierOrigin(RPID).
	RPID string
	// RotationGrace is how long a replaced credential stays valid.
	RotationGrace time.Duration
	// MaxAge is the age at which agents rotate credentials (0 or negative:
	// never). A workload credential older than MaxAge plus RotationGrace is
	// refused: an agent that stopped rotating does not keep a key forever.
	// The agent's own host credential is exempt: it is how the agent
	// rotates, and its session may only register and rotate.
	MaxAge time.Duration
	Alerts alerter
	// People decides a person's device credential's roles
	// (verifier/authn/person); nil refuses every person's credential.
	People people
	// Browser checks the credentials people hold in browsers, which have
	// no host (record.Credential.Browser: a passkey, or a session key a
	// passkey certified; verifier/passkey). Nil refuses them.
	Browser browser
	Logger  *slog.Logger
}

// browser decides a browser credential's connect beyond its signature.
type browser interface {
	// Check is nil if cred may connect now, with what its assertions must
	// name (RP ID hash and the pages' origin instead of the verifier's).
	Check(ctx context.Context, cred *record.Credential) (attestation.AssertionCheck, error)
}

// people names the roles of a person's credential now, or refuses it.
type people interface {
	Roles(ctx context.Context, pol *policy.Policy, cred *record.Credential) ([]string, error)
}

// Method authenticates workload credentials.
type Method struct {
	cfg      Config
	log      *slog.Logger
	rpIDHash [32]byte
	pubKeys  keyCache
}

var _ authn.Method = (*Method)(nil)

// New makes the method.
func New(cfg Config) *Method {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Method{cfg: cfg, log: log, rpIDHash: sha256.Sum256([]byte(cfg.RPID))}
}

// Match: a CONNECT with an nkey and a signed nonce.
func (m *Method) Match(co *jwt.ConnectOptions) bool { return co.Nkey != "" && co.SignedNonce != "" }

// attempts bounds the re-reads after the credential changed elsewhere.
const attempts = 20

// errRetry: the credential changed since it was read; decide again.
var errRetry = errors.New("credential changed concurrently")

// retired is how a replaced credential past its grace period is reported
// (its stored status is still active).
const retired api.CredentialStatus = "retired"

// Authorize decides a workload connect.
func (m *Method) Authorize(ctx context.Context, r *authn.Request) (*jwt.UserClaims, error) {
	co := r.Claims.ConnectOptions
	r.Event.Credential = co.Nkey
	a, err := decodeBundle(co.SignedNonce)
	if err != nil {
		return nil, err
	}
	nonce := r.Claims.ClientInformation.Nonce
	if nonce == "" {
		return nil, fmt.Errorf("%w: the server sent no nonce", api.ErrReplay)
	}
	credID := base64.RawURLEncoding.EncodeToString(a.CredentialID)
	r.Event.Credential = credID
	// Connects of one credential are decided one at a time in this process
	// (no compare-and-set conflicts among them); the compare-and-set still
	// orders them against other verifier instances.
	unlock := m.cfg.Fleet.Lock(credID)
	defer unlock()
	// The policy is held until the record is written: a reload's kick
	// waits for the decisions made with the policy it replaced.
	pol, release := m.cfg.Policy.Acquire()
	defer release()
	for range attempts {
		uc, err := m.attempt(ctx, pol, r, a, credID, nonce)
		if !errors.Is(err, errRetry) {
			return uc, err
		}
	}
	return nil, fmt.Errorf("%w: credential updated concurrently too often", api.ErrConflict)
}

// attempt decides once, against the credential as this instance knows it;
// errRetry if it changed meanwhile.
func (m *Method) attempt(ctx context.Context, pol *policy.Policy, r *authn.Request, a *attestation.Assertion, credID, nonce string) (*jwt.UserClaims, error) {
	cred, rev, err := m.credential(ctx, credID, r.Claims.ConnectOptions.Nkey)
	if err != nil {
		return nil, err
	}
	r.Event.Host, r.Event.Workload = cred.Host, cred.Workload
	if err := m.checkStatus(cred, r.Event); err != nil {
		return nil, err
	}
	m.retireIfReplaced(cred)
	h, err := m.host(ctx, cred)
	if err != nil {
		return nil, err
	}
	if err := m.checkAssertion(ctx, a, cred, nonce, r.Event); err != nil {
		return nil, err
	}
	r.Event.Person = cred.Person
	uc, roles, err := m.userClaims(ctx, pol, r.Claims, cred, h, api.InboxForCredential(r.Claims.ConnectOptions.Nkey))
	if err != nil {
		return nil, err
	}
	// Only now, with the assertion checked: a forged one must not cost the
	// signing of a grant. The event is complete: the transport may record it.
	r.Event.Roles = roles
	if r.Prepare != nil {
		r.Prepare(uc)
	}
	if err := m.commit(ctx, r.Claims, cred, rev, uc); err != nil {
		return nil, err
	}
	return uc, nil
}

func decodeBundle(sig string) (*attestation.Assertion, error) {
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return nil, fmt.Errorf("%w: sig is not base64url", attestation.ErrMalformed)
	}
	return attestation.UnmarshalBundle(raw)
}

// credential is the record (cached, or read and its sessions indexed) that
// the CONNECT names: the credential ID, or across rotations the first ID of
// its lineage.
func (m *Method) credential(ctx context.Context, credID, nkey string) (*record.Credential, uint64, error) {
	cred, rev, fromKV, err := m.cfg.Fleet.Credential(ctx, credID)
	if errors.Is(err, api.ErrNotFound) {
		return nil, 0, fmt.Errorf("%w: %s", api.ErrUnknownCredential, credID)
	}
	if err != nil {
		return nil, 0, err // the store failing: not a statement about the credential
	}
	if fromKV {
		m.cfg.Sessions.Add(cred.Sessions) // other instances' grants too
	}
	if nkey != cred.ID && nkey != cred.Lineage {
		return nil, 0, fmt.Errorf("%w: bundle names credential %s, CONNECT names %s", attestation.ErrMalformed, credID, nkey)
	}
	return cred, rev, nil
}

// checkStatus refuses a credential out of service; one revoked or retired
// being used is a tamper signal.
func (m *Method) checkStatus(cred *record.Credential, ev *audit.Event) error {
	status := cred.Status
	if status == api.CredentialActive && cred.Retired(time.Now()) {
		status = retired
	}
	if status == api.CredentialActive {
		if cred.Expired(time.Now()) {
			return fmt.Errorf("%w: credential %s expired at %s (its person's login ended: log in again)", api.ErrExpired, cred.ID, cred.Expires.Format(time.RFC3339))
		}
		return m.checkAge(cred)
	}
	err := fmt.Errorf("%w: credential %s is %s", api.ErrRevoked, cred.ID, status)
	if status == api.CredentialRevoked || status == retired {
		m.cfg.Alerts.Alert(alert.RevokedUsed, audit.Event{Host: cred.Host, Workload: cred.Workload, Credential: cred.ID,
			Server: ev.Server, Client: ev.Client, ClientAddr: ev.ClientAddr, Reason: err.Error()})
	}
	return err
}

// retireIfReplaced gives a credential that is no longer its workload's
// current one, yet was never retired, its grace period now (written with
// the connect): a rotation whose last write failed (the store refused the
// retirement after the workload index had moved) must not leave the
// replaced credential valid for good.
func (m *Method) retireIfReplaced(cred *record.Credential) {
	cur, ok := m.cfg.Fleet.CurrentCredential(cred.Host, cred.Workload)
	if !ok || cur == cred.ID || !cred.Retires.IsZero() {
		return
	}
	now := time.Now().UTC()
	cred.Retires, cred.ReplacedBy = now.Add(m.cfg.RotationGrace), cur
	m.log.Warn("a replaced credential was never retired: it retires now", "credential", cred.ID, "replaced_by", cur, "retires", cred.Retires)
}

// checkAge refuses a workload credential past its maximum age and grace (a
// person's credential has its login's end instead).
func (m *Method) checkAge(cred *record.Credential) error {
	if m.cfg.MaxAge <= 0 || cred.Workload == api.AgentWorkload || cred.Person != "" {
		return nil
	}
	if limit := cred.Created.Add(m.cfg.MaxAge + m.cfg.RotationGrace); time.Now().After(limit) {
		return fmt.Errorf("%w: credential %s was created %s; it may be used until %s", api.ErrExpired, cred.ID,
			cred.Created.Format(time.RFC3339), limit.Format(time.RFC3339))
	}
	return nil
}

// host is the credential's host, which must be active. Two kinds of a
// person's credentials have none: a software key (a key file on a machine
// without a TPM) and a browser credential (a passkey, or a session key one
// certified), which only a verifier that checks them (Config.Browser)
// accepts; any other credential without a host is refused.
func (m *Method) host(ctx context.Context, cred *record.Credential) (*record.Host, error) {
	switch {
	case cred.Host != "":
		return m.activeHost(ctx, cred.Host)
	case cred.Browser() && m.cfg.Browser != nil:
		return &record.Host{Hostname: record.NoHost, Status: api.HostActive}, nil
	case cred.Person != "" && cred.Kind == "" && cred.Assurance == policy.AssuranceSoftware:
		return &record.Host{Hostname: record.NoHost}, nil
	}
	return nil, fmt.Errorf("%w: credential %s has no host and is no person's software key or browser credential this verifier checks", api.ErrRevoked, cred.ID)
}

// activeHost requires the credential's host active. A host that cannot be
// read because the store fails is that failure, not a revocation.
func (m *Method) activeHost(ctx context.Context, id string) (*record.Host, error) {
	h, err := m.cfg.Fleet.Host(ctx, id)
	switch {
	case errors.Is(err, api.ErrNotFound):
		return nil, fmt.Errorf("%w: host %s is unknown", api.ErrRevoked, id)
	case err != nil:
		return nil, err
	case h.Status != api.HostActive:
		return nil, fmt.Errorf("%w: host %s is %s", api.ErrRevoked, id, h.Status)
	}
	return h, nil
}

// checkAssertion verifies the signature over this connection's challenge
// and accepts its counter; a counter that is not new quarantines the
// credential.
func (m *Method) checkAssertion(ctx context.Context, a *attestation.Assertion, cred *record.Credential, nonce string, ev *audit.Event) error {
	pub, err := m.pubKeys.get(cred.ID, cred.PublicKey)
	if err != nil {
		return err
	}
	want := attestation.AssertionCheck{RPIDHash: m.rpIDHash, Origin: attestation.VerifierOrigin(m.cfg.RPID)}
	if cred.Browser() {
		// host let a browser credential through only with Browser set.
		if want, err = m.cfg.Browser.Check(ctx, cred); err != nil {
			return err
		}
	}
	want.Challenge, want.RequireUV = attestation.NATSChallenge([]byte(nonce)), true
	counter, err := attestation.VerifyAssertion(a, pub, want)
	if err != nil {
		return err
	}
	ev.Counter = counter
	if err := cred.AcceptCounter(counter); err != nil {
		err = fmt.Errorf("%w: %w", api.ErrReplay, err)
		m.Quarantine(ctx, cred.ID, ev, err)
		return err
	}
	return nil
}

// commit is the connect's one KV write: the accepted counter and the new
// session, compare-and-set at the revision the decision read.
func (m *Method) commit(ctx context.Context, rc *jwt.AuthorizationRequestClaims, cred *record.Credential, rev uint64, uc *jwt.UserClaims) error {
	now := time.Now()
	cred.Updated = now.UTC()
	live, ended := m.cfg.Sessions.Live(cred.Sessions, now)
	cred.Sessions = append(live, record.SessionRef{
		Server: rc.Server.ID, Client: rc.ClientInformation.ID, Expires: time.Unix(uc.Expires, 0).UTC(),
	})
	next, err := store.Update(ctx, m.cfg.Fleet.Store.Credentials, cred.ID, cred, rev)
	if err != nil {
		m.cfg.Fleet.Uncache(cred.ID) // changed elsewhere, or unknown: re-read
		if errors.Is(err, api.ErrConflict) {
			return errRetry
		}
		return err
	}
	m.cfg.Sessions.Granted(cred.Sessions[len(cred.Sessions)-1], cred.ID)
	m.cfg.Sessions.Forget(ended)
	m.cfg.Fleet.Cache(cred, next)
	return nil
}

// userClaims builds the session JWT: account APP, name workload@hostname
// (person:NAME@hostname for a person's credential), permissions from the
// policy (or the agent's own, fixed ones). Its inbox is the session's inbox
// prefix, from the CONNECT nkey (the credential's ID or lineage, which the
// method checked).
func (m *Method) userClaims(ctx context.Context, p *policy.Policy, rc *jwt.AuthorizationRequestClaims, cred *record.Credential, h *record.Host, inbox string) (*jwt.UserClaims, []string, error) {
	uc := jwt.NewUserClaims(rc.UserNkey)
	uc.Audience = keys.AccountApp
	uc.Name = sessions.UserName(cred.Workload, h.Hostname, rc.ConnectOptions.Nkey)
	uc.Expires = time.Now().Add(p.SessionTTL).Unix()
	if h.ID != "" {
		uc.Tags.Add("host:" + h.ID)
	}
	uc.Tags.Add("workload:" + cred.Workload)
	if cred.Workload == api.AgentWorkload {
		uc.Tags.Add(api.TagAgent + ":" + h.ID)
		scope := api.HostScope(h.ID)
		if !scope.Valid() {
			return nil, nil, fmt.Errorf("host ID %q is no subject token", h.ID)
		}
		uc.Pub.Allow.Add(scope.Permission())
		uc.Pub.Allow.Add(api.LegacyV1Subjects...)
		uc.Sub.Allow.Add(inbox + ".>")
		return uc, []string{api.AgentWorkload}, nil
	}
	s := policy.Subject{HostID: h.ID, Hostname: h.Hostname, HostRoles: h.Roles, HostTags: h.Tags, Workload: cred.Workload, CredentialID: cred.ID, Inbox: inbox}
	roles, err := m.roles(ctx, p, cred, s)
	if err != nil {
		return nil, nil, err
	}
	if cred.Person != "" {
		// A person's {{workload}} would be their name's label, which two
		// people may share: subjects using it are left out of their
		// sessions ({{person}} names them).
		s.Person, s.Workload = cred.Person, ""
		uc.Tags.Add("person:" + cred.Person)
		// A session never outlives its person's login (a passkey has no
		// end of its own: it lasts until removed or offboarded).
		if !cred.Expires.IsZero() {
			uc.Expires = min(uc.Expires, cred.Expires.Unix())
		}
	}
	for _, r := range roles {
		uc.Tags.Add("role:" + r)
	}
	p.Apply(uc, roles, s)
	return uc, roles, nil
}

// roles are what the policy grants the credential: a workload's from its
// bindings, a person's from their IdP groups (People).
func (m *Method) roles(ctx context.Context, p *policy.Policy, cred *record.Credential, s policy.Subject) ([]string, error) {
	if cred.Person != "" {
		if m.cfg.People == nil {
			return nil, fmt.Errorf("%w: credential %s is a person's, and this verifier has no people", api.ErrNoRoles, cred.ID)
		}
		return m.cfg.People.Roles(ctx, p, cred)
	}
	roles := p.RolesFor(s)
	if len(roles) == 0 {
		return nil, fmt.Errorf("%w: %s on host %s (roles %v)", api.ErrNoRoles, cred.Workload, s.HostID, s.HostRoles)
	}
	return roles, nil
}

// quarantineTimeout bounds the quarantine's write.
const quarantineTimeout = 5 * time.Second

// Quarantine takes one credential out of service after a tamper signal (not
// its host, not its role), kicks its sessions and raises the alert. Through
// the state machine: a credential revoked meanwhile stays revoked (a
// quarantine can be released; a revocation cannot).
func (m *Method) Quarantine(ctx context.Context, id string, ev *audit.Event, cause error) {
	// Not on the decision's deadline: a decision made late (a reconnect
	// storm) must still take the credential out of service.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quarantineTimeout)
	defer cancel()
	c, err := m.cfg.Fleet.SetCredentialStatus(ctx, id, api.CredentialQuarantined, cause.Error(), nil)
	switch {
	case errors.Is(err, record.ErrTransition):
		m.log.Info("credential not quarantined: it is no longer active", "credential", id, "error", err)
	case err != nil:
		m.log.Error("quarantine failed", "credential", id, "error", err)
	default:
		if _, err := m.cfg.Sessions.KickAll(ctx, c); err != nil {
			m.log.Error("sessions of a quarantined credential not kicked", "credential", id, "error", err)
		}
	}
	m.cfg.Alerts.Alert(alert.CounterRegression, audit.Event{Host: ev.Host, Workload: ev.Workload, Credential: id, Counter: ev.Counter,
		Server: ev.Server, Client: ev.Client, ClientAddr: ev.ClientAddr, Reason: cause.Error()})
}

// keyCache holds parsed credential public keys: a key never changes for a
// credential ID, so it is parsed once.
type keyCache struct {
	mu sync.RWMutex
	m  map[string]*ecdsa.PublicKey
}

func (c *keyCache) get(id string, cose []byte) (*ecdsa.PublicKey, error) {
	c.mu.RLock()
	k, ok := c.m[id]
	c.mu.RUnlock()
	if ok {
		return k, nil
	}
	k, err := attestation.ParseCOSEKey(cose)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*ecdsa.PublicKey{}
	}
	c.m[id] = k
	c.mu.Unlock()
	return k, nil
}
