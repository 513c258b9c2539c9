package register

import (
	"testing"

	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func TestPersonName(t *testing.T) {
	for _, tc := range []struct {
		p    record.Person
		want string
	}{
		{record.Person{ID: "okta_ab", Email: "dana.scully@example.com", Name: "Dana"}, "person:dana-scully"},
		{record.Person{ID: "okta_ab", Name: "Fox Mulder"}, "person:fox-mulder"},
		// Subject wildcards, dots and control characters never reach the name.
		{record.Person{ID: "okta_ab", Email: "a.*>\x1b[31m@example.com"}, "person:a-31m"},
		{record.Person{ID: "okta_ab", Email: "***@example.com"}, "person:okta_ab"},
		{record.Person{ID: "entra_cd"}, "person:entra_cd"},
		{record.Person{ID: "x_1", Email: "ÄÖÜ.Δ@example.com"}, "person:x_1"},
	} {
		if got := PersonName(&tc.p); got != tc.want {
			t.Errorf("PersonName(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}
