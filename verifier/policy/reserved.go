package policy

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
)

// The verifier's own APIs are reserved: their subjects say who calls (a
// host's agent, a join token's session, a person's credential), so a role
// that could publish there could act as any of them, and one that could
// subscribe there would read other sessions' requests (a join token in an
// enrollment's). Roles reach the operator API through admin: grants only,
// and the v1 API never.
var reserved = []struct{ pattern, name string }{
	{api.SubjectV1Prefix + ">", "the v1 API"},
	{api.SubjectAdminPrefix + ">", "the operator API"},
}

// validateReserved refuses a role whose publish patterns (templates taken
// as any token) overlap a reserved subject.
func (r Role) validateReserved(name string) []error {
	var errs []error
	for _, pat := range r.Publish.Allow {
		for _, res := range reserved {
			if overlaps(template.ReplaceAllString(pat, "*"), res.pattern) {
				errs = append(errs, fmt.Errorf("policy: role %s: publish %q covers %s (%s): grant operator API operations with admin: instead", name, pat, res.name, res.pattern))
			}
		}
	}
	return errs
}

// denyReserved keeps a policy session off the verifier's APIs whatever its
// roles' patterns (the server enforces deny over allow, and a wildcard
// subscription's delivery too): no publish to the v1 API, no subscription
// to either. Publishing to the operator API is applyAdmin's.
func denyReserved(uc *jwt.UserClaims) {
	uc.Pub.Deny.Add(api.SubjectV1Prefix + ">")
	for _, res := range reserved {
		uc.Sub.Deny.Add(res.pattern)
	}
}

// template is a {{...}} placeholder, or a token containing one.
var template = regexp.MustCompile(`[^.]*\{\{[^}]*\}\}[^.]*`)

// overlaps reports whether some subject matches both NATS patterns.
func overlaps(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return true
		case i == len(at) || i == len(bt):
			return false
		case at[i] == ">" || bt[i] == ">":
			return true // each has a token here
		case at[i] != "*" && bt[i] != "*" && at[i] != bt[i]:
			return false
		}
	}
}
