// Package people keeps the verifier's people: the person records (a person
// is (IdP, subject), never an email), what a login records and audits, and
// the login grants a finished login hands its client. The relying party
// that talks to the IdPs (verifier/oidclogin) calls Login and Grant; the
// step that registers a person's device credential calls Redeem. Roles come
// from the policy's people bindings (verifier/policy).
package people
