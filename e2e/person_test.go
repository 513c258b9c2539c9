package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/oauth2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The tests of issue 15 part 3: a person's login ends with a TPM credential
// bound to their local user on the host, named after the person, with the
// roles their IdP groups grant.

// personPolicy: the fleet's demo role for workloads, and role dev for
// people in group developers, on a TPM credential only.
const personPolicy = `session_ttl: 1m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>"]}
  dev:
    publish: {allow: ["dev.{{person}}.>"]}
    subscribe: {allow: ["dev.>"]}
bindings:
  - host_roles: [demo]
    roles: [demo]
people:
  login_ttl: 1h
  idps: [{name: okta, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings:
    - {groups: [developers], roles: [dev], require: {assurance: hardware}}
`

// peopleFleet starts a fleet whose verifier serves logins (plain HTTP on
// loopback) for op's people, with personPolicy.
func peopleFleet(t *testing.T, op *oidctest.OP) *fleettest.Fleet {
	t.Helper()
	return peopleFleetWith(t, op, personPolicy)
}

// peopleFleetWith is peopleFleet with a policy whose %q are op's issuer and
// the client secret file.
func peopleFleetWith(t testing.TB, op *oidctest.OP, policy string, opts ...fleettest.Option) *fleettest.Fleet {
	t.Helper()
	dir := t.TempDir()
	secret, pol := filepath.Join(dir, "okta.secret"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, fmt.Appendf(nil, policy, op.Issuer, secret), 0o600); err != nil {
		t.Fatal(err)
	}
	f := fleettest.New(t, append([]fleettest.Option{func(f *fleettest.Fleet) {
		f.Config.PolicyFile, f.Config.HTTPListen = pol, "127.0.0.1:0"
	}}, opts...)...)
	op.AddClient("tpmauthn", "s3cret", f.Verifier.HTTPURL()+api.PathOIDCCallback)
	return f
}

// loginGrant logs username in at the IdP through the verifier, as
// tpmauthnctl login --no-agent does (loopback redirect, PKCE), and returns
// the login: its grant is bound to a software key no test holds.
func loginGrant(t testing.TB, f *fleettest.Fleet, op *oidctest.OP, username, password string) api.LoginResult {
	t.Helper()
	return loginGrantFor(t, f, op, username, password, url.Values{api.FormGrantKey: {strings.Repeat("5a", 32)}})
}

// loginGrantAt is loginGrant as tpmauthnctl login with an agent does it:
// the grant is bound to host h's agent and local user uid.
func loginGrantAt(t testing.TB, f *fleettest.Fleet, op *oidctest.OP, username, password string, h *fleettest.Host, uid uint32) api.LoginResult {
	t.Helper()
	return loginGrantFor(t, f, op, username, password, url.Values{api.FormGrantHost: {h.HostID(t)}, api.FormGrantUID: {strconv.FormatUint(uint64(uid), 10)}})
}

func loginGrantFor(t testing.TB, f *fleettest.Fleet, op *oidctest.OP, username, password string, bind url.Values) api.LoginResult {
	t.Helper()
	base := f.Verifier.HTTPURL()
	b := oidctest.Browser(t)
	pkce := oauth2.GenerateVerifier()
	q := url.Values{"cb": {"http://127.0.0.1:9/cb"}, "cc": {oauth2.S256ChallengeFromVerifier(pkce)}}
	maps.Copy(q, bind)
	start := base + api.PathLogin + "okta?" + q.Encode()
	resp, err := b.Get(start)
	if err != nil {
		t.Fatal(err)
	}
	cb := op.LogIn(t, b, oidctest.Submit(t, b, resp, nil), username, password)
	nf := *b
	nf.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err = nf.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("callback: %s", resp.Status)
	}
	resp, err = http.PostForm(base+api.PathCLIToken, url.Values{"grant_type": {api.GrantTypeCode}, "code": {loc.Query().Get("code")}, "code_verifier": {pkce}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res api.LoginResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || res.AccessToken == "" {
		t.Fatalf("login of %s: %s %v", username, resp.Status, err)
	}
	return res
}

// personLoginAs hands grant to the host's agent as user uid.
func personLoginAs(t *testing.T, h *fleettest.Host, uid uint32, grant string) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(api.PersonLoginRequest{Grant: grant})
	st, res, err := curlPostAs(t, uid, h.Socket, api.AgentPathPersonLogin, string(body))
	if err != nil {
		t.Fatal(err)
	}
	return st, res
}

