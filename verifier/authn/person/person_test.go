package person

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestRolesReadTheStampedRevision: a credential a regroup stamped with the
// person's new revision is decided with the person read at that revision or
// later, not with an older copy the watch left in the cache; a store that
// cannot give that revision yet refuses, retryable.
func TestRolesReadTheStampedRevision(t *testing.T) {
	srv := jstest.Start(t)
	ctx := t.Context()
	kv, err := srv.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "people"})
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
	d, err := Start(ctx, kv, func() *policy.Policy { return pol })
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	put := func(groups ...string) uint64 {
		p := record.Person{V: record.Version, ID: "okta_u1", IdP: "okta", Subject: "u1", Issuer: "https://okta.example.com", SubjectClaim: "sub", Groups: groups}
		b, _ := json.Marshal(p)
		rev, err := kv.Put(ctx, p.ID, b)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	old := put("developers", "ops")
	oldP := &record.Person{V: record.Version, ID: "okta_u1", IdP: "okta", Subject: "u1", Issuer: "https://okta.example.com", SubjectClaim: "sub", Groups: []string{"developers", "ops"}}
	regrouped := put("developers")
	// Once the watch has brought both writes, make its copy the old one, as
	// if it had not brought the regroup yet.
	eventually.Until(t, 5*time.Second, func() error {
		if v, ok := d.m.Load("okta_u1"); !ok || v.(cached).rev != regrouped {
			return errors.New("the watch has not brought the regroup")
		}
		return nil
	})
	d.m.Store("okta_u1", cached{oldP, old})

	cred := &record.Credential{ID: "c1", Person: "okta_u1"}
	if roles, err := d.Roles(ctx, cred); err != nil || !slices.Equal(roles, []string{"dev", "ops"}) {
		t.Fatalf("an unstamped credential: roles %v, %v (the cache decides, as before)", roles, err)
	}
	cred.PersonRev = regrouped
	if roles, err := d.Roles(ctx, cred); err != nil || !slices.Equal(roles, []string{"dev"}) {
		t.Fatalf("a stamped credential: roles %v, %v; want [dev], read at the stamped revision", roles, err)
	}
	d.m.Store("okta_u1", cached{oldP, old})
	cred.PersonRev = regrouped + 10 // a replica behind the regroup's write
	if _, err := d.Roles(ctx, cred); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("the person not yet at the stamped revision: %v, want ErrUnavailable (retry)", err)
	}
}
