// Package operators decides who may call the operator API (tpmauthnctl's
// admin endpoints) and names them for the audit trail.
//
// People operate the fleet: a person's session (their TPM credential
// through the agent, with roles from their IdP groups) reaches the
// operator API through an import that tells the verifier who asks
// (Nats-Request-Info, written by nats-server); each request is allowed only
// if one of the session's roles grants the operation in the current policy,
// and the audit trail names the person and the device credential.
//
// The operator key file (a user of the verifier's own account) remains as a
// break-glass credential: once the policy grants admin roles to people, its
// use raises the break_glass alert.
package operators
