package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
)

const peoplePolicy = `
roles:
  admin: {admin: ["*"]}
  dev: {publish: {allow: ["dev.{{person}}.>"]}, subscribe: {allow: ["dev.{{person}}.>"]}}
  billing: {subscribe: {allow: ["billing.>"]}}
  everyone: {subscribe: {allow: ["news"]}}
people:
  login_ttl: 8h
  idps:
    - {name: okta, issuer: "https://acme.okta.com", client_id: c1, client_secret_file: /etc/tpmauthn/okta.secret}
    - name: entra
      issuer: "https://login.microsoftonline.com/tenant/v2.0"
      client_id: c2
      client_secret_env: ENTRA_SECRET
      subject_claim: oid
      groups_claim: roles
      scopes: [email]
  bindings:
    - {idp: okta, groups: [nats-operators], roles: [admin], require: {assurance: hardware}}
    - {idp: okta, groups: [developers], roles: [dev]}
    - {idp: entra, groups: [developers], roles: [dev]}
    - {idp: okta, groups: [billing-devs], roles: [billing], require: {assurance: software}}
    - {idp: entra, roles: [everyone]}
`

func TestPeopleDefaults(t *testing.T) {
	p, err := Parse([]byte(peoplePolicy))
	if err != nil {
		t.Fatal(err)
	}
	pp := p.People
	if pp.LoginTTL != 8*time.Hour || pp.RecheckInterval != DefaultRecheckInterval {
		t.Fatalf("login_ttl %v recheck %v", pp.LoginTTL, pp.RecheckInterval)
	}
	okta, entra := pp.IdP("okta"), pp.IdP("entra")
	if okta == nil || entra == nil || pp.IdP("google") != nil {
		t.Fatalf("IdP lookup: okta %v entra %v", okta, entra)
	}
	if okta.SubjectClaim != "sub" || okta.GroupsClaim != "groups" || !slices.Equal(okta.Scopes, []string{"openid", "profile", "email"}) {
		t.Fatalf("okta defaults: %+v", okta)
	}
	if entra.SubjectClaim != "oid" || entra.GroupsClaim != "roles" || !slices.Equal(entra.Scopes, []string{"openid", "email"}) {
		t.Fatalf("entra: %+v", entra)
	}
	var none *People
	if none.IdP("okta") != nil {
		t.Fatal("a nil section names an IdP")
	}
	if p, _ := Parse([]byte("roles: {}\n")); p.People != nil || p.RolesForPerson(Person{IdP: "okta"}) != nil {
		t.Fatal("no people section, yet people get roles")
	}
}

