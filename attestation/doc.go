// Package attestation holds what the agent and the verifier share: the
// encodings of a TPM-backed WebAuthn authenticator and the checks a relying
// party makes of them. It is pure: no device I/O and no NATS.
//
// # Who signs what
//
// Enrollment proves an attestation key (AK) lives in a TPM the fleet trusts:
// the EK certificate chains to a manufacturer root (VerifyEKCertificate), and
// TPM2_ActivateCredential (TPM 2.0 Part 1 §24) releases a verifier-chosen
// secret only on the TPM holding both that EK and that AK (NewActivation,
// CheckActivation). The verifier's fleet CA then issues the AK certificate
// with the profile WebAuthn §8.3.1 requires (IssueAKCertificate).
//
// Registration (WebAuthn §6.5, §8.3): a credential key created in the same
// TPM is certified by the AK with TPM2_Certify, extraData =
// SHA-256(authenticatorData ‖ SHA-256(clientDataJSON)). The attestation object
// has fmt "tpm" and x5c = [AK certificate]. RelyingParty.VerifyRegistration
// checks it with go-webauthn against the fleet CA, and adds what the library
// leaves out: fmt "tpm" and type "attca" are required, and the key's pubArea
// must say fixedTPM, fixedParent and sensitiveDataOrigin.
//
// Assertions (WebAuthn §6.3.3): the TPM signs SHA-256(authenticatorData ‖
// SHA-256(clientDataJSON)) with ECDSA P-256 (DER). For NATS, the assertion
// travels in the CONNECT "sig" field as a compact Bundle, and the challenge is
// derived from the server's nonce (NATSChallenge).
//
// Every parser here takes untrusted bytes: they check sizes before
// allocating, reject trailing data and return errors wrapping ErrMalformed.
package attestation
