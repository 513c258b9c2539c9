package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os/user"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
)

// People's device credentials: a person who logged in (tpmauthnctl login)
// hands the agent their login grant over the socket; the agent registers a
// new TPM credential for them, bound to the calling uid, which the verifier
// names after the person and which expires with the login. Afterwards the
// uid's programs that match no configured workload sign as the person.
// A configured workload wins over a person's credential: a service's
// identity does not change because someone logged in as its uid.

// personName is the local name of a uid's person credential (its TPM
// queue room and metrics label): never a configured workload's name, which
// has no '.'.
func personName(uid uint32) string { return "person.uid" + strconv.FormatUint(uint64(uid), 10) }

// RegisterPerson registers a person's device credential for the local user
// uid with the verifier over nc, redeeming grant.
func (a *Authenticator) RegisterPerson(ctx context.Context, nc *nats.Conn, grant string, uid uint32, user string) (*Credential, *api.RegisterFinishResponse, error) {
	e, err := a.Enrollment()
	if err != nil {
		return nil, nil, err
	}
	var begin api.RegisterBeginResponse
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), &api.RegisterBeginRequest{HostID: e.HostID, Workload: api.PersonWorkload,
		Person: &api.PersonRegistration{Grant: grant, UID: uid, User: user}}, &begin); err != nil {
		return nil, nil, err
	}
	if err := a.adoptAKCert(begin.AKCert); err != nil {
		return nil, nil, err
	}
	resp, cred, err := a.Register(RegisterOptions{Name: personName(uid), RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
	if err != nil {
		return nil, nil, err
	}
	var fin api.RegisterFinishResponse
	if err := call(ctx, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), &api.RegisterFinishRequest{
		HostID: e.HostID, Workload: api.PersonWorkload, Challenge: begin.Challenge, Response: resp,
	}, &fin); err != nil {
		_ = a.DeleteCredential(cred.ID)
		return nil, nil, err
	}
	if fin.Person == nil || fin.Expires.IsZero() {
		_ = a.DeleteCredential(cred.ID)
		return nil, nil, errors.New("the verifier registered the credential as no person's: is it older than this agent?")
	}
	cred.UID, cred.User, cred.Person, cred.Expires = &uid, user, fin.Person.ID, fin.Expires
	if err := writeJSON(a.credPath(cred.ID), cred); err != nil {
		_ = a.DeleteCredential(cred.ID)
		return nil, nil, err
	}
	return cred, &fin, nil
}

// personPlace tells a local user where a login on this host binds its
// grant (api.PersonLoginPlace): this host, and the caller's uid as read off
// its socket, which is what personLogin will present with the grant.
func (a *Agent) personPlace(w http.ResponseWriter, _ *http.Request, p *Peer) {
	host := a.hostID()
	if host == "" {
		writeErr(w, http.StatusServiceUnavailable, "this host is not enrolled yet", "wait for the agent to enroll (tpmauthn-agent doctor), then log in")
		return
	}
	respondJSON(w, http.StatusOK, api.PersonLoginPlace{Host: host, UID: p.UID})
}

// personTimeout bounds a person's login at the agent (a key creation, a
// certify and two verifier round trips, behind other TPM work).
const personTimeout = 30 * time.Second

// personLogin redeems the caller's login grant for a credential bound to
// their uid, replacing the one they had.
func (a *Agent) personLogin(w http.ResponseWriter, r *http.Request, p *Peer) {
	// Any local user may call this: at most a few logins a minute per uid
	// (and for the host), so that made-up grants cannot spend the host
	// session's budget at the verifier, which its own registrations need.
	if !a.loginLimit.allow(p.UID) {
		writeErr(w, http.StatusTooManyRequests, "too many logins from this user on this host", "wait a minute, then log in again")
		return
	}
	var req api.PersonLoginRequest
	if err := decodeBody(r, &req); err != nil || req.Grant == "" {
		writeErr(w, http.StatusBadRequest, "send {\"grant\": \"<the login's access token>\"}", "tpmauthnctl login does this for you")
		return
	}
	nc, err := a.verifierConn()
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, "the agent cannot reach the verifier: "+err.Error(), "retry when the verifier is up")
		return
	}
	// One at a time: each is a key creation and a certify, which must not
	// crowd out the TPM's signatures (a valid grant is needed before any
	// TPM work: the verifier redeems it first).
	select {
	case a.personSem <- struct{}{}:
		defer func() { <-a.personSem }()
	case <-r.Context().Done():
		writeErr(w, http.StatusServiceUnavailable, "another login is under way on this host", "retry")
		return
	}
	cred, fin, err := a.auth.RegisterPerson(r.Context(), nc, req.Grant, p.UID, p.User)
	if err != nil {
		a.log.Warn("a person's login at the agent failed", "uid", p.UID, "error", err)
		status, hint := http.StatusServiceUnavailable, "see the agent's log"
		var ve *VerifierError
		if errors.As(err, &ve) && ve.Code == api.CodeLoginInvalid {
			status, hint = http.StatusForbidden, "log in again: tpmauthnctl login"
		}
		writeErr(w, status, "the verifier did not register your credential: "+err.Error(), hint)
		return
	}
	a.usePerson(p.UID, cred)
	host := a.hostID()
	a.log.Info("person logged in on this host", "uid", p.UID, "person", fin.Person.ID, "credential", cred.IDString(), "until", fin.Expires)
	respondJSON(w, http.StatusOK, api.PersonLoginResponse{Person: *fin.Person, Host: host, CredentialID: cred.IDString(),
		NKey: cred.NKey(), UID: p.UID, Name: fin.Workload, Expires: fin.Expires})
}