const (
	personUID = 1003 // the person's local user
	otherUID  = 1004 // another local user of the same host
)

// TestPersonTPMCredential: dana logs in, hands the grant to the agent as
// her uid, and her programs connect as person:dana with role dev: a publish
// under dev.<her person ID> is allowed, one under another person's refused.
// Another uid of the host gets nothing of hers; the grant is one use; the
// audit names her.
func TestPersonTPMCredential(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana Scully", Email: "dana.scully@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t, fleettest.Workloads(fleettest.UIDWorkload("billing", billingUID)))

	res := loginGrantAt(t, f, op, "dana", "pw", h, personUID)
	start := time.Now()
	st, dev := personLoginAs(t, h, personUID, res.AccessToken)
	took := time.Since(start)
	wantID := record.PersonID("okta", "u-dana")
	if st != 200 || dev["name"] != "person:dana-scully" || dev["uid"] != float64(personUID) {
		t.Fatalf("person login at the agent: %d %v", st, dev)
	}
	if personIDOf(dev) != wantID {
		t.Fatalf("person login names %v, want %s", dev["person"], wantID)
	}
	t.Logf("person login at the agent (key creation, certify, two verifier round trips): %v", took)

	// The grant was redeemed: handing it again (here, by another user who
	// got hold of it) is refused, and nothing is registered for them.
	if st, body := personLoginAs(t, h, otherUID, res.AccessToken); st != http.StatusForbidden || !strings.Contains(fmt.Sprint(body["error"]), "log") {
		t.Fatalf("a redeemed grant handed again: %d %v, want 403", st, body)
	}

	st, who := curlAs(t, personUID, h.Socket, api.AgentPathWhoAmI)
	if st != 200 || who["credential_id"] != dev["credential_id"] {
		t.Fatalf("whoami as the person's uid: %d %v", st, who)
	}
	if st, who := curlAs(t, otherUID, h.Socket, api.AgentPathWhoAmI); st != http.StatusForbidden {
		t.Fatalf("whoami as another uid: %d %v, want 403 (the credential is the person's uid's only)", st, who)
	}
	if _, err := connectWorkload(t, f, h, otherUID); err == nil {
		t.Fatal("another uid of the host connected")
	}

	nc, err := connectWorkload(t, f, h, personUID)
	if err != nil {
		t.Fatalf("the person's program cannot connect: %v", err)
	}
	defer nc.Close()
	errs := make(chan error, 4)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	if err := publishAndWait(nc, "dev."+wantID+".hello"); err != nil {
		t.Fatalf("publish under the person's own subject: %v", err)
	}
	select {
	case err := <-errs:
		t.Fatalf("publish under the person's own subject refused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	_ = publishAndWait(nc, "dev.okta_someoneelse.hello")
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "Permissions Violation") {
			t.Fatalf("publish under another person's subject: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a publish under another person's subject was not refused")
	}

	var rep record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: fmt.Sprint(dev["credential_id"])}, &rep)
	if rep.Person != wantID || !strings.HasPrefix(rep.Workload, "person:") {
		t.Fatalf("credential.show: %+v, want the person's", rep)
	}
	var reg, grant bool
	for _, e := range f.AuditEvents(t) {
		reg = reg || (e.Kind == "register" && e.Result == audit.OK && e.Person == wantID && e.Credential == dev["credential_id"])
		grant = grant || (e.Kind == "connect" && e.Result == audit.Allow && e.Person == wantID)
	}
	if !reg || !grant {
		t.Fatalf("audit: registration named the person %v, a grant named the person %v", reg, grant)
	}
}

