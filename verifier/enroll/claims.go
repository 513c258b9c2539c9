package enroll

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-attestation/attest"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// A host is a TPM, and a TPM has several EKs (RSA and ECC, low and high
// range) and one AK per enrollment. Enrollment claims each key it saw
// (the EK, every other certified EK the agent presented and activated with,
// and the AK) in the eks bucket; a key claimed by a host that is not
// offboarded refuses the enrollment, and one of a revoked host raises an
// alert. What is not claimed cannot be refused: an EK the agent did not
// present (a modified agent holding one back at its first enrollment) stays
// free, see docs/threat-model.md (P3).

// moreEK is one of the request's MoreEKs, checked and challenged.
type moreEK struct {
	hash string
	act  *attestation.Activation
}

// challengeMoreEKs decodes the request's other EKs, each a distinct key
// (and, where a certificate is sent, the key it certifies), and makes a
// credential-activation challenge for each with the same AK. No chain is
// required: the claim rests on the activation, which takes the EK's private
// key, not on who made the EK.
func challengeMoreEKs(req *api.EnrollBeginRequest, ekHash string, ak attest.AttestationParameters) ([]moreEK, error) {
	if len(req.MoreEKs) > api.MaxMoreEKs {
		return nil, fmt.Errorf("%w: %d more EKs, at most %d", api.ErrBadRequest, len(req.MoreEKs), api.MaxMoreEKs)
	}
	seen := map[string]bool{ekHash: true}
	out := make([]moreEK, 0, len(req.MoreEKs))
	for i, k := range req.MoreEKs {
		pub, err := attestation.EKPublicKey(k.PublicArea)
		if err != nil {
			return nil, fmt.Errorf("%w: more EK %d: %w", api.ErrBadRequest, i, err)
		}
		if len(k.Cert) > 0 {
			if err := certifies(k.Cert, pub); err != nil {
				return nil, fmt.Errorf("more EK %d: %w", i, err)
			}
		}
		h, err := attestation.EKHash(pub)
		if err != nil {
			return nil, fmt.Errorf("%w: more EK %d: %w", api.ErrBadRequest, i, err)
		}
		if seen[h] {
			return nil, fmt.Errorf("%w: EK %s presented twice", api.ErrBadRequest, h)
		}
		seen[h] = true
		act, err := attestation.NewActivationForEK(k.PublicArea, ak)
		if err != nil {
			return nil, err
		}
		out = append(out, moreEK{hash: h, act: act})
	}
	return out, nil
}

// certifies requires der to be an EK certificate for pub.
func certifies(der []byte, pub crypto.PublicKey) error {
	cert, err := attest.ParseEKCertificate(der)
	if err != nil {
		return fmt.Errorf("%w: EK certificate: %s", attestation.ErrEKUntrusted, err)
	}
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return fmt.Errorf("%w: EK certificate is for another key", attestation.ErrEKUntrusted)
	}
	return nil
}

// akHash names an AK in claims (as EKHash names an EK).
func akHash(akDER []byte) (string, error) {
	pub, err := x509.ParsePKIXPublicKey(akDER)
	if err != nil {
		return "", fmt.Errorf("%w: AK public: %w", attestation.ErrAttestation, err)
	}
	return attestation.EKHash(pub)
}

// checkClaims refuses keys another host holds: api.ErrAlreadyEnrolled, or
// api.ErrRevoked (and a tamper alert) when that host is revoked, since its
// TPM is trying to come back. A failed look-up refuses too.
func (s *Service) checkClaims(ctx context.Context, keys []string) error {
	for _, k := range keys {
		e, _, err := store.Get[record.EKEnrollment](ctx, s.cfg.Store.EKs, k)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		h, _, err := store.Get[record.Host](ctx, s.cfg.Store.Hosts, e.Host)
		if err != nil && !errors.Is(err, api.ErrNotFound) {
			return err
		}
		if err == nil && h.Status == api.HostRevoked {
			err := fmt.Errorf("%w: this TPM (%s) belongs to revoked host %s", api.ErrRevoked, k, h.ID)
			s.cfg.Alerts.Alert(alert.RevokedTPM, audit.Event{Host: h.ID, EKHash: k, Reason: err.Error()})
			return err
		}
		return fmt.Errorf("%w: %s is host %s's", api.ErrAlreadyEnrolled, k, e.Host)
	}
	return nil
}

// claim records every key of the enrollment as hostID's, all or none.
func (s *Service) claim(ctx context.Context, sess *record.EnrollSession, hostID string) error {
	keys := sess.Claims()
	for i, k := range keys {
		err := store.Create(ctx, s.cfg.Store.EKs, k, &record.EKEnrollment{V: record.Version, Host: hostID})
		if err == nil {
			continue
		}
		s.release(ctx, keys[:i])
		if errors.Is(err, api.ErrConflict) {
			if cerr := s.checkClaims(ctx, []string{k}); cerr != nil {
				return cerr
			}
			return api.ErrAlreadyEnrolled
		}
		return err
	}
	return nil
}

// release gives claims back (an enrollment refused after claiming).
func (s *Service) release(ctx context.Context, keys []string) {
	for _, k := range keys {
		if err := s.cfg.Store.EKs.Delete(context.WithoutCancel(ctx), k); err != nil {
			s.log.Error("enrollment refused, but its TPM stays marked enrolled", "claim", k, "error", err)
		}
	}
}
