package policy

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
)

func TestAdminGrants(t *testing.T) {
	p, err := Parse([]byte(`
roles:
  ops: {admin: ["*"]}
  auditor: {publish: {allow: ["audit.>"]}, admin: [read]}
  approver: {admin: [host.approve, host.list]}
  dev: {publish: {allow: ["dev.>"]}}
people:
  idps: [{name: okta, issuer: "https://idp.example.com", client_id: c, client_secret_env: S}]
  bindings: [{groups: [ops], roles: [ops]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		roles []string
		op    string
		want  bool
	}{
		{[]string{"ops"}, "credential.revoke", true},
		{[]string{"ops"}, "backup.read", true},
		{[]string{"auditor"}, "host.list", true},
		{[]string{"auditor"}, "credential.revoke", false},
		{[]string{"auditor"}, "backup.read", false}, // the whole state: not a read op
		{[]string{"approver"}, "host.approve", true},
		{[]string{"approver"}, "host.revoke", false},
		{[]string{"dev"}, "host.list", false},
		{[]string{"nosuchrole"}, "host.list", false},
		{nil, "status", false},
		{[]string{"dev", "approver"}, "host.approve", true},
	}
	for _, c := range cases {
		if got := p.AdminAllows(c.roles, c.op); got != c.want {
			t.Errorf("AdminAllows(%v, %s) = %v, want %v", c.roles, c.op, got, c.want)
		}
	}
	if !p.HasAdmins() {
		t.Error("HasAdmins: the ops binding grants an admin role")
	}

	// Sessions without admin roles are denied the API's subjects; a
	// person's admin roles get exactly their operations, on subjects naming
	// their own person and credential; a workload's, none.
	person := Subject{Person: "okta_ab", CredentialID: "CRED"}
	uc := jwt.NewUserClaims("U")
	p.Apply(uc, []string{"dev"}, person)
	if reachesAdmin(uc) {
		t.Errorf("dev's permissions reach the operator API: allow %v deny %v", uc.Pub.Allow, uc.Pub.Deny)
	}
	uc = jwt.NewUserClaims("U")
	p.Apply(uc, []string{"approver"}, person)
	if slices.Contains(uc.Pub.Deny, api.SubjectAdminPrefix+">") || !slices.Contains(uc.Pub.Allow, api.AdminPersonSubject("okta_ab", "CRED", "host.approve")) ||
		slices.ContainsFunc(uc.Pub.Allow, func(s string) bool {
			return strings.HasSuffix(s, "host.revoke") || s == api.SubjectAdminPrefix+"host.approve"
		}) {
		t.Errorf("approver's permissions: allow %v deny %v", uc.Pub.Allow, uc.Pub.Deny)
	}
	uc = jwt.NewUserClaims("U")
	p.Apply(uc, []string{"approver"}, Subject{Workload: "billing", CredentialID: "CRED"})
	if reachesAdmin(uc) {
		t.Errorf("a workload with an admin role: allow %v deny %v, want the operator API out of reach", uc.Pub.Allow, uc.Pub.Deny)
	}
}

// reachesAdmin reports whether uc may publish to some subject of the
// operator API: an allow overlaps it and no deny names it.
func reachesAdmin(uc *jwt.UserClaims) bool {
	all := api.SubjectAdminPrefix + ">"
	return slices.ContainsFunc(uc.Pub.Allow, func(a string) bool { return overlaps(a, all) }) && !slices.Contains(uc.Pub.Deny, all)
}

func TestAdminPolicyErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`roles: {ops: {admin: [credential.delete]}}`, `admin "credential.delete"`},
		{`roles: {Ops: {admin: ["*"]}}`, "lower case"},
		// Only admin: grants reach the operator API: a broad publish would
		// let a session name another person in the subject.
		{`roles: {all: {publish: {allow: [">"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.*.>"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.admin.p.*.*.status"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["{{workload}}.>"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.{{workload}}.p.>"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.admin.p.okta_ab12.>"]}}}`, "covers the operator API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.admin.p.*.*.host.offboard"]}}}`, "covers the operator API"},
		// Nor the v1 API, where the subject names the host whose agent asks.
		{`roles: {t: {publish: {allow: ["tpmauthn.v1.>"]}}}`, "covers the v1 API"},
		{`roles: {t: {publish: {allow: ["tpmauthn.v1.h.*.register.begin"]}}}`, "covers the v1 API"},
		{`roles: {t: {publish: {allow: ["*.*.h.{{host}}.>"]}}}`, "covers the v1 API"},
		{`roles: {t: {publish: {allow: ["*.*.*.*.*.*"]}}}`, "covers the v1 API"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.yaml, err, tc.want)
		}
	}
}

// TestSourceOnReload: a changed policy file that parses is reported once;
// one that does not keeps the last good policy and is not.
func TestSourceOnReload(t *testing.T) {
	path := t.TempDir() + "/policy.yaml"
	write := func(s string, mod time.Time) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	write("roles: {a: {}}", now.Add(-time.Hour))
	ps, err := NewSource(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var reloads []int
	ps.OnReload(func(_, p *Policy) { reloads = append(reloads, len(p.Roles)) })
	write("roles: {a: {}, b: {}}", now.Add(-time.Minute))
	ps.next = time.Time{}
	if len(ps.Current().Roles) != 2 || !slices.Equal(reloads, []int{2}) {
		t.Fatalf("after a good change: %d roles, reloads %v", len(ps.Current().Roles), reloads)
	}
	write("roles: [", now)
	ps.next = time.Time{}
	if len(ps.Current().Roles) != 2 || len(reloads) != 1 {
		t.Fatalf("after a bad change: %d roles, reloads %v", len(ps.Current().Roles), reloads)
	}
	if _, _, err := ps.State(); err == nil {
		t.Fatal("State does not report the failed reload")
	}
}
