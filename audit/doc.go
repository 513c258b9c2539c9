// Package audit is the audit trail's record and its proof: the Event every
// decision of the verifier leaves (enrollment, registration, connect,
// revocation, rotation, alert), how events are chained, signed and encoded
// into stream messages, and VerifyChain, which checks a trail read back from
// the stream or from an export.
//
// Events are hash-chained: each names the hash of the one before, and the
// last event of each stream message is signed by the verifier's issuer key
// (an nkey), so that one signature covers every event of the message and all
// before it. Deny is the default: an event says "allow" or "ok" only when the
// code that records it says so (Deny).
//
// The writer lives with the verifier (verifier/auditlog); this package
// imports only the standard library and nkeys, so that tpmauthnctl and any
// auditor's tool verify a trail without linking the verifier.
package audit
