package attestation

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is; the wrapped message
// carries the detail for logs and the audit trail.
var (
	// ErrMalformed: bytes that do not decode (CBOR, JSON, TPM structures,
	// truncated or oversized fields).
	ErrMalformed = errors.New("malformed")
	// ErrEKUntrusted: the EK certificate does not chain to a trusted
	// manufacturer root, or cannot be checked.
	ErrEKUntrusted = errors.New("EK certificate not trusted")
	// ErrActivationFailed: the secret returned by credential activation does
	// not match.
	ErrActivationFailed = errors.New("credential activation failed")
	// ErrAttestation: a registration's attestation does not verify (format,
	// certificate chain, certify info, key attributes).
	ErrAttestation = errors.New("attestation rejected")
	// ErrAKCertExpired: the registration's AK certificate is outside its
	// validity (an ErrAttestation).
	ErrAKCertExpired = fmt.Errorf("%w: AK certificate expired", ErrAttestation)
	// ErrAssertion: an assertion does not verify (challenge, origin, RP ID,
	// flags, signature).
	ErrAssertion = errors.New("assertion rejected")
	// ErrCounterRegression: the signature counter did not increase, the
	// signal of a cloned key store or a restored snapshot.
	ErrCounterRegression = errors.New("signature counter did not increase")
)

// UnknownIssuerError: the EK certificate does not chain to any manufacturer
// root the verifier was given (or it was given none). That is a matter of
// configuration (which manufacturers to trust), not evidence of tampering;
// it is an ErrEKUntrusted. Issuer is the certificate's issuer as it reads
// (attacker-chosen: quote it before printing).
type UnknownIssuerError struct{ Issuer string }

func (e *UnknownIssuerError) Error() string {
	return fmt.Sprintf("%v: issued by %q, under no manufacturer root this verifier trusts", ErrEKUntrusted, e.Issuer)
}

func (e *UnknownIssuerError) Unwrap() error { return ErrEKUntrusted }