// personLogout deletes the caller's person credential, and has the
// verifier revoke it.
func (a *Agent) personLogout(w http.ResponseWriter, r *http.Request, p *Peer) {
	a.mu.Lock()
	c := a.people[p.UID]
	delete(a.people, p.UID)
	a.mu.Unlock()
	if c == nil {
		writeErr(w, http.StatusNotFound, "you are not logged in on this host", "")
		return
	}
	if err := a.auth.DeleteCredential(c.ID); err != nil {
		a.log.Warn("a logged-out person's key was not deleted", "credential", c.IDString(), "error", err)
	}
	// And at the verifier, which kicks its live sessions; if it cannot be
	// told now, the credential still ends with the login.
	if err := a.revokePerson(r.Context(), c); err != nil {
		a.log.Warn("a logged-out person's credential was not revoked at the verifier (it ends with the login)", "credential", c.IDString(), "error", err)
	}
	a.log.Info("person logged out on this host", "uid", p.UID, "person", c.Person)
	w.WriteHeader(http.StatusNoContent)
}

// revokePerson has the verifier revoke person credential c of this host.
func (a *Agent) revokePerson(ctx context.Context, c *Credential) error {
	nc, err := a.verifierConn()
	if err != nil {
		return err
	}
	host := a.hostID()
	return call(ctx, nc, api.HostScope(host).Subject(api.OpPersonLogout), &api.PersonLogoutRequest{HostID: host, CredentialID: c.IDString()}, &struct{}{})
}

// usePerson makes c the uid's person credential, deleting the one it
// replaces (the verifier retires that one).
func (a *Agent) usePerson(uid uint32, c *Credential) {
	a.mu.Lock()
	old := a.people[uid]
	a.people[uid] = c
	a.mu.Unlock()
	if old != nil && old.IDString() != c.IDString() {
		if err := a.auth.DeleteCredential(old.ID); err != nil {
			a.log.Warn("a replaced person credential's key was not deleted", "credential", old.IDString(), "error", err)
		}
	}
}

// errAccountUnnamed: the caller's uid has no account name now, though its
// person credential was made for one. A name service that did not answer
// (sssd restarting) is not a reused uid: the request is refused, the
// credential kept; the sweep drops it if the account is gone for good.
var errAccountUnnamed = errors.New("the agent cannot name your account now (the host's name service did not answer, or the account is gone)")

// accountVerdict is what a person credential's account binding says of a
// caller, or of its uid's account now.
type accountVerdict int

const (
	accountSame    accountVerdict = iota // serve it
	accountUnnamed                       // refuse this request, keep it
	accountOther                         // another account's now: drop it
)

// checkAccount compares the account name c was made for with now's: "" is
// an account without a name (a bare uid), or a lookup that failed.
func checkAccount(c *Credential, now string) accountVerdict {
	switch {
	case c.User == now:
		return accountSame
	case now == "":
		return accountUnnamed
	default:
		return accountOther
	}
}