func TestRolesForPerson(t *testing.T) {
	p, err := Parse([]byte(peoplePolicy))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		who  Person
		want []string
	}{
		{"operatorHardware", Person{IdP: "okta", Groups: []string{"nats-operators"}, Assurance: AssuranceHardware}, []string{"admin"}},
		{"operatorSoftware", Person{IdP: "okta", Groups: []string{"nats-operators"}, Assurance: AssuranceSoftware}, nil},
		{"operatorUnknownAssurance", Person{IdP: "okta", Groups: []string{"nats-operators"}}, nil},
		{"operatorOtherIdP", Person{IdP: "entra", Groups: []string{"nats-operators"}, Assurance: AssuranceHardware}, []string{"everyone"}},
		{"devAnyIdP", Person{IdP: "okta", Groups: []string{"developers", "x"}, Assurance: AssuranceSoftware}, []string{"dev"}},
		{"softwareRequirementMetByHardware", Person{IdP: "okta", Groups: []string{"billing-devs"}, Assurance: AssuranceHardware}, []string{"billing"}},
		{"everyoneAtEntra", Person{IdP: "entra", Assurance: AssuranceSoftware}, []string{"everyone"}},
		{"nobody", Person{IdP: "okta", Groups: []string{"sales"}, Assurance: AssuranceHardware}, nil},
		{"groupCase", Person{IdP: "okta", Groups: []string{"Developers"}, Assurance: AssuranceHardware}, nil},
		// An IdP no longer in the policy grants nothing, whatever its groups.
		{"removedIdP", Person{IdP: "ghost", Groups: []string{"developers", "nats-operators"}, Assurance: AssuranceHardware}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.RolesForPerson(tc.who); !slices.Equal(got, tc.want) {
				t.Fatalf("RolesForPerson = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPersonTemplate(t *testing.T) {
	p, err := Parse([]byte(peoplePolicy))
	if err != nil {
		t.Fatal(err)
	}
	uc := jwt.NewUserClaims("UABC")
	p.Apply(uc, []string{"dev"}, Subject{Person: "okta_0123abcd", Inbox: "_INBOX.p.okta_0123abcd"})
	if !slices.Contains(uc.Pub.Allow, "dev.okta_0123abcd.>") || !slices.Contains(uc.Sub.Allow, "dev.okta_0123abcd.>") {
		t.Fatalf("pub %v sub %v: {{person}} not expanded", uc.Pub.Allow, uc.Sub.Allow)
	}
	// A workload's session has no person: the subject is left out, never
	// "dev..>" or a pattern wider than meant.
	uc = jwt.NewUserClaims("UABC")
	p.Apply(uc, []string{"dev"}, Subject{HostID: "h-1", Workload: "w", CredentialID: "c"})
	// (An allow-list of nothing is not an empty one, which NATS reads as
	// everything.)
	if !slices.Equal(uc.Pub.Allow, []string{publishNothing}) || len(uc.Sub.Allow) != 0 {
		t.Fatalf("pub %v sub %v: a template without its value was granted", uc.Pub.Allow, uc.Sub.Allow)
	}
}

func TestParsePeopleRejects(t *testing.T) {
	const okIdP = `{name: okta, issuer: "https://idp.example.com", client_id: c, client_secret_file: /s}`
	people := func(s string) string { return "roles: {r: {}}\npeople:\n" + s }
	for _, tc := range []struct {
		name, src, want string
	}{
		{"loginTTLShort", people("  login_ttl: 10s\n"), "people.login_ttl"},
		{"loginTTLLong", people("  login_ttl: 1000h\n"), "people.login_ttl"},
		{"recheckBeyondLogin", people("  login_ttl: 1h\n  recheck_interval: 2h\n"), "people.recheck_interval"},
		{"idpName", people(`  idps: [{name: Okta_1, issuer: "https://i.example.com", client_id: c, client_secret_file: /s}]` + "\n"), "name \"Okta_1\""},
		{"idpTwice", people("  idps: [" + okIdP + ", " + okIdP + "]\n"), "used twice"},
		{"issuerHTTP", people(`  idps: [{name: a, issuer: "http://idp.example.com", client_id: c, client_secret_file: /s}]` + "\n"), "http only on loopback"},
		{"issuerQuery", people(`  idps: [{name: a, issuer: "https://idp.example.com/?x=1", client_id: c, client_secret_file: /s}]` + "\n"), "issuer"},
		{"issuerRelative", people(`  idps: [{name: a, issuer: "/idp", client_id: c, client_secret_file: /s}]` + "\n"), "issuer"},
		{"noClientID", people(`  idps: [{name: a, issuer: "https://i.example.com", client_secret_file: /s}]` + "\n"), "client_id"},
		{"noSecret", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c}]` + "\n"), "exactly one of client_secret_file"},
		{"twoSecrets", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, client_secret_env: S}]` + "\n"), "exactly one of client_secret_file"},
		{"badScope", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, scopes: ["a b"]}]` + "\n"), "scope"},
		{"badClaim", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, groups_claim: "a b"}]` + "\n"), "groups_claim"},
		{"bindingUnknownIdP", people("  bindings: [{idp: ghost, roles: [r]}]\n"), "idp \"ghost\""},
		{"twoSCIMTokens", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, scim_token_file: /t, scim_token_env: T}]` + "\n"), "at most one of scim_token_file"},
		{"scimSubject", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, scim_subject: emails}]` + "\n"), "scim_subject"},
		{"scimGroupName", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, scim_group_name: id}]` + "\n"), "scim_group_name"},
		{"bindingUnknownRole", people("  bindings: [{roles: [ghost]}]\n"), "role \"ghost\""},
		{"bindingNoRoles", people("  bindings: [{groups: [g]}]\n"), "no roles"},
		{"bindingEmptyGroup", people("  bindings: [{groups: [''], roles: [r]}]\n"), "empty group"},
		{"bindingAssurance", people("  bindings: [{roles: [r], require: {assurance: titanium}}]\n"), "require.assurance"},
		{"unknownKey", people("  login_tl: 1h\n"), "login_tl"},
		{"bindingNoIdPWithTwoIdPs", people("  idps: [" + okIdP + ", " + strings.Replace(okIdP, "okta", "entra", 1) + "]\n  bindings: [{groups: [admins], roles: [r]}]\n"), "idp: NAME"},
		{"subjectClaimEmail", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, subject_claim: email}]` + "\n"), "immutable"},
		{"subjectClaimUsername", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, subject_claim: preferred_username}]` + "\n"), "immutable"},
		{"subjectClaimUPN", people(`  idps: [{name: a, issuer: "https://i.example.com", client_id: c, client_secret_file: /s, subject_claim: UPN}]` + "\n"), "immutable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.src))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
			if tc.name != "unknownKey" && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q is not ErrInvalid", err)
			}
		})
	}
}

func TestIssuerLoopbackHTTP(t *testing.T) {
	for _, iss := range []string{"http://127.0.0.1:5556/", "http://localhost:8080/dex", "http://[::1]:9000/"} {
		src := "people:\n  idps: [{name: dev, issuer: \"" + iss + "\", client_id: c, client_secret_env: S}]\n"
		if _, err := Parse([]byte(src)); err != nil {
			t.Errorf("%s: %v", iss, err)
		}
	}
}

// FuzzParse: a policy file is operator input, but it is parsed on every
// change; no input may panic, and an accepted policy has its invariants:
// defaults filled, every binding's roles and IdP defined, names unique.
func FuzzParse(f *testing.F) {
	f.Add([]byte(peoplePolicy))
	f.Add([]byte(testPolicy))
	f.Add([]byte("people: {idps: [{name: a}], bindings: [{}]}\n"))
	f.Add([]byte("people:\n  login_ttl: -1h\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil || p.People == nil {
			return
		}
		pp := p.People
		if pp.LoginTTL < time.Minute || pp.RecheckInterval < time.Minute || pp.RecheckInterval > pp.LoginTTL {
			t.Fatalf("accepted durations %v %v", pp.LoginTTL, pp.RecheckInterval)
		}
		names := map[string]bool{}
		for _, idp := range pp.IdPs {
			if names[idp.Name] || !idpName.MatchString(idp.Name) || idp.SubjectClaim == "" || !slices.Contains(idp.Scopes, "openid") {
				t.Fatalf("accepted IdP %+v", idp)
			}
			names[idp.Name] = true
		}
		for _, bd := range pp.Bindings {
			if bd.IdP != "" && !names[bd.IdP] {
				t.Fatalf("binding names undefined IdP %q", bd.IdP)
			}
			for _, r := range bd.Roles {
				if _, ok := p.Roles[r]; !ok {
					t.Fatalf("binding names undefined role %q", r)
				}
			}
		}
	})
}

// browserPolicy: role console for everyone at okta, ops (a passkey on every
// connect) and vault (no synced passkeys) for group ops.
const browserPolicy = `
roles:
  console: {subscribe: {allow: ["x"]}}
  ops: {admin: ["*"], per_connect: passkey}
  vault: {publish: {allow: ["vault.>"]}, allow_synced: false}
