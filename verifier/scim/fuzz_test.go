package scim_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
)

// FuzzPatch sends arbitrary PATCH operations for a user and a group. The
// parsing of the values (active, members, the member filter) is ours.
// Invariants: the answer is never a 500 (every input is either acted on
// or refused with a reason), and a disabled person never keeps an active
// credential.
func FuzzPatch(f *testing.F) {
	for _, ops := range []string{
		`[{"op":"replace","value":{"active":false}}]`,
		`[{"op":"Replace","path":"active","value":"False"}]`,
		`[{"op":"replace","path":"active","value":"maybe"}]`,
		`[{"op":"remove","path":"members[value eq \"x\"]"}]`,
		`[{"op":"remove","path":"members[value eq \"a\" or value eq \"b\"]"}]`,
		`[{"op":"add","path":"members","value":[{"value":"x"}]}]`,
		`[{"op":"replace","value":{"displayName":"ops","members":[{"value":1}]}}]`,
		`[{"op":"remove","path":"members","value":[{"$ref":null,"value":"x"}]}]`,
		`[{"op":"remove","path":"active"}]`,
	} {
		f.Add(ops, false)
		f.Add(ops, true)
	}
	fx := newFixture(f)
	id, cred := fx.person(f, "okta", oktaIss, "fuzz", "developers")
	gid := fx.group(f, "ops", id)
	f.Fuzz(func(t *testing.T, ops string, group bool) {
		path := "/scim/v2/okta/Users/" + id
		if group {
			path = "/scim/v2/okta/Groups/" + gid
		}
		code, body := fx.do(t, http.MethodPatch, path, oktaToken, fmt.Sprintf(patchOp, ops))
		if code >= 500 {
			t.Fatalf("%s: %d %s", ops, code, body)
		}
		if p := fx.get(t, id); !p.Disabled.IsZero() {
			if c := fx.env.Credential(t, cred); c.Status != api.CredentialRevoked {
				t.Fatalf("%s: person disabled, credential %s", ops, c.Status)
			}
		}
	})
}
