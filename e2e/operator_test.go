package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The tests of issue 15 part 4: operators are people. Role ops (group ops)
// may call every operator API operation; role auditor (group auditors) may
// read only, though it may publish anywhere; role dev none.
const operatorPolicy = `session_ttl: 1m
roles:
  demo: {publish: {allow: ["demo.>"]}, subscribe: {allow: ["demo.>"]}}
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
  ops: {admin: ["*"]}
  auditor: {publish: {allow: [">"]}, admin: [read]}
bindings:
  - host_roles: [demo]
    roles: [demo]
people:
  idps: [{name: okta, issuer: %q, client_id: tpmauthn, client_secret_file: %q}]
  bindings:
    - {groups: [developers], roles: [dev]}
    - {groups: [ops], roles: [ops]}
    - {groups: [auditors], roles: [auditor]}
`

const (
	opsUID     = 1005
	auditorUID = 1006
)

// adminAs sends an operator API request on nc (a person's session).
func adminAs(nc *nats.Conn, op string, req, resp any) error {
	body, _ := json.Marshal(req)
	m, err := nc.Request(api.SubjectAdminPrefix+op, body, 3*time.Second)
	if err != nil {
		return err
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return fmt.Errorf("%s (%s)", m.Header.Get("Nats-Service-Error"), code)
	}
	if resp != nil {
		return json.Unmarshal(m.Data, resp)
	}
	return nil
}

// TestOperatorsArePeople: an ops person revokes a developer's credential
// through the operator API with their own TPM credential (the audit names
// them and their device); a developer cannot even reach the API; an
// auditor reads but is refused a change by the verifier; tpmauthnctl run as
// the ops person's uid works through the agent; the operator key file still
// works, and raises the break-glass alert.
func TestOperatorsArePeople(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t,
		oidctest.User{ID: "u-olga", Username: "olga", Password: "pw", Name: "Olga", Email: "olga@example.com", Groups: []string{"ops"}},
		oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana", Email: "dana@example.com", Groups: []string{"developers"}},
		oidctest.User{ID: "u-abe", Username: "abe", Password: "pw", Name: "Abe", Email: "abe@example.com", Groups: []string{"auditors"}})
	f := peopleFleetWith(t, op, operatorPolicy)
	alerts, err := f.Op.SubscribeSync(alert.SubjectPrefix + alert.BreakGlass)
	if err != nil {
		t.Fatal(err)
	}
	h := f.NewHost(t) // its join token: the operator key's first use
	login := func(user string, uid uint32) map[string]any {
		st, dev := personLoginAs(t, h, uid, loginGrant(t, f, op, user, "pw").AccessToken)
		if st != 200 {
			t.Fatalf("login of %s: %d %v", user, st, dev)
		}
		return dev
	}
	olgaDev, danaDev := login("olga", opsUID), login("dana", personUID)
	login("abe", auditorUID)
	olga, dana, abe := mustPerson(t, f, h, opsUID), mustPerson(t, f, h, personUID), mustPerson(t, f, h, auditorUID)

	// A developer's session may not publish to the operator API at all.
	if err := adminAs(dana, "host.list", struct{}{}, nil); err == nil {
		t.Fatal("a developer listed hosts")
	}
	// An auditor reaches it (publish ">"), reads, and is refused a change
	// by the verifier itself.
	var hosts []record.Host
	if err := adminAs(abe, "host.list", struct{}{}, &hosts); err != nil || len(hosts) != 1 {
		t.Fatalf("auditor host.list: %v %v", hosts, err)
	}
	err = adminAs(abe, "credential.revoke", api.IDRequest{ID: fmt.Sprint(danaDev["credential_id"]), Reason: "abe tries"}, nil)
	if err == nil || !strings.Contains(err.Error(), api.CodeForbidden) {
		t.Fatalf("auditor credential.revoke: %v, want %s", err, api.CodeForbidden)
	}
	// The ops person revokes the developer's credential.
	if err := adminAs(olga, "credential.revoke", api.IDRequest{ID: fmt.Sprint(danaDev["credential_id"]), Reason: "test"}, nil); err != nil {
		t.Fatalf("ops credential.revoke: %v", err)
	}
	if _, err := connectWorkload(t, f, h, personUID); err == nil {
		t.Fatal("the revoked developer credential still connects")
	}

	// tpmauthnctl as the ops person's uid: no key file, the agent's login.
	ctl := filepath.Join(fleettest.PublicDir(t), "tpmauthnctl") // where the other uid can run it
	if b, err := os.ReadFile(buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthnctl")); err != nil || os.WriteFile(ctl, b, 0o755) != nil {
		t.Fatalf("copy tpmauthnctl: %v", err)
	}
	cmd := exec.Command(ctl, "--agent-socket", h.Socket, "--json", "host", "list")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: opsUID, Gid: opsUID}}
	cmd.Env = []string{"HOME=/nonexistent", "PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), hosts[0].ID) {
		t.Fatalf("tpmauthnctl host list as the ops person: %v\n%s", err, out)
	}

	// The operator key still works, as break-glass: alerted.
	if _, err := alerts.NextMsg(3 * time.Second); err != nil {
		t.Fatalf("no break_glass alert after the operator key's use: %v", err)
	}

	olgaID, abeID := record.PersonID("okta", "u-olga"), record.PersonID("okta", "u-abe")
	var revoke, refused bool
	for _, e := range f.AuditEvents(t) {
		revoke = revoke || (e.Kind == "revoke" && e.Result == audit.OK && e.Person == olgaID &&
			strings.Contains(e.Actor, "person:"+olgaID) && strings.Contains(e.Actor, fmt.Sprint(olgaDev["nkey"])))
		refused = refused || (e.Kind == "admin.credential.revoke" && e.Result == audit.DenyText && e.Person == abeID)
	}
	if !revoke || !refused {
		t.Fatalf("audit: the revocation names the ops person and device %v; the auditor's refusal is audited %v", revoke, refused)
	}
}

// mustPerson connects uid's person through the agent.
func mustPerson(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, uid uint32) *nats.Conn {
	t.Helper()
	nc, err := connectWorkload(t, f, h, uid)
	if err != nil {
		t.Fatalf("connect as uid %d's person: %v", uid, err)
	}
	t.Cleanup(nc.Close)
	return nc
}
