package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The attack suite (docs/threat-model.md): each test is one attack as the
// attacker would run it against the real agent, swtpm and verifier, and
// asserts that it fails and is audited.

// H1: a relying party that gets a workload to answer its challenges through
// the agent's generic assertion endpoint (/v1/assertion) relays a NATS
// server's nonce as NATSChallenge(nonce) and presents the answer as the
// workload's NATS login. On 7faeb90 the login succeeded: both paths signed
// for the same origin. Now NATS assertions name the verifier's own origin,
// which the generic endpoint never signs for.
func TestAttackGenericAssertionRelayedAsNATSLogin(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	c := client.New(h.Socket)
	who, err := c.WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	relay := nats.Nkey(who.NKey, func(nonce []byte) ([]byte, error) {
		raw, err := c.Assertion(t.Context(), attestation.NATSChallenge(nonce))
		if err != nil {
			return nil, err
		}
		var resp api.AssertionResponse
		if err := json.Unmarshal(raw, &resp); err != nil {
			return nil, err
		}
		a, err := attestation.DecodeAssertionResponse(&resp)
		if err != nil {
			return nil, err
		}
		return attestation.MarshalBundle(a)
	})
	nc, err := nats.Connect(f.URL(), relay, nats.MaxReconnects(0))
	wantDenied(t, nc, err)
	eventually.Until(t, 5*time.Second, func() error {
		for _, e := range f.AuditEvents(t) {
			if e.Kind == "connect" && e.Result == "deny" && e.Credential == who.CredentialID && strings.Contains(e.Reason, "origin") {
				return nil
			}
		}
		return errAttackNotAudited
	})
	// The workload's own NATS login still works.
	nc, err = h.Connect(t)
	if err != nil {
		t.Fatalf("the workload's own login: %v", err)
	}
	nc.Close()
}

var errAttackNotAudited = errors.New("the refused attack is not in the audit trail as a denied connect")

// H4: an EK hash is no secret (the audit trail, alerts and host list print
// it), yet an ek:<hash> CONNECT of an allow-listed EK opened a session that
// could call every enrollment and registration endpoint, and the entry was
// never spent. Now its session may only enroll that EK (which takes the TPM
// holding it) and the entry is spent by the enrollment.
func TestAttackEKHashSessionActsForOthers(t *testing.T) {
	f := fleettest.New(t)
	own := fleettest.Authenticator(t, f.TPM)
	victim, err := f.Enroll(t, own, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	other := fleettest.Authenticator(t, swtpmtest.New(t)) // a TPM the attacker does not hold
	ek, err := other.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := attestation.EKHash(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "ek.allow", api.EKAllowRequest{EKHash: hash, Roles: []string{"edge"}}, nil)
	onErr, violations := fleettest.Violations()
	nc, err := nats.Connect(f.URL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.MaxReconnects(0),
		nats.CustomInboxPrefix(api.InboxForEK(hash)), onErr)
	if err != nil {
		t.Fatalf("allow-listed EK: %v", err)
	}
	defer nc.Close()
	// Registering for another host, or asking after one, is not the
	// session's to do: the server refuses the publish.
	for _, op := range []string{api.OpRegisterBegin, api.OpEnrollStatus, api.OpCredentialsStatus} {
		fleettest.PublishRefused(t, nc, violations, api.HostScope(victim.HostID).Subject(op))
	}
	// Nor may it call another EK's scope.
	fleettest.PublishRefused(t, nc, violations, api.EKScope(strings.Repeat("ab", 32)).Subject(api.OpEnrollBegin))
	// Nor may it begin enrolling another EK (the victim's TPM) on that grant:
	// the other EK's scope is refused by the server, and a body naming it on
	// the session's own scope by the verifier.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := own.Enroll(ctx, nc, "", "posing"); err == nil {
		t.Fatal("another EK enrolled on an allow-listed EK's session")
	}
	select {
	case err := <-violations:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("enrolling another EK: %v, want a permissions violation", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("enrolling another EK: no permissions violation reported")
	}
	ownEK, err := own.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(ownEK.Public)
	if err != nil {
		t.Fatal(err)
	}
	if code := fleettest.Request(t, nc, api.EKScope(hash).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{Hostname: "posing", EKPublic: der}, nil); code != api.CodeNotAllowed {
		t.Fatalf("enroll.begin naming another EK on the session's own scope: %q, want %s", code, api.CodeNotAllowed)
	}
	// The EK's own enrollment still works, once: the entry is spent.
	if _, err := other.Enroll(t.Context(), nc, "", "edge-1"); err != nil {
		t.Fatalf("the allow-listed EK's own enrollment: %v", err)
	}
	if nc2, err := nats.Connect(f.URL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.MaxReconnects(0)); err == nil {
		nc2.Close()
		t.Fatal("a spent allow-list entry opened another session")
	}
}

// M5: register.begin and register.finish served any session for any host.
// A join token's session may only enroll (its own token), a host's session
// act only for that host: the server refuses the publish to any other
// scope, and the endpoints refuse a body naming another host than the
// subject's.
func TestAttackForeignSessionRegistersForHost(t *testing.T) {
	f := fleettest.New(t)
	victim, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	onErr, violations := fleettest.Violations()
	spare := f.Token(t, time.Hour)
	unused, err := f.EnrollSession(spare, onErr) // a spare token's session
	if err != nil {
		t.Fatal(err)
	}
	defer unused.Close()
	for _, op := range []string{api.OpRegisterBegin, api.OpRegisterFinish, api.OpCredentialsStatus, api.OpEnrollStatus} {
		fleettest.PublishRefused(t, unused, violations, api.HostScope(victim.HostID).Subject(op))
	}
	fleettest.PublishRefused(t, unused, violations, api.TokenScope(f.Token(t, time.Hour)).Subject(api.OpEnrollBegin))
	// Its own scope serves enrollment only.
	body, _ := json.Marshal(api.RegisterBeginRequest{HostID: victim.HostID, Workload: "billing"})
	if _, err := unused.Request(api.TokenScope(spare).Subject(api.OpRegisterBegin), body, time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("register.begin on a join token's own scope: %v, want no responders", err)
	}
	own, err := f.HostSession(victim)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if code := fleettest.Request(t, own, api.HostScope(victim.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: victim.HostID, Workload: "billing"}, nil); code != "" {
		t.Fatalf("register.begin on the host's own session: %q", code)
	}
}

// H4: an offboarded host's proof still opened an enrollment session.
func TestAttackOffboardedHostProof(t *testing.T) {
	f := fleettest.New(t)
	e, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "host.offboard", api.IDRequest{ID: e.HostID, Reason: "decommissioned"}, nil)
	if nc, err := f.HostSession(e); err == nil {
		nc.Close()
		t.Fatal("an offboarded host's proof opened a session")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("offboarded host proof: %v, want an authorization violation", err)
	}
}

