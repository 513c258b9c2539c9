package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestAttackReusedUID: a person logged in on a host as a local account; the
// account is deleted and its uid given to a new account (threat model
// P-16e). The new account's programs must not sign as the person: the agent
// refuses them, deletes the credential and has the verifier revoke it, which
// ends the session still open under the old account. Real accounts
// (useradd), a real agent and verifier, a real OpenID provider.
func TestAttackReusedUID(t *testing.T) {
	requireRoot(t)
	const uid = 1010
	addAccount(t, uid, "tpmauthn-e2e-dana")
	op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana Scully", Email: "dana.scully@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t)
	st, dev := personLoginAs(t, h, uid, loginGrantAt(t, f, op, "dana", "pw", h, uid).AccessToken)
	if st != http.StatusOK {
		t.Fatalf("person login at the agent: %d %v", st, dev)
	}
	credID := fmt.Sprint(dev["credential_id"])
	if st, who := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI); st != http.StatusOK || who["credential_id"] != credID {
		t.Fatalf("whoami as the person's account: %d %v", st, who)
	}
	closed := personSessionOf(t, f, h, uid)

	// The account goes: its uid has no name, which could be a name service
	// that did not answer. Refused for now, not dropped.
	delAccount(t, "tpmauthn-e2e-dana")
	if st, who := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI); st != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(who["error"]), "cannot name your account") {
		t.Fatalf("whoami as the uid without an account: %d %v, want 503", st, who)
	}
	var kept record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: credID}, &kept)
	if kept.Status != api.CredentialActive {
		t.Fatalf("the credential is %s after one unnamed call, want active", kept.Status)
	}
	// Another account takes the uid.
	addAccount(t, uid, "tpmauthn-e2e-eve")

	st, who := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI)
	if st != http.StatusForbidden || !strings.Contains(fmt.Sprint(who["error"]), "another account") {
		t.Fatalf("whoami as the uid's new account: %d %v, want 403 naming another account's login", st, who)
	}
	if _, err := connectWorkload(t, f, h, uid); err == nil {
		t.Fatal("the uid's new account connected as the person")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the old account's session outlives the refusal")
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: credID}, &c)
	if c.Status != api.CredentialRevoked {
		t.Fatalf("the refused credential is %s at the verifier, want revoked", c.Status)
	}
	// Logging in again under the new account works, as that account.
	op2 := loginGrantAt(t, f, op, "dana", "pw", h, uid)
	if st, dev := personLoginAs(t, h, uid, op2.AccessToken); st != http.StatusOK {
		t.Fatalf("a new login under the uid's new account: %d %v", st, dev)
	}
}

// addAccount creates local account name with uid (no home, no group of its
// own), deleted when the test ends.
func addAccount(t *testing.T, uid int, name string) {
	t.Helper()
	_ = exec.Command("userdel", name).Run() // left over from an interrupted run
	out, err := exec.Command("useradd", "-u", strconv.Itoa(uid), "-M", "-N", "-s", "/usr/sbin/nologin", name).CombinedOutput()
	if err != nil {
		t.Fatalf("useradd %s (this test needs root and useradd, from Debian's passwd): %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
}

func delAccount(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
		t.Fatalf("userdel %s: %v: %s", name, err, out)
	}
}

// TestReusedUIDSwept: the agent's periodic check (rotation_check) drops a
// person credential whose uid's account is gone, even when nothing on that
// uid calls the agent: the old account's live session ends.
func TestReusedUIDSwept(t *testing.T) {
	requireRoot(t)
	const uid = 1011
	addAccount(t, uid, "tpmauthn-e2e-sam")
	op := oidctest.Start(t, oidctest.User{ID: "u-sam", Username: "sam", Password: "pw", Name: "Sam Vimes", Email: "sam.vimes@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 200 * time.Millisecond })
	st, dev := personLoginAs(t, h, uid, loginGrantAt(t, f, op, "sam", "pw", h, uid).AccessToken)
	if st != http.StatusOK {
		t.Fatalf("person login at the agent: %d %v", st, dev)
	}
	closed := personSessionOf(t, f, h, uid)
	delAccount(t, "tpmauthn-e2e-sam")
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("the session of a deleted account outlives the agent's sweep")
	}
	var c record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: fmt.Sprint(dev["credential_id"])}, &c)
	if c.Status != api.CredentialRevoked {
		t.Fatalf("the swept credential is %s at the verifier, want revoked", c.Status)
	}
}
