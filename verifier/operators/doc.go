// Package operators decides who may call the operator API (tpmauthnctl's
// admin endpoints) and names them for the audit trail.
//
// People operate the fleet: a person's session (their TPM credential
// through the agent, with roles from their IdP groups) publishes to
// api.AdminPersonSubject(person, credential, op), which the server lets it
// do only for its own person and credential and only for the operations
// the policy's admin: grants give it. The subject, not a header (nats.go's
// header parsing can be made to drop or replace Nats-Request-Info), says
// who asks; each request is checked again against the credential, the
// person and their roles now, and the audit trail names both.
//
// The operator key file (a user of the verifier's own account) remains as a
// break-glass credential: once the policy grants admin roles to people, its
// use raises the break_glass alert.
package operators