// H5: every session could subscribe to _INBOX.> and read every other
// session's replies (registration challenges, status answers). A session may
// now subscribe only under its own inbox prefix, and its own requests work.
func TestAttackSubscribeEveryInbox(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	violations := make(chan error, 4)
	onErr := nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err })
	workload, err := h.Connect(t, onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer workload.Close()
	tok := f.Token(t, time.Hour)
	enrollment, err := f.EnrollSession(tok, onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer enrollment.Close()
	for name, nc := range map[string]*nats.Conn{"workload": workload, "enrollment": enrollment} {
		if _, err := nc.SubscribeSync("_INBOX.>"); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Fatalf("%s session subscribing _INBOX.>: %v, want a permissions violation", name, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s session subscribed _INBOX.> unrefused", name)
		}
	}
	// Its own request-reply still works: the verifier answers on its inbox.
	var begin api.RegisterBeginResponse
	code := fleettest.Request(t, enrollment, api.TokenScope(tok).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{}, &begin)
	if code != "bad_request" { // answered (with a refusal): the reply reached the session's own inbox
		t.Fatalf("own request: %q", code)
	}
}

// M2: a leaked join token could not be revoked; now it can, and then opens
// nothing.
func TestAttackRevokedJoinToken(t *testing.T) {
	f := fleettest.New(t)
	var r api.TokenCreateResponse
	f.MustAdmin(t, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &r)
	f.MustAdmin(t, "token.revoke", api.IDRequest{ID: r.ID, Reason: "leaked"}, nil)
	if nc, err := f.EnrollSession(r.Token); err == nil {
		nc.Close()
		t.Fatal("a revoked join token opened an enrollment session")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("revoked token: %v, want an authorization violation", err)
	}
}

// P7: the hostname a client claims at enrollment went unvalidated into every
// session's user name and every listing, terminal escapes included.
func TestAttackHostnameWithControlCharacters(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	token := f.Token(t, time.Hour)
	nc, err := f.EnrollSession(token)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, name := range []string{"\x1b[2Jowned", "a\nb", "", strings.Repeat("a", 300), "web 01"} {
		_, err := a.Enroll(t.Context(), nc, token, name)
		fleettest.WantCode(t, err, "bad_request")
	}
	if _, err := a.Enroll(t.Context(), nc, token, "web-01.example.com"); err != nil {
		t.Fatalf("a proper hostname: %v", err)
	}
}

// M1: a credential record names at most 64 live sessions; a revocation
// kicked only those, so a workload that held more kept the rest up. Every
// live session of the credential is found (CONNZ on every server, by its
// CONNECT nkey) and kicked.
func TestAttackSessionsBeyondTheRecordCap(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	const n = 70 // beyond sessions.MaxPerCredential
	var open sync.WaitGroup
	opts := h.NATSOptions(t)
	for range n {
		open.Add(1)
		nc, err := nats.Connect(f.URL(), append(opts, nats.NoReconnect(), nats.MaxReconnects(0),
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
			nats.ClosedHandler(func(*nats.Conn) { open.Done() }))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
	}
	who, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who.CredentialID, Reason: "compromised"}, nil)
	closed := make(chan struct{})
	go func() { open.Wait(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("connections of a revoked credential still open 5 s after the revocation (of %d)", n)
	}
}

// P2: a host registered a credential under another host's credential ID;
// the workload index was moved to that ID before the verifier learned it
// existed, and the attacker's host could then begin a rotation "from" the
// victim's credential. The record is created first now (an existing ID is
// refused before the index moves), and a rotation's old credential must be
// the challenge's host's and workload's.
func TestAttackCredentialIDTakenFromAnotherHost(t *testing.T) {
	f := fleettest.New(t)
	victim := fleettest.Authenticator(t, f.TPM)
	ve, err := f.Enroll(t, victim, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	vs, err := f.HostSession(ve)
	if err != nil {
		t.Fatal(err)
	}
	defer vs.Close()
	vcred, err := victim.RegisterWithVerifier(t.Context(), vs, "billing")
	if err != nil {
		t.Fatal(err)
	}

	// The attacker's own host, enrolled through the EK allow-list.
	attacker := fleettest.Authenticator(t, swtpmtest.New(t))
	ek, err := attacker.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := attestation.EKHash(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "ek.allow", api.EKAllowRequest{EKHash: hash, Roles: []string{"demo"}}, nil)
	ekSession, err := nats.Connect(f.URL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.CustomInboxPrefix(api.InboxForEK(hash)), nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	ae, err := attacker.Enroll(t.Context(), ekSession, "", "attacker")
	ekSession.Close()
	if err != nil {
		t.Fatal(err)
	}
	as, err := f.HostSession(ae)
	if err != nil {
		t.Fatal(err)
	}
	defer as.Close()
	var begin api.RegisterBeginResponse
	if code := fleettest.Request(t, as, api.HostScope(ae.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: ae.HostID, Workload: "billing"}, &begin); code != "" {
		t.Fatal(code)
	}
	resp, _, err := attacker.Register(agent.RegisterOptions{Name: "billing", RPID: begin.RPID, Origin: begin.Origin,
		Challenge: begin.Challenge, UserHandle: begin.UserHandle, ID: vcred.ID})
	if err != nil {
		t.Fatal(err)
	}
	code := fleettest.Request(t, as, api.HostScope(ae.HostID).Subject(api.OpRegisterFinish), api.RegisterFinishRequest{HostID: ae.HostID, Workload: "billing",
		Challenge: begin.Challenge, Response: resp}, nil)
	if code != "conflict" {
		t.Fatalf("registering another host's credential ID: %q, want conflict", code)
	}
	// The attacker's workload index does not name the victim's credential:
	// no rotation can start from it.
	code = fleettest.Request(t, as, api.HostScope(ae.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: ae.HostID, Workload: "billing",
		RotateFrom: vcred.IDString()}, nil)
	if code == "" {
		t.Fatal("a rotation from another host's credential began")
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: vcred.IDString()}, &c)
	if c.Host != ve.HostID || c.Status != api.CredentialActive || !c.Retires.IsZero() {
		t.Fatalf("the victim's credential after the attack: %+v", c)
	}
}

// H4/M5, P-12 (found by reviews): the endpoints trusted the session's tags
// in the Nats-Request-Info header, which the server writes. But nats-server
// strips a client's copy only where the key starts a CRLF line, and nats.go
// splits header lines at a bare LF, stops at a bare blank line and drops
// headers it cannot decode: a client could make the verifier read its own.
// Now no endpoint reads the header: the subject's scope names the caller. A
// host's agent naming another host in the body, with a smuggled header
// naming it too, is refused; so is one that names its own host in the body
// but sends to the other's scope (the server refuses the publish).
func TestAttackForgedRequestInfo(t *testing.T) {
	f := fleettest.New(t)
	victim, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	attacker, err := f.Enroll(t, fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM))), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	onErr, violations := fleettest.Violations()
	as, err := f.HostSession(attacker, nats.SetCustomDialer(smuggleDialer{}), onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer as.Close()
	for op, req := range map[string]any{
		api.OpRegisterBegin:     api.RegisterBeginRequest{HostID: victim.HostID, Workload: "payroll"},
		api.OpCredentialsStatus: api.CredentialStatusRequest{HostID: victim.HostID},
		api.OpEnrollStatus:      api.EnrollStatusRequest{HostID: victim.HostID, Proof: victim.Proof},
	} {
		body, _ := json.Marshal(req)
		for _, tags := range []string{`"host:` + victim.HostID + `"`, `"agent:` + victim.HostID + `"`} {
			forged := `{"acc":"APP","tags":[` + tags + `]}`
			m := &nats.Msg{Subject: api.HostScope(attacker.HostID).Subject(op), Data: body, Header: nats.Header{"X-A": {"1~Nats-Request-Info: " + forged}}}
			r, err := as.RequestMsg(m, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if code := r.Header.Get("Nats-Service-Error-Code"); code != "not_found" {
				t.Fatalf("%s for another host with a smuggled Nats-Request-Info (%s): code %q, want not_found", op, tags, code)
			}
		}
		fleettest.PublishRefused(t, as, violations, api.HostScope(victim.HostID).Subject(op))
	}
}

// smuggleDialer turns "1~Nats-Request-Info" in what the client writes into a
// bare-LF header line: the header-smuggling attempt of TestAttackForgedRequestInfo.
type smuggleDialer struct{}

func (smuggleDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	return smuggleConn{c}, nil
}

type smuggleConn struct{ net.Conn }

func (c smuggleConn) Write(p []byte) (int, error) {
	_, err := c.Conn.Write(bytes.ReplaceAll(p, []byte("1~Nats-Request-Info"), []byte("1\nNats-Request-Info")))
	return len(p), err
}

// Review residual: revoking a host left its enrollment sessions (its host
// proof's, its join token's) up until they expired. They are kicked with
// the host's credentials.
func TestAttackEnrollmentSessionOutlivesHostRevoke(t *testing.T) {
	f := fleettest.New(t)
	token := f.Token(t, time.Hour)
	tokenSession, err := f.EnrollSession(token)
	if err != nil {
		t.Fatal(err)
	}
	defer tokenSession.Close()
	e, err := fleettest.Authenticator(t, f.TPM).Enroll(t.Context(), tokenSession, token, "doomed")
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan string, 2)
	hostSession, err := f.HostSession(e, nats.ClosedHandler(func(*nats.Conn) { closed <- "host proof" }),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer hostSession.Close()
	tokenSession.SetClosedHandler(func(*nats.Conn) { closed <- "join token" })
	tokenSession.SetErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	f.MustAdmin(t, "host.revoke", api.IDRequest{ID: e.HostID, Reason: "stolen"}, nil)
	for range 2 {
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatalf("an enrollment session of a revoked host still open (host proof: %v, token: %v)",
				!hostSession.IsClosed(), !tokenSession.IsClosed())
		}
	}
}

// low: whoever may publish on the callout subject (a credential of the
// auth account) forges an authorization request under a server key of its
// own, sealed to the verifier's public xkey, and reads the signed answer.
// Only a server of this NATS system may ask: the request goes unanswered,
// and is audited.
func TestAttackForgedCalloutRequest(t *testing.T) {
	f := fleettest.New(t)
	ks, _, err := keys.LoadOrCreate(f.Config.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(f.URL(), nats.Nkey(keys.Public(ks.Verifier), ks.Verifier.Sign))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	serverKP, _ := nkeys.CreateServer()
	serverID, _ := serverKP.PublicKey()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(userPub)
	rc.Audience = "nats-authorization-request"
	rc.Server.ID = serverID
	rc.UserNkey = userPub
	rc.Expires = time.Now().Add(time.Minute).Unix()
	rc.ConnectOptions.Username = "forged"
	tok, err := rc.Encode(serverKP)
	if err != nil {
		t.Fatal(err)
	}
	serverXK, _ := nkeys.CreateCurveKeys()
	serverXPub, _ := serverXK.PublicKey()
	sealed, err := serverXK.Seal([]byte(tok), keys.Public(ks.XKey))
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg("$SYS.REQ.USER.AUTH")
	m.Header.Set("Nats-Server-Xkey", serverXPub)
	m.Data = sealed
	if reply, err := nc.RequestMsg(m, 2*time.Second); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("forged request: reply %v, error %v; want no answer", reply != nil, err)
	}
	eventually.Until(t, 5*time.Second, func() error {
		for _, e := range f.AuditEvents(t) {
			if e.Kind == "connect" && e.Result == "deny" && e.Server == serverID && strings.Contains(e.Reason, "not a server of this NATS system") {
				return nil
			}
		}
		return errors.New("the forged request is not in the audit trail")
	})
}
