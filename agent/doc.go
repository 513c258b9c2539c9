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
// Counters: before the TPM signs, the assertion's counter value is covered by
// a reservation written and fsynced to the credential's file; one write
// reserves a block of values, so the disk leaves the assertion path in all
// but one of 256 assertions. A restarted agent resumes above the reservation:
// a crash can skip values but never lets one be used twice. The credential's
// lock is held across reservation and signature, so concurrent assertions
// reach the verifier in counter order.
//
// Trust: local callers are untrusted; the daemon (a later layer) names them
// by their peer credentials before it asks for an assertion.
package agent
