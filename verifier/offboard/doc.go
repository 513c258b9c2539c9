// Package offboard ends a person's access when their IdP says so (SCIM,
// verifier/scim), when the periodic re-check's refresh fails
// (verifier/oidclogin), or when an operator asks (verifier/admin):
//
//   - Offboard: the person record is disabled (no login, no grant), every
//     credential the record lists is revoked (fleet's compare-and-set, so a
//     racing connect is ordered), each one's live NATS sessions are kicked
//     at once and in parallel (within a second, on every server), the
//     refresh token is revoked at the IdP (RFC 7009, where its discovery
//     names a revocation_endpoint) and dropped, and the whole is audited
//     (person.offboard, naming the actor: scim:<idp>, recheck:<idp> or the
//     operator) and alerted (alert.PersonOffboarded) when it cut live
//     access.
//   - Regroup: the person's groups change; every credential whose roles
//     (policy.RolesForPerson, with that credential's assurance) lose one
//     has its sessions kicked: NATS cannot narrow a session's permissions,
//     so the client reconnects and gets the smaller set.
//   - Enable: the record only. Revoked credentials stay revoked (revoked is
//     final in the credential's state machine): the person logs in and
//     registers new ones.
//
// Alerts: an offboarding that revoked an active credential or kicked a
// session raises person_offboarded, as does any offboarding after a failed
// refresh (the IdP cut the person without telling SCIM). Deprovisioning
// someone who held nothing live (never logged in, already offboarded) is
// routine: audited, not alerted.
package offboard
