package policy

import (
	"slices"
	"strings"
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

// TestInboxPolicy: roles cannot read or write other sessions' inboxes, of
// any kind, templates or not; response: answers on inboxes only; a role
// with nothing to publish publishes nothing (not everything).
func TestInboxPolicy(t *testing.T) {
	for _, y := range []string{
		`roles: {t: {subscribe: {allow: ["_INBOX.t.>"]}}}`,
		`roles: {t: {subscribe: {allow: ["_INBOX.h.*.*.*"]}}}`,
		`roles: {t: {subscribe: {allow: ["_INBOX.{{workload}}.>"]}}}`,
		`roles: {t: {subscribe: {allow: ["*.c.>"]}}}`,
		`roles: {t: {publish: {allow: ["_INBOX.>"]}}}`,
		`roles: {t: {publish: {allow: ["_INBOX.c.*.*"]}}}`,
		// Found by review: a literal lineage ID, deep wildcards.
		`roles: {t: {subscribe: {allow: ["_INBOX.c.UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4.>"]}}}`,
		`roles: {t: {subscribe: {allow: ["_INBOX.c.*.*.*.*"]}}}`,
		`roles: {t: {subscribe: {allow: ["*.*.*.*.*.*"]}}}`,
		`roles: {t: {publish: {allow: ["_INBOX.h.{{host}}.>"]}}}`,
	} {
		if _, err := Parse([]byte(y)); err == nil || !strings.Contains(err.Error(), "inboxes") {
			t.Errorf("%s: %v, want an inbox refusal", y, err)
		}
	}
	if _, err := Parse([]byte(`roles: {t: {publish: {allow: ["$SYS.REQ.ACCOUNT.*.CONNZ"]}}}`)); err == nil || !strings.Contains(err.Error(), "system requests") {
		t.Errorf("a role that sends the server's system requests: %v, want refused", err)
	}
	// Harmless patterns still load: no template's value is ever _INBOX.
	for _, y := range []string{
		`roles: {t: {subscribe: {allow: ["{{host}}.>"]}}}`,
		`roles: {t: {subscribe: {allow: ["*.events.>", "*.*.*"]}}}`,
		`roles: {t: {publish: {allow: ["metrics.{{host}}.{{workload}}"]}}}`,
	} {
		if _, err := Parse([]byte(y)); err != nil {
			t.Errorf("%s: %v", y, err)
		}
	}
	p, err := Parse([]byte(`roles: {svc: {subscribe: {allow: ["svc.>"]}, response: {max_msgs: 1}}, watch: {subscribe: {allow: ["events.>"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	uc := jwt.NewUserClaims("U")
	p.Apply(uc, []string{"svc"}, Subject{Workload: "svc", CredentialID: "C", Inbox: "_INBOX.c.C"})
	if uc.Resp != nil || !slices.Equal(uc.Pub.Allow, []string{answerInboxes}) {
		t.Errorf("a responder: resp %+v pub %v, want publish to inboxes only", uc.Resp, uc.Pub.Allow)
	}
	for _, d := range enrollmentInboxes {
		if !slices.Contains(uc.Sub.Deny, d) {
			t.Errorf("sub deny %v, want %s", uc.Sub.Deny, d)
		}
	}
	uc = jwt.NewUserClaims("U")
	p.Apply(uc, []string{"watch"}, Subject{Workload: "w", CredentialID: "C", Inbox: "_INBOX.c.C"})
	if !slices.Equal(uc.Pub.Allow, []string{publishNothing}) || !slices.Contains(uc.Pub.Deny, publishNothing) {
		t.Errorf("a subscribe-only role: pub %v deny %v, want nothing", uc.Pub.Allow, uc.Pub.Deny)
	}
	for _, d := range enrollmentInboxes {
		if !slices.Contains(uc.Pub.Deny, d) {
			t.Errorf("pub deny %v, want %s", uc.Pub.Deny, d)
		}
	}
}
