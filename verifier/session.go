package verifier

import (
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// AgentWorkload is the reserved workload name of each agent's own host
// credential: its sessions may only register credentials with the verifier.
const AgentWorkload = "tpmauthn-agent"

// Decision errors a connect can be denied with (tamper signals among them).
var (
	ErrUnknownCredential = errors.New("unknown credential")
	ErrRevoked           = errors.New("credential or host revoked")
	ErrReplay            = errors.New("replayed or stale assertion")
	ErrNoRoles           = errors.New("no role grants this workload any permission")
)

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

// authorizeAssertion decides a workload connect (DESIGN.md flow 3): the
// CONNECT carries the credential ID as nkey and the assertion bundle as sig,
// signed over a challenge derived from this connection's nonce.
func (v *Verifier) authorizeAssertion(ctx context.Context, rc *jwt.AuthorizationRequestClaims, ev *audit.Event, prepare func(*jwt.UserClaims)) (*jwt.UserClaims, error) {
	co := rc.ConnectOptions
	ev.Credential = co.Nkey
	raw, err := base64.RawURLEncoding.DecodeString(co.SignedNonce)
	if err != nil {
		return nil, fmt.Errorf("%w: sig is not base64url", attestation.ErrMalformed)
	}
	a, err := attestation.UnmarshalBundle(raw)
	if err != nil {
		return nil, err
	}
	credID := b64(a.CredentialID)
	nonce := rc.ClientInformation.Nonce
	if nonce == "" {
		return nil, fmt.Errorf("%w: the server sent no nonce", ErrReplay)
	}
	// Connects of one credential are decided one at a time in this process
	// (no compare-and-set conflicts among them); the compare-and-set still
	// orders them against other verifier instances.
	ev.Credential = credID
	unlock := v.credLocks.lock(credID)
	defer unlock()
	for range 20 {
		cred, rev, cached := v.creds.get(credID)
		if !cached {
			var err error
			cred, rev, err = get[record.Credential](ctx, v.st.creds, credID)
			if errors.Is(err, ErrNotFound) {
				return nil, fmt.Errorf("%w: %s", ErrUnknownCredential, credID)
			}
			if err != nil {
				return nil, err
			}
			v.sessions.add(cred.Sessions) // other instances' grants too
		}
		// The CONNECT nkey is the credential ID, or across rotations the
		// first ID of its lineage.
		if co.Nkey != cred.ID && co.Nkey != cred.Lineage {
			return nil, fmt.Errorf("%w: bundle names credential %s, CONNECT names %s", attestation.ErrMalformed, credID, co.Nkey)
		}
		ev.Host, ev.Workload = cred.Host, cred.Workload
		if cred.Status == api.CredentialActive && cred.Retired(time.Now()) {
			cred.Status = "retired"
		}
		if cred.Status != api.CredentialActive {
			err := fmt.Errorf("%w: credential %s is %s", ErrRevoked, cred.ID, cred.Status)
			if cred.Status == api.CredentialRevoked || cred.Status == "retired" {
				v.alert(AlertRevokedUsed, audit.Event{Host: cred.Host, Workload: cred.Workload, Credential: cred.ID,
					Server: ev.Server, Client: ev.Client, ClientAddr: ev.ClientAddr, Reason: err.Error()})
			}
			return nil, err
		}
		h, err := v.host(ctx, cred.Host)
		if err != nil || h.Status != api.HostActive {
			return nil, fmt.Errorf("%w: host %s is not active", ErrRevoked, cred.Host)
		}
		pub, err := v.pubKeys.get(cred.ID, cred.PublicKey)
		if err != nil {
			return nil, err
		}
		counter, err := attestation.VerifyAssertion(a, pub, attestation.AssertionCheck{
			RPIDHash: v.rpIDHash, Origin: v.cfg.Origin, Challenge: attestation.NATSChallenge([]byte(nonce)), RequireUV: true,
		})
		if err != nil {
			return nil, err
		}
		ev.Counter = counter
		if err := cred.AcceptCounter(counter); err != nil {
			err = fmt.Errorf("%w: %w", ErrReplay, err)
			v.quarantine(ctx, cred.ID, ev, err)
			return nil, err
		}
		uc, roles, err := v.userClaims(rc, cred, h)
		if err != nil {
			return nil, err
		}
		// Only now, with the assertion checked: a forged one must not cost
		// the signing of a grant.
		if prepare != nil {
			prepare(uc)
		}
		ev.Roles = roles
		now := time.Now()
		cred.Updated = now.UTC()
		live, ended := v.liveSessions(cred.Sessions, now)
		cred.Sessions = append(live, record.SessionRef{
			Server: rc.Server.ID, Client: rc.ClientInformation.ID, Expires: time.Unix(uc.Expires, 0).UTC(),
		})
		// The one KV write of a connect: counter and session, compare-and-set,
		// so two verifiers cannot both accept the same counter value.
		next, err := updateRev(ctx, v.st.creds, cred.ID, cred, rev)
		if errors.Is(err, ErrConflict) {
			v.creds.drop(credID) // changed elsewhere: re-read and re-check
			continue
		} else if err != nil {
			v.creds.drop(credID)
			return nil, err
		}
		v.sessions.granted(cred.Sessions[len(cred.Sessions)-1], cred.ID)
		v.sessions.forget(ended)
		v.creds.put(cred, next)
		return uc, nil
	}
	return nil, fmt.Errorf("%w: credential updated concurrently too often", ErrConflict)
}

// credLocks serializes decisions per credential within this process.
type credLocks struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	mu   sync.Mutex
	refs int
}

