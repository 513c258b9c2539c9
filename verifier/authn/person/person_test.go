package person

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// TestRolesNeedTheFencedGeneration: the watch's copy of a person may lag a
// regroup. A credential the regroup fenced (GroupsGen) is decided against
// the person read from KV, never the older copy; a credential the copy
// does not list (registered after it was made) too, from the stream's
// leader (never a lagging replica); a credential the person does not list
// at all is refused (P-16c).
func TestRolesNeedTheFencedGeneration(t *testing.T) {
	js := jstest.Start(t)
	st, err := store.Open(t.Context(), js.NC, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse([]byte(`
roles:
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["ops.>"]}}
people:
  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
  bindings:
    - {groups: [developers], roles: [dev]}
    - {groups: [ops], roles: [ops]}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := &record.Person{V: record.Version, ID: record.PersonID("okta", "u1"), IdP: "okta", Subject: "u1",
		Issuer: "https://okta.example.com", SubjectClaim: "sub", Groups: []string{"ops"}, GroupsGen: 1,
		Credentials: []string{"c1"}, Created: time.Now()}
	stale := *p
	p.Groups, p.GroupsGen, p.Credentials = []string{"developers"}, 2, []string{"c1", "c2"}
	if err := store.Create(t.Context(), st.People, p.ID, p); err != nil {
		t.Fatal(err)
	}
	d, err := Start(t.Context(), st.People)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := d.m.Load(p.ID); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch never loaded the person")
		}
	}
	d.m.Store(p.ID, &stale) // the watch behind the regroup
	cred := func(id string, gen uint64) *record.Credential {
		return &record.Credential{ID: id, Person: p.ID, GroupsGen: gen, Assurance: policy.AssuranceHardware}
	}
	for _, tc := range []struct {
		name string
		cred *record.Credential
		want []string
		err  error
	}{
		{"unfenced: the watch's copy", cred("c1", 0), []string{"ops"}, nil},
		{"fenced: read from KV", cred("c1", 2), []string{"dev"}, nil},
		{"registered after the copy: read from KV", cred("c2", 0), []string{"dev"}, nil},
		{"fenced past KV (an older verifier dropped the generation): the leader's record", cred("c1", 3), []string{"dev"}, nil},
		{"listed nowhere: refused", cred("c3", 0), nil, api.ErrRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := d.Roles(t.Context(), pol, tc.cred)
			if !errors.Is(err, tc.err) || !slices.Equal(got, tc.want) {
				t.Fatalf("roles %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}
