// Package tpm is the only package in tpmauthn that talks to a TPM.
//
// It opens a TPM 2.0 from a configuration string (a character device such as
// /dev/tpmrm0, or swtpm's TCP command port as swtpm://host:port), reads the
// endorsement key and its certificate, creates and reloads the attestation key
// (AK) through go-attestation, and drives the credential keys with go-tpm's
// direct API: creation under the storage root key, TPM2_Certify by the AK with
// caller-chosen qualifying data (TPM 2.0 Part 3 §18.2), and TPM2_Sign
// (Part 3 §20.2).
//
// Every method takes the TPM's one mutex: a TPM is a serial device, and swtpm
// serves a single connection with only three transient object slots and no
// resource manager in front of it. Credential keys are kept loaded in a small
// cache sized from TPM_PT_HR_TRANSIENT_MIN, so that an assertion for a hot key
// costs exactly one TPM command (TPM2_Sign). Every other transient object and
// session is flushed before the method returns, and Close flushes the cache.
package tpm
