package scim_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/scim"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const (
	oktaToken  = "okta-scim-token-0123456789"
	entraToken = "entra-scim-token-0123456789"
	oktaIss    = "https://okta.example.com"
	entraIss   = "https://entra.example.com"
)

type fixture struct {
	env    *testenv.Env
	people *people.Service
	kicks  *testenv.Kicks
	alerts *testenv.Alerts
	url    string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	okta, entra := filepath.Join(dir, "okta"), filepath.Join(dir, "entra")
	for f, tok := range map[string]string{okta: oktaToken, entra: entraToken} {
		if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := policy.Parse(fmt.Appendf(nil, `
roles:
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["ops.>"]}}
people:
  idps:
    - {name: okta, issuer: %q, client_id: c, client_secret_env: S, scim_token_file: %q}
    - {name: entra, issuer: %q, client_id: c, client_secret_env: S, subject_claim: oid, scim_token_file: %q, scim_group_name: externalId}
  bindings:
    - {idp: okta, groups: [developers], roles: [dev]}
    - {idp: okta, groups: [ops], roles: [ops]}
    - {idp: entra, groups: [developers], roles: [dev]}
`, oktaIss, okta, entraIss, entra))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{env: testenv.New(t), kicks: &testenv.Kicks{}, alerts: &testenv.Alerts{}}
	polf := func() *policy.Policy { return pol }
	sealer, err := people.NewSealer(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	f.people = people.New(people.Config{Store: f.env.Store, Policy: polf, Trail: f.env.Trail, Sealer: sealer})
	ob := offboard.New(offboard.Config{People: f.people, Store: f.env.Store, Fleet: f.env.Fleet, Sessions: f.kicks,
		Alerts: f.alerts, Trail: f.env.Trail, Policy: polf})
	h, err := scim.New(scim.Config{People: f.people, Offboard: ob, Store: f.env.Store, Policy: polf})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// person logs a person in at idp with one active credential of theirs.
func (f *fixture) person(t testing.TB, idp, iss, subject string, groups ...string) (string, string) {
	t.Helper()
	claim := "sub"
	if idp == "entra" {
		claim = "oid"
	}
	p, err := f.people.Login(t.Context(), people.Identity{IdP: idp, Issuer: iss, SubjectClaim: claim, Subject: subject, Groups: groups}, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	cred := "cred-" + subject
	f.env.PutCredential(t, cred, api.CredentialActive)
	if _, _, err := store.Mutate(t.Context(), f.env.Store.Credentials, cred, func(c *record.Credential) error {
		c.Person = p.ID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Mutate(t.Context(), f.env.Store.People, p.ID, func(q *record.Person) error {
		q.Credentials = append(q.Credentials, cred)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return p.ID, cred
}

func (f *fixture) do(t testing.TB, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/scim+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (f *fixture) get(t testing.TB, id string) *record.Person {
	t.Helper()
	p, err := f.people.Person(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// want checks whether person id is disabled and credential cred's status.
func (f *fixture) want(t testing.TB, id string, disabled bool, cred string, status api.CredentialStatus) {
	t.Helper()
	if p := f.get(t, id); p.Disabled.IsZero() == disabled {
		t.Fatalf("person %s: disabled %v, want %v", id, !p.Disabled.IsZero(), disabled)
	}
	if c := f.env.Credential(t, cred); c.Status != status {
		t.Fatalf("credential %s is %s, want %s", cred, c.Status, status)
	}
}

// group creates okta's SCIM group name with members and returns its id.
func (f *fixture) group(t testing.TB, name string, members ...string) string {
	t.Helper()
	ms := make([]map[string]string, len(members))
	for i, m := range members {
		ms[i] = map[string]string{"value": m}
	}
	b, _ := json.Marshal(map[string]any{"schemas": []string{"urn:ietf:params:scim:schemas:core:2.0:Group"}, "displayName": name, "members": ms})
	code, body := f.do(t, http.MethodPost, "/scim/v2/okta/Groups", oktaToken, string(b))
	var g struct{ ID string }
	if err := json.Unmarshal([]byte(body), &g); code != http.StatusCreated || err != nil || g.ID == "" {
		t.Fatalf("create group: %d %s", code, body)
	}
	return g.ID
}

const patchOp = `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":%s}`

// TestDeactivationShapes: every shape in which Okta and Entra ID say a
// user left disables the person, revokes their credential and kicks it.
func TestDeactivationShapes(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, idp, iss, method, body string
		token                        string
	}{
		{"oktaPatch", "okta", oktaIss, http.MethodPatch, fmt.Sprintf(patchOp, `[{"op":"replace","value":{"active":false}}]`), oktaToken},
		{"oktaPut", "okta", oktaIss, http.MethodPut, `{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"a@example.com","externalId":"%s","active":false}`, oktaToken},
		{"entraPatch", "entra", entraIss, http.MethodPatch, fmt.Sprintf(patchOp, `[{"op":"Replace","path":"active","value":"False"}]`), entraToken},
		{"entraPatchBool", "entra", entraIss, http.MethodPatch, fmt.Sprintf(patchOp, `[{"op":"Replace","path":"emails[type eq \"work\"].value","value":"x@example.com"},{"op":"Replace","path":"active","value":false}]`), entraToken},
		{"delete", "okta", oktaIss, http.MethodDelete, "", oktaToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subject := "s-" + tc.name
			id, cred := f.person(t, tc.idp, tc.iss, subject, "developers")
			body := tc.body
			if strings.Contains(body, "%s") {
				body = fmt.Sprintf(body, subject)
			}
			code, resp := f.do(t, tc.method, "/scim/v2/"+tc.idp+"/Users/"+id, tc.token, body)
			if code/100 != 2 {
				t.Fatalf("%s: %d %s", tc.method, code, resp)
			}
			f.want(t, id, true, cred, api.CredentialRevoked)
			if !slices.Contains(f.kicks.List(), cred) {
				t.Fatalf("credential %s not kicked (kicked %v)", cred, f.kicks.List())
			}
			evs := f.env.Events(t)
			if !slices.ContainsFunc(evs, func(e audit.Event) bool {
				return e.Kind == "person.offboard" && e.Person == id && e.Actor == "scim:"+tc.idp
			}) {
				t.Fatalf("no person.offboard event naming scim:%s", tc.idp)
			}
		})
	}
}

// TestSCIMAuth: a request needs the bearer token of the IdP its path
// names, and a token acts on its own IdP's people only.
func TestSCIMAuth(t *testing.T) {
	f := newFixture(t)
	id, cred := f.person(t, "okta", oktaIss, "victim", "developers")
	deactivate := fmt.Sprintf(patchOp, `[{"op":"replace","value":{"active":false}}]`)
	for _, tc := range []struct {
		name, path, token string
		want              int
	}{
		{"noBearer", "/scim/v2/okta/Users/" + id, "", http.StatusUnauthorized},
		{"badBearer", "/scim/v2/okta/Users/" + id, "okta-scim-token-0123456788", http.StatusUnauthorized},
		{"otherIdPsToken", "/scim/v2/okta/Users/" + id, entraToken, http.StatusUnauthorized},
		{"otherIdPsPerson", "/scim/v2/entra/Users/" + id, entraToken, http.StatusNotFound},
		{"unknownIdP", "/scim/v2/ghost/Users/" + id, oktaToken, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := f.do(t, http.MethodPatch, tc.path, tc.token, deactivate); code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, body, tc.want)
			}
			f.want(t, id, false, cred, api.CredentialActive)
		})
	}
}

// TestProvisionBeforeLogin: a user deactivated before their first login
// is refused at that login.
func TestProvisionBeforeLogin(t *testing.T) {
	f := newFixture(t)
	code, body := f.do(t, http.MethodPost, "/scim/v2/okta/Users", oktaToken,
		`{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"new@example.com","externalId":"00u-new","active":true}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var res struct{ ID string }
	if err := json.Unmarshal([]byte(body), &res); err != nil || res.ID != record.PersonID("okta", "00u-new") {
		t.Fatalf("create: id %q %v", res.ID, err)
	}
	if code, body := f.do(t, http.MethodGet, "/scim/v2/okta/Users?filter="+strings.ReplaceAll(`externalId eq "00u-new"`, " ", "%20"), oktaToken, ""); code != http.StatusOK || !strings.Contains(body, res.ID) {
		t.Fatalf("filter: %d %s", code, body)
	}
	if code, body := f.do(t, http.MethodPatch, "/scim/v2/okta/Users/"+res.ID, oktaToken, fmt.Sprintf(patchOp, `[{"op":"replace","value":{"active":false}}]`)); code != http.StatusOK {
		t.Fatalf("deactivate: %d %s", code, body)
	}
	_, err := f.people.Login(t.Context(), people.Identity{IdP: "okta", Issuer: oktaIss, SubjectClaim: "sub", Subject: "00u-new"}, record.FlowBrowser, "")
	if !errors.Is(err, people.ErrDisabled) {
		t.Fatalf("login after deactivation: %v, want ErrDisabled", err)
	}
}

// TestReactivationKeepsCredentialsRevoked: active=true enables the
// record; the credential revoked at deactivation stays revoked.
func TestReactivationKeepsCredentialsRevoked(t *testing.T) {
	f := newFixture(t)
	id, cred := f.person(t, "okta", oktaIss, "back", "developers")
	for _, active := range []string{"false", "true"} {
		if code, body := f.do(t, http.MethodPatch, "/scim/v2/okta/Users/"+id, oktaToken, fmt.Sprintf(patchOp, `[{"op":"replace","value":{"active":`+active+`}}]`)); code != http.StatusOK {
			t.Fatalf("active %s: %d %s", active, code, body)
		}
	}
	f.want(t, id, false, cred, api.CredentialRevoked)
}

// TestGroupMembership: Okta's group push (create with members, then the
// filtered remove) moves the group in and out of the person's groups; the
// removal shrinks their roles, so their credential's sessions are kicked.
func TestGroupMembership(t *testing.T) {
	f := newFixture(t)
	id, cred := f.person(t, "okta", oktaIss, "grp", "developers")
	gid := f.group(t, "ops", id)
	if p := f.get(t, id); !slices.Equal(p.Groups, []string{"developers", "ops"}) {
		t.Fatalf("groups %v after the push", p.Groups)
	}
	if slices.Contains(f.kicks.List(), cred) {
		t.Fatal("kicked on a group added")
	}
	for _, tc := range []struct{ name, ops string }{
		{"unknownFilter", `[{"op":"remove","path":"members[display eq \"x\"]"}]`},
		{"notEq", `[{"op":"remove","path":"members[value ne \"` + id + `\"]"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := f.do(t, http.MethodPatch, "/scim/v2/okta/Groups/"+gid, oktaToken, fmt.Sprintf(patchOp, tc.ops)); code != http.StatusBadRequest {
				t.Fatalf("%d %s, want 400 (never 200 without acting)", code, body)
			}
		})
	}
	code, body := f.do(t, http.MethodPatch, "/scim/v2/okta/Groups/"+gid, oktaToken,
		fmt.Sprintf(patchOp, `[{"op":"remove","path":"members[value eq \"`+id+`\"]"}]`))
	if code != http.StatusOK {
		t.Fatalf("remove member: %d %s", code, body)
	}
	if p := f.get(t, id); !slices.Equal(p.Groups, []string{"developers"}) || !p.Disabled.IsZero() {
		t.Fatalf("groups %v disabled %v after the removal", p.Groups, p.Disabled)
	}
	if !slices.Contains(f.kicks.List(), cred) {
		t.Fatal("the session whose roles shrank was not kicked")
	}
	if c := f.env.Credential(t, cred); c.Status != api.CredentialActive {
		t.Fatalf("credential %s, want active (a smaller role set, not an offboarding)", c.Status)
	}
}
