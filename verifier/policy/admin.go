package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
)

// Admin grants: which operator API operations a role may call. The
// operator API checks the caller's roles again on every request
// (AdminAllows, verifier/operators); the subjects Apply adds only let the
// request reach it.

const (
	adminAll  = "*"
	adminRead = "read"
)

func (r Role) validateAdmin(name string) []error {
	var errs []error
	if len(r.Admin) > 0 && name != strings.ToLower(name) {
		// The operator API reads a session's roles from its tags, which
		// NATS keeps in lower case.
		errs = append(errs, fmt.Errorf("policy: role %s: a role with admin operations is named in lower case", name))
	}
	for _, op := range r.Admin {
		if op != adminAll && op != adminRead && !slices.Contains(api.AdminOps, op) {
			errs = append(errs, fmt.Errorf("policy: role %s: admin %q: an operation (%v), \"read\" or \"*\"", name, op, api.AdminOps))
		}
	}
	return errs
}

// grants reports whether the role may call op.
func (r Role) grants(op string) bool {
	for _, g := range r.Admin {
		if g == op || g == adminAll || (g == adminRead && slices.Contains(api.AdminReadOps, op)) {
			return true
		}
	}
	return false
}

// AdminAllows reports whether any of roles may call the operator API's op.
// An unknown role grants nothing.
func (p *Policy) AdminAllows(roles []string, op string) bool {
	for _, name := range roles {
		if r, ok := p.Roles[name]; ok && r.grants(op) {
			return true
		}
	}
	return false
}

// HasAdmins reports whether some role the people bindings grant may call
// the operator API: then people operate the fleet, and the operator key file
// is a break-glass credential whose use raises an alert.
func (p *Policy) HasAdmins() bool {
	if p.People == nil {
		return false
	}
	for _, b := range p.People.Bindings {
		for _, name := range b.Roles {
			if len(p.Roles[name].Admin) > 0 {
				return true
			}
		}
	}
	return false
}

// applyAdmin lets a person's session reach the operations its roles grant,
// on subjects naming its own person and credential
// (api.AdminPersonSubject): the server enforces the permission, so the
// subject says who asks. Every other session is denied the operator API.
func (p *Policy) applyAdmin(uc *jwt.UserClaims, roles []string, s Subject) {
	var ops []string
	if s.Person != "" && s.CredentialID != "" {
		for _, op := range api.AdminOps {
			if p.AdminAllows(roles, op) {
				ops = append(ops, api.AdminPersonSubject(s.Person, s.CredentialID, op))
			}
		}
	}
	if len(ops) == 0 {
		// Denied where an allow reaches it (none can: refused at load; an
		// entry that denies nothing costs the server a sublist insert).
		if slices.ContainsFunc(uc.Pub.Allow, func(a string) bool { return overlaps(a, api.SubjectAdminPrefix+">") }) {
			uc.Pub.Deny.Add(api.SubjectAdminPrefix + ">")
		}
		return
	}
	uc.Pub.Allow.Add(ops...)
}