// publishAndWait publishes and flushes: a refusal comes back as an async
// error.
func publishAndWait(nc *nats.Conn, subject string) error {
	if err := nc.Publish(subject, []byte("hi")); err != nil {
		return err
	}
	if err := nc.FlushTimeout(2 * time.Second); err != nil {
		return errors.Join(err, nc.LastError())
	}
	return nil
}

// TestPersonCredentialEndsWithPerson: a person's credential stops working
// when the person is disabled (their offboarding), and a second login on the
// same host replaces the first credential; roles follow the person's groups
// as the verifier knows them now.
func TestPersonCredentialEndsWithPerson(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t, oidctest.User{ID: "u-eve", Username: "eve", Password: "pw", Name: "Eve", Email: "eve@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t)

	first := loginGrantAt(t, f, op, "eve", "pw", h, personUID)
	if st, body := personLoginAs(t, h, personUID, first.AccessToken); st != 200 {
		t.Fatalf("first login: %d %v", st, body)
	}
	_, who1 := curlAs(t, personUID, h.Socket, api.AgentPathWhoAmI)
	second := loginGrantAt(t, f, op, "eve", "pw", h, personUID)
	st, dev := personLoginAs(t, h, personUID, second.AccessToken)
	if st != 200 || dev["credential_id"] == who1["credential_id"] {
		t.Fatalf("second login: %d %v (first credential %v)", st, dev, who1["credential_id"])
	}
	var old record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: fmt.Sprint(who1["credential_id"])}, &old)
	if old.Retires.IsZero() || old.ReplacedBy != dev["credential_id"] {
		t.Fatalf("the first login's credential after the second: %+v, want retiring, replaced by %v", old, dev["credential_id"])
	}
	nc, err := connectWorkload(t, f, h, personUID)
	if err != nil {
		t.Fatalf("connect after the second login: %v", err)
	}
	nc.Close()

	id := record.PersonID("okta", "u-eve")
	if err := f.Verifier.People().Disable(t.Context(), id, "left the company", "test"); err != nil {
		t.Fatal(err)
	}
	var err2 error
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if nc, err2 = connectWorkload(t, f, h, personUID); err2 != nil {
			break
		}
		nc.Close()
		time.Sleep(100 * time.Millisecond)
	}
	if err2 == nil {
		t.Fatal("a disabled person's credential still connects")
	}
	denied := false
	for _, e := range f.AuditEvents(t) {
		denied = denied || (e.Kind == "connect" && e.Result == audit.DenyText && e.Person == id && strings.Contains(e.Reason, "disabled"))
	}
	if !denied {
		t.Fatal("no audited denial naming the disabled person")
	}
	if !slices.Contains(first.Roles, "dev") {
		t.Fatalf("login roles %v", first.Roles)
	}
}

// TestPolicyReloadKicksPeople (P-16): an operator removes an IdP from the
// policy (it was compromised, or the company left it): the live sessions
// of its people end at the reload, not at their expiry, and they cannot
// connect again.
func TestPolicyReloadKicksPeople(t *testing.T) {
	requireRoot(t)
	_, f, h, _ := danaLoggedIn(t)
	closed := personSession(t, f, h)

	// The same policy without its people: section. A file's reload is
	// noticed at the policy's next use (at most a second apart): a
	// workload's connect, or here the operator's status.
	noIdP := personPolicy[:strings.Index(personPolicy, "people:")]
	later := time.Now().Add(2 * time.Second)
	if err := os.WriteFile(f.Config.PolicyFile, []byte(noIdP), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(f.Config.PolicyFile, later, later); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 15*time.Second, func() error {
		select {
		case <-closed:
			return nil
		default:
			f.Admin(t, "status", nil, nil)
			return errors.New("the person's session outlives the removal of their IdP")
		}
	})
	if _, err := connectWorkload(t, f, h, personUID); err == nil {
		t.Fatal("a person of a removed IdP connected again")
	}
	var found bool
	for _, ev := range f.AuditEvents(t) {
		found = found || (ev.Kind == "person.policy" && strings.Contains(ev.Reason, "loses dev"))
	}
	if !found {
		t.Fatal("no person.policy audit event names the role the reload took away")
	}
}