// personFor is the caller's uid's person credential if it has one that
// has not expired (an expired one is deleted) and was made for the
// caller's account: a uid whose account was deleted and reused, or
// renamed, is another account's, and the login was not theirs (the
// credential is deleted, and revoked at the verifier).
func (a *Agent) personFor(p *Peer) (*Credential, error) {
	a.mu.Lock()
	c := a.people[p.UID]
	expired := c != nil && !time.Now().Before(c.Expires)
	verdict := accountSame
	if c != nil && !expired {
		verdict = checkAccount(c, p.User)
	}
	if expired || verdict == accountOther {
		delete(a.people, p.UID)
	}
	a.mu.Unlock()
	switch {
	case c == nil:
		return nil, nil
	case expired:
		if err := a.auth.DeleteCredential(c.ID); err != nil {
			a.log.Warn("an expired person credential's key was not deleted", "credential", c.IDString(), "error", err)
		}
		return nil, fmt.Errorf("your login ended at %s", c.Expires.Format(time.RFC3339))
	case verdict == accountUnnamed:
		return nil, errAccountUnnamed
	case verdict == accountOther:
		a.log.Warn("a person credential refused: its uid's account is not the one that logged in (deleted and reused, or renamed)",
			"uid", p.UID, "credential", c.IDString(), "login_account", c.User, "account_now", p.User)
		go a.dropPerson(c)
		return nil, errors.New("the login on this uid was another account's (the uid was reused or renamed)")
	}
	return c, nil
}

// dropPerson deletes person credential c's key and has the verifier revoke
// it, which ends its live sessions; while the verifier cannot be told, it
// tries again (5 s, doubling to 2 min) until the login would have ended or
// the agent stops.
func (a *Agent) dropPerson(c *Credential) {
	if err := a.auth.DeleteCredential(c.ID); err != nil {
		a.log.Warn("a refused person credential's key was not deleted", "credential", c.IDString(), "error", err)
	}
	ctx := a.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	for wait := 5 * time.Second; ; wait = min(2*wait, 2*time.Minute) {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := a.revokePerson(cctx, c)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil || !time.Now().Add(wait).Before(c.Expires) {
			a.log.Warn("a refused person credential was not revoked at the verifier (it ends with the login)", "credential", c.IDString(), "error", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// peopleLoop sweeps the person credentials every RotationCheck until ctx
// ends: a uid whose account is gone or another's loses its credential even
// if nothing on it calls the agent.
func (a *Agent) peopleLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.RotationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.sweepPeople()
		}
	}
}

// sweepPeople drops each person credential whose uid's account is now
// another's, or gone (when it was made for a named account). A lookup that
// fails says nothing.
func (a *Agent) sweepPeople() {
	a.mu.Lock()
	people := make(map[uint32]*Credential, len(a.people))
	maps.Copy(people, a.people)
	a.mu.Unlock()
	for uid, c := range people {
		name, err := accountName(uid)
		if err != nil {
			continue
		}
		if checkAccount(c, name) == accountSame || (name == "" && c.User == "") {
			continue
		}
		a.mu.Lock()
		mine := a.people[uid] == c
		if mine {
			delete(a.people, uid)
		}
		a.mu.Unlock()
		if mine {
			a.log.Warn("a person credential dropped: its uid's account is gone or another's", "uid", uid, "credential", c.IDString(), "login_account", c.User, "account_now", name)
			go a.dropPerson(c)
		}
	}
}

// accountName is uid's account name now: "" when it has none (no such
// account); an error when the name service did not say.
func accountName(uid uint32) (string, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	var unknown user.UnknownUserIdError
	switch {
	case err == nil:
		return u.Username, nil
	case errors.As(err, &unknown):
		return "", nil
	}
	return "", err
}

// loadPeople picks up, at start, the person credentials of earlier runs:
// the newest of each uid that has not expired; the others are deleted.
func (a *Agent) loadPeople() error {
	creds, err := a.auth.Credentials()
	if err != nil {
		return err
	}
	now := time.Now()
	for _, c := range creds { // oldest first: a newer one replaces
		if c.UID == nil {
			continue
		}
		if !now.Before(c.Expires) {
			if err := a.auth.DeleteCredential(c.ID); err != nil {
				a.log.Warn("an expired person credential's key was not deleted", "credential", c.IDString(), "error", err)
			}
			continue
		}
		a.usePerson(*c.UID, c)
	}
	a.sweepPeople() // an account may have gone while the agent was down
	return nil
}

// loginLimiter bounds person logins at the agent: per uid, and for the host.
type loginLimiter struct {
	mu    sync.Mutex
	host  *rate.Limiter
	byUID map[uint32]*rate.Limiter
}

// Per uid: a burst of 3, then one every 20 s; the host: 10, then one every
// 5 s. A person logs in once a day or so.
func newLoginLimiter() *loginLimiter {
	return &loginLimiter{host: rate.NewLimiter(rate.Every(5*time.Second), 10), byUID: map[uint32]*rate.Limiter{}}
}

func (l *loginLimiter) allow(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.byUID[uid]
	if u == nil {
		if len(l.byUID) > 4096 { // bounded: forget them all, rarely
			clear(l.byUID)
		}
		u = rate.NewLimiter(rate.Every(20*time.Second), 3)
		l.byUID[uid] = u
	}
	return u.Allow() && l.host.Allow()
}
