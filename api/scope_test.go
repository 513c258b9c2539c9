package api

import (
	"strings"
	"testing"
)

func TestScope(t *testing.T) {
	for _, tc := range []struct {
		subject string
		want    Scope
		ok      bool
	}{
		{"tpmauthn.v1.h.h-0123.register.begin", Scope{ScopeHost, "h-0123"}, true},
		{"tpmauthn.v1.t.ab12.enroll.begin", Scope{ScopeToken, "ab12"}, true},
		{"tpmauthn.v1.k.ab12.enroll.finish", Scope{ScopeEK, "ab12"}, true},
		{"tpmauthn.v1.h.h-0123", Scope{}, false},                // no operation
		{"tpmauthn.v1.x.h-0123.register.begin", Scope{}, false}, // no such kind
		{"tpmauthn.v1.h.*.register.begin", Scope{}, false},      // a wildcard is nobody
		{"tpmauthn.v1.register.begin", Scope{}, false},          // before scopes
		{"tpmauthn.admin.p.x.y.status", Scope{}, false},
		{"", Scope{}, false},
	} {
		got, ok := ParseScope(tc.subject)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseScope(%q) = %v %v, want %v %v", tc.subject, got, ok, tc.want, tc.ok)
		}
	}
	s := HostScope("h-1")
	if got, ok := ParseScope(s.Subject(OpCredentialsStatus)); !ok || got != s {
		t.Fatalf("round trip: %v %v", got, ok)
	}
	if TokenScope("secret.pin") != TokenScope("secret") {
		t.Fatal("a join token's scope depends on its public CA pin")
	}
	for _, bad := range []Scope{{ScopeHost, "a.b"}, {ScopeHost, ">"}, {ScopeHost, "*"}, {ScopeHost, ""}, {"", "x"}, {ScopeEK, strings.Repeat("a", 129)}} {
		if bad.Valid() {
			t.Errorf("%+v valid: its permission %s could cover other scopes", bad, bad.Permission())
		}
	}
}

// FuzzParseScope: whatever the subject, a scope it yields is valid and its
// subject for the same operation parses back to it.
func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"tpmauthn.v1.h.h-1.register.begin", "tpmauthn.v1.t.ab.enroll.begin", "tpmauthn.v1..", "tpmauthn.v1.k.a.b.c.d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, subject string) {
		s, ok := ParseScope(subject)
		if !ok {
			return
		}
		if !s.Valid() || !strings.HasPrefix(subject, s.Subject("")) {
			t.Fatalf("ParseScope(%q) = %+v", subject, s)
		}
	})
}
