// Package record holds the fleet's records as the verifier stores them in
// JetStream KV and the operator API returns them: hosts, credentials, join
// tokens, people, and the short-lived records of enrollment, registration
// and login.
//
// It is the one home of the host and credential state machines: a status
// changes only through Transition, which allows the legal edges alone
// (revoked is final), so that no code path can, say, quarantine a revoked
// credential and have an operator release it. It also keeps a credential's
// counter window (AcceptCounter). It imports only the standard library and
// api, so tpmauthnctl decodes records without linking the verifier.
package record
