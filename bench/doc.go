// Package bench measures the NATS connect path of tpmauthn against NATS's
// own baselines, in one run on one machine: no auth, static nkey users, an
// auth callout that approves everything (synadia-io/callout.go, the
// reference library), and the tpmauthn verifier with full verification.
// Scenarios are alternated (A B C D, A B C D, ...) so that a noisy machine
// affects them alike, and reported as medians with ratios to the approve-all
// callout.
//
// The tpmauthn clients sign with software P-256 keys whose credentials are
// written by a fixture exactly as registration writes them: the verifier
// code under test is the production path; the TPM's speed is measured
// separately (e2e.BenchmarkChain).
package bench
