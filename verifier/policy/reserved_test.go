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
	wantDeniedWhereAllowed(t, uc)
	// A role whose patterns reach none of it gets no deny entries (each
	// costs the server a sublist insert at every connect).
	uc = jwt.NewUserClaims("U")
	q, err := Parse([]byte(`roles: {plain: {subscribe: {allow: ["orders.>"]}, publish: {allow: ["orders.>"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	q.Apply(uc, []string{"plain"}, Subject{Workload: "billing", CredentialID: "C", Inbox: "_INBOX.c.C"})
	if len(uc.Sub.Deny) != 0 || slices.ContainsFunc(uc.Pub.Deny, func(d string) bool { return strings.HasPrefix(d, "tpmauthn.v1") || strings.HasPrefix(d, "_INBOX") }) {
		t.Errorf("a plain role: pub deny %v, sub deny %v, want none of the reserved", uc.Pub.Deny, uc.Sub.Deny)
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
	for _, d := range enrollmentInboxes { // _INBOX.> reaches them: denied
		if !slices.Contains(uc.Pub.Deny, d) {
			t.Errorf("a responder's pub deny %v, want %s", uc.Pub.Deny, d)
		}
	}
	uc = jwt.NewUserClaims("U")
	p.Apply(uc, []string{"watch"}, Subject{Workload: "w", CredentialID: "C", Inbox: "_INBOX.c.C"})
	if !slices.Equal(uc.Pub.Allow, []string{publishNothing}) || !slices.Contains(uc.Pub.Deny, publishNothing) {
		t.Errorf("a subscribe-only role: pub %v deny %v, want nothing", uc.Pub.Allow, uc.Pub.Deny)
	}
	wantDeniedWhereAllowed(t, uc)
}

// wantDeniedWhereAllowed: every reserved pattern some allow of uc overlaps
// is denied (the others need no entry: nothing allows them).
func wantDeniedWhereAllowed(t *testing.T, uc *jwt.UserClaims) {
	t.Helper()
	check := func(kind string, allow, deny []string, patterns []string) {
		for _, p := range patterns {
			if slices.ContainsFunc(allow, func(a string) bool { return overlaps(a, p) }) && !slices.Contains(deny, p) {
				t.Errorf("%s allow %v reaches %s, deny %v does not name it", kind, allow, p, deny)
			}
		}
	}
	check("publish", uc.Pub.Allow, uc.Pub.Deny, append([]string{"tpmauthn.v1.>"}, enrollmentInboxes...))
	check("subscribe", uc.Sub.Allow, uc.Sub.Deny, append([]string{"tpmauthn.v1.>", "tpmauthn.admin.>"}, enrollmentInboxes...))
}

// BenchmarkOverlaps: overlaps runs several times at every connect (Apply).
func BenchmarkOverlaps(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = overlaps("billing.{{host}}.orders.>", "tpmauthn.v1.>")
		_ = overlaps("_INBOX.>", "_INBOX.t.>")
	}
}
