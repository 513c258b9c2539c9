// Package scim is the verifier's SCIM 2.0 service provider (RFC 7643,
// RFC 7644; github.com/elimity-com/scim), through which each IdP's
// provisioning tells the verifier who left and who changed groups. It is
// served on the HTTP listener under /scim/v2/<idp>/ for every IdP of the
// policy's people section with a SCIM token (scim_token_file or
// scim_token_env, never in the policy itself).
//
// Trust: a request is refused (401) unless it carries, as a bearer token,
// the token of the IdP its path names (compared as SHA-256 digests in
// constant time). It then acts on that IdP's people only: a user's id is
// the person's ID (record.PersonID(idp, subject)), which names its IdP,
// and every lookup checks that the record's IdP is the path's; a SCIM
// group is keyed under its IdP. A token for IdP A cannot read or change a
// person of IdP B.
//
// Mapping: a SCIM User is the person (idp, subject) where subject is the
// User's externalId (default: Okta sends its user ID, the OIDC sub; Entra
// ID its objectId, the oid claim, when the IdP's subject_claim is oid) or
// userName (scim_subject: userName). A User provisioned before the
// person's first login gets a person record at once (with the issuer and
// subject claim the policy names), so a deactivation that arrives before
// the first login still applies: the login is refused.
//
// Deactivation arrives as PATCH replace active=false (Okta: no path, value
// {"active": false}; Entra: op "Replace", path "active", value "False" —
// strings for booleans, which is why schema.SetAllowStringValues is on),
// PUT with active false, or DELETE; each offboards the person
// (verifier/offboard). active=true enables the record again, never the
// revoked credentials. A SCIM Group is a group name in the persons'
// groups (displayName, or externalId with scim_group_name: externalId for
// Entra's groups claim of object IDs); member changes — add, remove with
// a value list, or Okta's and Entra's filtered path members[value eq
// "<id>"] — regroup the persons and kick the sessions whose roles shrank.
// A member filter this package does not understand is refused (400), never
// answered 200 without acting.
package scim