func (l *credLocks) lock(key string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*lockEntry{}
	}
	e := l.m[key]
	if e == nil {
		e = &lockEntry{}
		l.m[key] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}

// userClaims builds the session JWT: account APP, name workload@hostname,
// permissions from the policy (or the agent's own, fixed ones).
func (v *Verifier) userClaims(rc *jwt.AuthorizationRequestClaims, cred *record.Credential, h *record.Host) (*jwt.UserClaims, []string, error) {
	p := v.policy.current()
	uc := jwt.NewUserClaims(rc.UserNkey)
	uc.Audience = keys.AccountApp
	uc.Name = cred.Workload + "@" + h.Hostname
	uc.Expires = time.Now().Add(p.SessionTTL).Unix()
	uc.Tags.Add("host:"+h.ID, "workload:"+cred.Workload)
	if cred.Workload == AgentWorkload {
		uc.Pub.Allow.Add("tpmauthn.v1.register.>", "tpmauthn.v1.credentials.>", api.SubjectEnrollStatus)
		uc.Sub.Allow.Add("_INBOX.>")
		return uc, []string{AgentWorkload}, nil
	}
	s := Subject{HostID: h.ID, Hostname: h.Hostname, HostRoles: h.Roles, HostTags: h.Tags, Workload: cred.Workload, CredentialID: cred.ID}
	roles := p.RolesFor(s)
	if len(roles) == 0 {
		return nil, nil, fmt.Errorf("%w: %s on host %s (roles %v)", ErrNoRoles, cred.Workload, h.ID, h.Roles)
	}
	for _, r := range roles {
		uc.Tags.Add("role:" + r)
	}
	p.Apply(uc, roles, s)
	return uc, roles, nil
}

// quarantine takes one credential out of service after a tamper signal (not
// its host, not its role), kicks its sessions and raises the alert.
func (v *Verifier) quarantine(ctx context.Context, id string, ev *audit.Event, cause error) {
	// Through the state machine: a credential revoked meanwhile stays
	// revoked (a quarantine could be released; a revocation cannot).
	if _, err := v.setCredentialStatus(ctx, id, api.CredentialQuarantined, cause.Error(), nil); errors.Is(err, record.ErrTransition) {
		v.log.Info("credential not quarantined: it is no longer active", "credential", id, "error", err)
	} else if err != nil {
		v.log.Error("quarantine failed", "credential", id, "error", err)
	}
	v.alert(AlertCounterRegression, audit.Event{Host: ev.Host, Workload: ev.Workload, Credential: id, Counter: ev.Counter,
		Server: ev.Server, Client: ev.Client, ClientAddr: ev.ClientAddr, Reason: cause.Error()})
}
