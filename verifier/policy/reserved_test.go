package policy

import (
	"slices"
	"testing"

	"github.com/nats-io/jwt/v2"
)

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"tpmauthn.v1.>", "tpmauthn.v1.>", true},
		{">", "tpmauthn.v1.>", true},
		{"*.>", "tpmauthn.v1.>", true},
		{"tpmauthn.*", "tpmauthn.v1.>", false}, // two tokens; the API has more
		{"tpmauthn.v1", "tpmauthn.v1.>", false},
		{"tpmauthn.v1.h", "tpmauthn.v1.>", true},
		{"tpmauthn.admin.p.alice.>", "tpmauthn.admin.>", true},
		{"tpmauthn.v2.>", "tpmauthn.v1.>", false},
		{"orders.*.created", "tpmauthn.v1.>", false},
		{"*.*.*", "tpmauthn.v1.>", true},
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.*.c", "a.b.*", true},
	} {
		if got := overlaps(tc.a, tc.b); got != tc.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := overlaps(tc.b, tc.a); got != tc.want {
			t.Errorf("overlaps(%q, %q) = %v, want %v (symmetric)", tc.b, tc.a, got, tc.want)
		}
	}
}

// TestApplyDeniesReserved: whatever a role's patterns, every policy session
// is denied publishing to the v1 API and subscribing to either API (the
// server enforces a deny over an overlapping allow).
func TestApplyDeniesReserved(t *testing.T) {
	p, err := Parse([]byte(`roles: {watch: {subscribe: {allow: ["tpmauthn.*.>"]}, publish: {allow: ["orders.>"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	uc := jwt.NewUserClaims("U")
	p.Apply(uc, []string{"watch"}, Subject{Workload: "billing", CredentialID: "C", Inbox: "_INBOX.c.C"})
	for _, want := range []string{"tpmauthn.v1.>", "tpmauthn.admin.>"} {
		if !slices.Contains(uc.Sub.Deny, want) {
			t.Errorf("subscribe deny %v, want %s", uc.Sub.Deny, want)
		}
	}
	if !slices.Contains(uc.Pub.Deny, "tpmauthn.v1.>") {
		t.Errorf("publish deny %v, want tpmauthn.v1.>", uc.Pub.Deny)
	}
}
