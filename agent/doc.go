// Package agent is the host side of tpmauthn: a TPM-backed WebAuthn platform
// authenticator.
//
// An Authenticator owns the host's attestation key (AK) and one TPM-resident
// ECDSA P-256 credential per workload. It produces standard WebAuthn
// registrations (attestation format "tpm", WebAuthn §8.3) and assertions
// (§6.3.3). Key material never leaves the TPM: the data directory holds only
// TPM-encrypted blobs that no other TPM can load, the AK certificate, and each
// credential's signature counter.
//
// Counters: an assertion's counter is written and fsynced before the TPM
// signs, under the credential's lock, so a crash can skip a value but never
// lets one be used twice, and concurrent assertions reach the verifier in
// counter order.
//
// Trust: local callers are untrusted; the daemon (a later layer) names them
// by their peer credentials before it asks for an assertion.
package agent