// TestPersonLogoutRevokes (P-16): logging out on a host revokes the
// person's credential there at the verifier, not only the local key: its
// live sessions drop at once. Another host's agent cannot revoke it.
func TestPersonLogoutRevokes(t *testing.T) {
	requireRoot(t)
	_, f, h, dev := danaLoggedIn(t)
	credID := fmt.Sprint(dev["credential_id"])
	// Another host's agent, on its own scope, naming this credential.
	other, err := f.Enroll(t, fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM))), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	osess, err := f.HostSession(other)
	if err != nil {
		t.Fatal(err)
	}
	defer osess.Close()
	if code := fleettest.Request(t, osess, api.HostScope(other.HostID).Subject(api.OpPersonLogout), api.PersonLogoutRequest{HostID: other.HostID, CredentialID: credID}, nil); code != api.CodeNotFound {
		t.Fatalf("another host's agent revoking a person's credential: %q, want %s", code, api.CodeNotFound)
	}

	closed := personSession(t, f, h)
	cmd := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", "--unix-socket", h.Socket, "http://agent"+api.AgentPathPersonLogin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: personUID, Gid: personUID}}
	out, err := cmd.Output()
	if err != nil || string(out) != "204" {
		t.Fatalf("logout: %s %v", out, err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the person's session outlives their logout")
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: credID}, &c)
	if c.Status != api.CredentialRevoked {
		t.Fatalf("the logged-out credential is %s at the verifier, want revoked", c.Status)
	}
}

// danaLoggedIn starts an IdP with dana (group developers), a people fleet
// and a host, and logs dana in at its agent as uid personUID; it returns
// the agent's answer.
func danaLoggedIn(t *testing.T) (*oidctest.OP, *fleettest.Fleet, *fleettest.Host, map[string]any) {
	t.Helper()
	op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana Scully", Email: "dana.scully@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t)
	st, dev := personLoginAs(t, h, personUID, loginGrantAt(t, f, op, "dana", "pw", h, personUID).AccessToken)
	if st != 200 {
		t.Fatalf("person login at the agent: %d %v", st, dev)
	}
	return op, f, h, dev
}

// personSession connects the person's program (uid personUID) and returns
// a channel closed when the server ends its session.
func personSession(t *testing.T, f *fleettest.Fleet, h *fleettest.Host) <-chan struct{} {
	t.Helper()
	return personSessionOf(t, f, h, personUID)
}

// personSessionOf is personSession for a program of uid.
func personSessionOf(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, uid uint32) <-chan struct{} {
	t.Helper()
	nc, err := connectWorkload(t, f, h, uid)
	if err != nil {
		t.Fatalf("the person's program cannot connect: %v", err)
	}
	t.Cleanup(nc.Close)
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	return closed
}

// TestLoginWithFewerGroupsKicks: a person's new login whose ID token no
// longer lists a group (the IdP removed them from it) kicks the sessions of
// their other credentials that held the group's role; before, the login
// updated the groups silently and those sessions kept the role until they
// expired (the next re-check saw no change).
func TestLoginWithFewerGroupsKicks(t *testing.T) {
	requireRoot(t)
	op, f, h, _ := danaLoggedIn(t)
	closed := personSession(t, f, h)
	op.SetGroups("u-dana", "sales") // out of developers: role dev is gone
	loginGrant(t, f, op, "dana", "pw")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the session keeps the role of a group the person's new login no longer lists")
	}
	var kicked bool
	for _, e := range f.AuditEvents(t) {
		kicked = kicked || (e.Kind == "person.groups" && e.Actor == "login" && strings.Contains(e.Reason, "sessions kicked"))
	}
	if !kicked {
		t.Fatal("no person.groups event by the login")
	}
}
