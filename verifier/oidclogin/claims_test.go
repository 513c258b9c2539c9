package oidclogin

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/verifier/policy"
)

func TestIdentityFrom(t *testing.T) {
	okta := policy.IdP{Name: "okta", SubjectClaim: "sub", GroupsClaim: "groups"}
	entra := policy.IdP{Name: "entra", SubjectClaim: "oid", GroupsClaim: "roles"}
	many := make([]any, maxGroups+10)
	for i := range many {
		many[i] = "g"
	}
	for _, tc := range []struct {
		name    string
		idp     policy.IdP
		claims  map[string]any
		subject string
		groups  []string
		err     error
	}{
		{"sub", okta, map[string]any{"sub": "00u1", "groups": []any{"a", "b"}, "email": "x@example.com"}, "00u1", []string{"a", "b"}, nil},
		// Entra: the person is oid, whatever sub says (it is per application).
		{"oid", entra, map[string]any{"sub": "pairwise", "oid": "o-1", "roles": []any{"r"}}, "o-1", []string{"r"}, nil},
		{"oidMissing", entra, map[string]any{"sub": "pairwise"}, "", nil, ErrClaims},
		{"subNotString", okta, map[string]any{"sub": 42.0}, "", nil, ErrClaims},
		{"subEmpty", okta, map[string]any{"sub": ""}, "", nil, ErrClaims},
		{"subTooLong", okta, map[string]any{"sub": strings.Repeat("x", 256)}, "", nil, ErrClaims},
		{"groupsOneString", okta, map[string]any{"sub": "s", "groups": "solo"}, "s", []string{"solo"}, nil},
		{"groupsMixed", okta, map[string]any{"sub": "s", "groups": []any{"a", 1.0, nil, "", strings.Repeat("g", maxGroupLen+1), "b"}}, "s", []string{"a", "b"}, nil},
		{"groupsObject", okta, map[string]any{"sub": "s", "groups": map[string]any{"a": 1.0}}, "s", nil, nil},
		{"groupsBounded", okta, map[string]any{"sub": "s", "groups": many}, "s", slices.Repeat([]string{"g"}, maxGroups), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := identityFrom(tc.idp, tc.claims)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if id.Subject != tc.subject || id.IdP != tc.idp.Name || !slices.Equal(id.Groups, tc.groups) {
				t.Fatalf("identity %+v", id)
			}
		})
	}
}

func TestNormalizeUserCode(t *testing.T) {
	for in, want := range map[string]string{"bcdf-ghjk": "BCDFGHJK", " BCDF GHJK ": "BCDFGHJK", "BCDF-GHJK\n": "BCDFGHJK", "AEIOU": "", "b\u0301c": "BC"} {
		if got := normalizeUserCode(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	for range 100 {
		if c := newUserCode(); len(c) != 8 || normalizeUserCode(c) != c {
			t.Fatalf("user code %q", c)
		}
	}
}
