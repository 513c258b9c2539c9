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
// read only; role dev none.
const operatorPolicy = `session_ttl: 1m
roles:
  demo: {publish: {allow: ["demo.>"]}, subscribe: {allow: ["demo.>"]}}
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
  ops: {admin: ["*"]}
  auditor: {publish: {allow: ["audit.{{person}}.>"]}, admin: [read]}
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

// adminAs sends an operator API request on nc (a person's session), on
// the subject of the person and credential dev names.
func adminAs(nc *nats.Conn, dev map[string]any, op string, req, resp any) error {
	return adminOn(nc, api.AdminPersonSubject(personIDOf(dev), fmt.Sprint(dev["credential_id"]), op), req, resp)
}

func adminOn(nc *nats.Conn, subject string, req, resp any) error {
	body, _ := json.Marshal(req)
	m, err := nc.Request(subject, body, 3*time.Second)
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
		st, dev := personLoginAs(t, h, uid, loginGrantAt(t, f, op, user, "pw", h, uid).AccessToken)
		if st != 200 {
			t.Fatalf("login of %s: %d %v", user, st, dev)
		}
		return dev
	}
	olgaDev, danaDev := login("olga", opsUID), login("dana", personUID)
	abeDev := login("abe", auditorUID)
	olga, dana, abe := mustPerson(t, f, h, opsUID), mustPerson(t, f, h, personUID), mustPerson(t, f, h, auditorUID)

	// A developer's session may not publish to the operator API at all,
	// neither on its own subject nor the operator key's.
	if err := adminAs(dana, danaDev, "host.list", struct{}{}, nil); err == nil {
		t.Fatal("a developer listed hosts")
	}
	if err := adminOn(dana, api.SubjectAdminPrefix+"host.list", struct{}{}, nil); err == nil {
		t.Fatal("a developer reached the operator key's subject")
	}
	// An auditor reads, on its own subject; a change is not among its
	// subjects, and another person's subject is not its to publish to.
	var hosts []record.Host
	if err := adminAs(abe, abeDev, "host.list", struct{}{}, &hosts); err != nil || len(hosts) != 1 {
		t.Fatalf("auditor host.list: %v %v", hosts, err)
	}
	revokeDana := api.IDRequest{ID: fmt.Sprint(danaDev["credential_id"]), Reason: "abe tries"}
	if err := adminAs(abe, abeDev, "credential.revoke", revokeDana, nil); err == nil {
		t.Fatal("an auditor revoked a credential")
	}
	if err := adminAs(abe, olgaDev, "credential.revoke", revokeDana, nil); err == nil {
		t.Fatal("an auditor revoked a credential on the ops person's subject")
	}
	// Who asks is the subject, whatever the headers say: a smuggled
	// Nats-Request-Info naming the ops person changes nothing.
	forged := nats.NewMsg(api.AdminPersonSubject(personIDOf(abeDev), fmt.Sprint(abeDev["credential_id"]), "credential.revoke"))
	forged.Header.Set("Nats-Request-Info", `{"acc":"APP","name_tag":"person:olga@h/N","tags":["role:ops","person:`+record.PersonID("okta", "u-olga")+`"]}`)
	forged.Data, _ = json.Marshal(revokeDana)
	if m, err := abe.RequestMsg(forged, 2*time.Second); err == nil && m.Header.Get("Nats-Service-Error-Code") == "" {
		t.Fatal("a forged Nats-Request-Info revoked a credential")
	}
	// The ops person revokes the developer's credential.
	if err := adminAs(olga, olgaDev, "credential.revoke", api.IDRequest{ID: fmt.Sprint(danaDev["credential_id"]), Reason: "test"}, nil); err != nil {
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

	olgaID := record.PersonID("okta", "u-olga")
	var revoke int
	for _, e := range f.AuditEvents(t) {
		if e.Kind == "revoke" && e.Result == audit.OK && e.Actor != "operator" {
			revoke++
			if e.Person != olgaID || !strings.Contains(e.Actor, "person:"+olgaID) || !strings.Contains(e.Actor, fmt.Sprint(olgaDev["credential_id"])) {
				t.Fatalf("a revocation by %q (person %q): want only the ops person's, naming her credential", e.Actor, e.Person)
			}
		}
	}
	if revoke != 1 {
		t.Fatalf("%d revocations by people in the audit trail, want the ops person's one", revoke)
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

// personIDOf is the person a person login at the agent (its answer) names.
func personIDOf(dev map[string]any) string {
	p, _ := dev["person"].(map[string]any)
	return fmt.Sprint(p["id"])
}