people:
  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
  bindings:
    - {roles: [console]}
    - {groups: [ops], roles: [ops, vault]}
`

func TestRolesForBrowserCredential(t *testing.T) {
	p, err := Parse([]byte(browserPolicy))
	if err != nil {
		t.Fatal(err)
	}
	ops := []string{"ops"}
	for _, tc := range []struct {
		name string
		who  Person
		want []string
	}{
		{"passkey", Person{IdP: "okta", Groups: ops, Assurance: AssuranceHardware}, []string{"console", "ops", "vault"}},
		{"sessionKey", Person{IdP: "okta", Groups: ops, Assurance: AssuranceSoftware, SessionKey: true}, []string{"console", "vault"}},
		{"syncedPasskey", Person{IdP: "okta", Groups: ops, Assurance: AssuranceSoftware, Synced: true}, []string{"console", "ops"}},
		{"syncedSessionKey", Person{IdP: "okta", Groups: ops, Synced: true, SessionKey: true}, []string{"console"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.RolesForPerson(tc.who); !slices.Equal(got, tc.want) {
				t.Fatalf("RolesForPerson = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(strings.Replace(browserPolicy, "per_connect: passkey", "per_connect: always", 1))); err == nil || !strings.Contains(err.Error(), "per_connect") {
		t.Fatalf("per_connect: always: %v", err)
	}
}
