package policy

import (
	"fmt"
	"regexp"
	"slices"
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

// denyReserved keeps a policy session off the verifier's APIs and the
// enrollment sessions' inboxes whatever its roles' patterns (the server
// enforces deny over allow, and a wildcard subscription's delivery too): no
// publish to the v1 API, no subscription to either API. Publishing to the
// operator API is applyAdmin's. Each deny is added only where an allow
// overlaps it: every permission entry costs the server a sublist insert at
// each connect (8 unneeded ones were about 170 allocations a connect), and
// one that overlaps no allow denies nothing.
func denyReserved(uc *jwt.UserClaims) {
	deny := func(allow []string, list *jwt.StringList, pattern string) {
		if slices.ContainsFunc(allow, func(a string) bool { return overlaps(a, pattern) }) {
			list.Add(pattern)
		}
	}
	deny(uc.Pub.Allow, &uc.Pub.Deny, api.SubjectV1Prefix+">")
	for _, res := range reserved {
		deny(uc.Sub.Allow, &uc.Sub.Deny, res.pattern)
	}
	for _, in := range enrollmentInboxes {
		deny(uc.Sub.Allow, &uc.Sub.Deny, in)
		deny(uc.Pub.Allow, &uc.Pub.Deny, in)
	}
}

// template is a {{...}} placeholder, or a token containing one.
var template = regexp.MustCompile(`[^.]*\{\{[^}]*\}\}[^.]*`)

// Inboxes. A session receives replies under its own inbox prefix only
// (api.InboxFor…, added by Apply): a role that subscribes to other
// sessions' inboxes would read their replies (registration challenges,
// status answers), one that publishes there could forge them.

// inboxKinds are the inboxes of each kind of session: a credential's (c),
// a join token's (t), a host proof's (h), an allow-listed EK's (e). A
// pattern that overlaps one reaches some session's replies.
var inboxKinds = []string{"_INBOX.c.*.>", "_INBOX.t.*.>", "_INBOX.h.*.>", "_INBOX.e.*.>"}

// enrollmentInboxes never belong to a policy session: every one is denied
// them, to subscribe and to publish (the credentials' inboxes cannot be: a
// session's own is one).
var enrollmentInboxes = []string{"_INBOX.t.>", "_INBOX.h.>", "_INBOX.e.>"}

// answerInboxes is what a role with response: may publish to: the inboxes
// replies go to (less the enrollment sessions'). A responder can write into
// any inbox whose subject it learns (a request it serves names one): what
// keeps a session's replies its own is that its reply subjects stay
// secret. Not NATS's allow_responses, which lets a session publish
// to the reply subject of any message delivered to it, its own included:
// with one subject it may publish and subscribe to, it could send itself a
// message whose reply is any subject at all (the operator API, another
// host's v1 scope) and "answer" it there, past every deny.
const answerInboxes = "_INBOX.>"

// validateInboxes refuses subscribe and publish patterns that reach some
// session's inbox (answering requests is response:'s; a session's own
// inbox is always allowed) or the server's system requests ($SYS.REQ:
// CONNZ lists every session's inbox subscriptions).
func (r Role) validateInboxes(name string) []error {
	var errs []error
	for _, pat := range slices.Concat(r.Subscribe.Allow, r.Publish.Allow) {
		p := inboxPattern(pat)
		if slices.ContainsFunc(inboxKinds, func(k string) bool { return overlaps(p, k) }) {
			errs = append(errs, fmt.Errorf("policy: role %s: %q reaches other sessions' inboxes (_INBOX.>): name the subjects the role needs; its own replies are always allowed, and a role that answers requests says response: {}", name, pat))
		}
	}
	for _, pat := range r.Publish.Allow {
		if overlaps(template.ReplaceAllString(pat, "*"), systemRequests) {
			errs = append(errs, fmt.Errorf("policy: role %s: publish %q reaches the server's system requests (%s): they list every session's connections and subscriptions", name, pat, systemRequests))
		}
	}
	return errs
}

// systemRequests are the server's requests an account's users may send.
const systemRequests = "$SYS.>"

// inboxPattern reads a pattern's templates as any token, except one that
// is a whole first token: no template's value is ever _INBOX (host and
// credential IDs, person IDs, lower-case workload names).
func inboxPattern(pat string) string {
	first, rest, more := strings.Cut(pat, ".")
	if template.FindString(first) == first && strings.HasPrefix(first, "{{") && strings.HasSuffix(first, "}}") {
		first = "tmpl"
	}
	if more {
		first += "." + rest
	}
	return template.ReplaceAllString(first, "*")
}

// applyAnswers lets a session whose roles answer requests publish to
// inboxes. A session no role lets publish anything gets an allow-list that
// matches nothing: NATS reads an empty one as everything.
func applyAnswers(uc *jwt.UserClaims, answers bool) {
	if answers {
		uc.Pub.Allow.Add(answerInboxes)
	}
	if len(uc.Pub.Allow) == 0 {
		// Denied too: else it would be a channel between such sessions.
		uc.Pub.Allow.Add(publishNothing)
		uc.Pub.Deny.Add(publishNothing)
	}
}

// publishNothing is a subject no one serves: an allow-list of it alone,
// which the deny-list also names, allows nothing.
const publishNothing = "_TPMAUTHN.NOTHING"

// overlaps reports whether some subject matches both NATS patterns. It is
// on the connect path (Apply): it walks the tokens without allocating.
func overlaps(a, b string) bool {
	for {
		at, arest, amore := strings.Cut(a, ".")
		bt, brest, bmore := strings.Cut(b, ".")
		switch {
		case at == ">" || bt == ">":
			return true // each has a token here
		case at != "*" && bt != "*" && at != bt:
			return false
		case !amore || !bmore:
			return !amore && !bmore
		}
		a, b = arest, brest
	}
}
