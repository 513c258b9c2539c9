package attestation

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidEKCertificate   = asn1.ObjectIdentifier{2, 23, 133, 8, 1} // tcg-kp-EKCertificate
)

// EKTrust holds the TPM manufacturer roots and intermediates that EK
// certificates must chain to.
type EKTrust struct {
	roots         *x509.CertPool
	intermediates *x509.CertPool
	nroots        int
	// pinned are the SPKI hashes of the CAs an EK certificate's chain must
	// pass through (none: any chain to a root will do).
	pinned map[[32]byte]bool
}

// Pin requires every EK certificate's chain to pass through one of cas
// (by their public keys, so that a re-issued CA with the same key still
// counts): the intermediates of the manufacturers, or product lines, an
// operator buys from, where a root also signs CAs for other uses.
func (t *EKTrust) Pin(cas ...*x509.Certificate) {
	if t.pinned == nil {
		t.pinned = map[[32]byte]bool{}
	}
	for _, c := range cas {
		t.pinned[sha256.Sum256(c.RawSubjectPublicKeyInfo)] = true
	}
}

// throughPinned requires one of chains to hold a pinned CA above the leaf.
func (t *EKTrust) throughPinned(chains [][]*x509.Certificate) error {
	if len(t.pinned) == 0 {
		return nil
	}
	for _, chain := range chains {
		for _, c := range chain[1:] {
			if t.pinned[sha256.Sum256(c.RawSubjectPublicKeyInfo)] {
				return nil
			}
		}
	}
	return errors.New("its chain passes through none of the pinned EK intermediates (enrollment.ek_intermediates)")
}

// NewEKTrust sorts certificates into roots (self-signed) and intermediates.
func NewEKTrust(certs ...*x509.Certificate) *EKTrust {
	t := &EKTrust{roots: x509.NewCertPool(), intermediates: x509.NewCertPool()}
	for _, c := range certs {
		if isSelfSigned(c) {
			t.roots.AddCert(c)
			t.nroots++
		} else {
			t.intermediates.AddCert(c)
		}
	}
	return t
}

// Roots returns how many roots the trust holds.
func (t *EKTrust) Roots() int { return t.nroots }

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// LoadEKTrustDir reads every PEM or DER certificate in dir (not recursing).
// Files that hold no certificate are skipped with a warning; a directory with
// no root at all is an error, since it would trust nothing.
func LoadEKTrustDir(dir string, log *slog.Logger) (*EKTrust, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read EK CA directory: %w", err)
	}
	var certs []*x509.Certificate
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read EK CA file: %w", err)
		}
		cs, err := ParseCertificates(b)
		if err != nil {
			log.Warn("ignoring file in EK CA directory: not a certificate", "path", path, "error", err)
			continue
		}
		certs = append(certs, cs...)
	}
	t := NewEKTrust(certs...)
	if t.nroots == 0 {
		return nil, fmt.Errorf("EK CA directory %s holds no self-signed root certificate: add the TPM manufacturers' root CAs (PEM or DER)", dir)
	}
	return t, nil
}

// ParseCertificates parses one DER certificate or any number of PEM blocks.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	if c, err := x509.ParseCertificate(b); err == nil {
		return []*x509.Certificate{c}, nil
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate: %w", ErrMalformed, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate (PEM or DER)", ErrMalformed)
	}
	return certs, nil
}

// VerifyEKCertificate checks that an EK certificate chains to a trusted root
// at time now, through the trust's intermediates and any sent along with it.
//
// EK certificates have an empty subject, so their SAN (TCG EK Credential
// Profile §3.2.9) is critical and holds only a directoryName, which Go's x509
// leaves in UnhandledCriticalExtensions. The SAN is parsed here and accepted
// only if it is the TCG TPM identity; anything else fails closed.
func (t *EKTrust) VerifyEKCertificate(ek *x509.Certificate, intermediates []*x509.Certificate, now time.Time) error {
	if t == nil || t.nroots == 0 {
		return fmt.Errorf("%w (no manufacturer roots configured)", unknownIssuer(ek))
	}
	if err := checkEKProfile(ek); err != nil {
		return fmt.Errorf("%w: %w", ErrEKUntrusted, err)
	}
	c := *ek
	c.UnhandledCriticalExtensions = nil
	for _, oid := range ek.UnhandledCriticalExtensions {
		if oid.Equal(oidSubjectAltName) {
			if _, err := TPMIdentityFromCertificate(ek); err != nil {
				return fmt.Errorf("%w: %w", ErrEKUntrusted, err)
			}
			continue
		}
		return fmt.Errorf("%w: unhandled critical extension %v", ErrEKUntrusted, oid)
	}
	pool := t.intermediates
	if len(intermediates) > 0 {
		pool = t.intermediates.Clone()
		for _, ic := range intermediates {
			pool.AddCert(ic)
		}
	}
	chains, err := c.Verify(x509.VerifyOptions{
		Roots:         t.roots,
		Intermediates: pool,
		CurrentTime:   now,
		// EK certificates carry tcg-kp-EKCertificate (2.23.133.8.1), which
		// Go does not know.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if ua := (x509.UnknownAuthorityError{}); errors.As(err, &ua) {
		return unknownIssuer(ek)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEKUntrusted, err)
	}
	if err := t.throughPinned(chains); err != nil {
		return fmt.Errorf("%w: %w", ErrEKUntrusted, err)
	}
	return nil
}

// checkEKProfile requires what the TCG EK Credential Profile (§3.2) says of
// an EK certificate, beyond a chain to a vendor root: the TPM identity in
// its SAN, not a CA, a key usage an EK has (keyEncipherment for RSA,
// keyAgreement for ECC), and, where extended key usages are listed,
// tcg-kp-EKCertificate among them. Without these checks, the key of any
// end-entity certificate under a trusted vendor CA (a TLS server's, say)
// could pose as an EK in software and enroll a host with no TPM.
func checkEKProfile(c *x509.Certificate) error {
	if _, err := TPMIdentityFromCertificate(c); err != nil {
		return fmt.Errorf("not an EK certificate: no TPM identity in its subject alternative name: %w", err)
	}
	if c.IsCA {
		return errors.New("not an EK certificate: it is a CA")
	}
	if c.KeyUsage&(x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement) == 0 {
		return errors.New("not an EK certificate: its key usage is neither keyEncipherment nor keyAgreement")
	}
	if len(c.ExtKeyUsage)+len(c.UnknownExtKeyUsage) > 0 {
		found := false
		for _, oid := range c.UnknownExtKeyUsage {
			found = found || oid.Equal(oidEKCertificate)
		}
		if !found {
			return errors.New("not an EK certificate: its extended key usages do not include tcg-kp-EKCertificate")
		}
	}
	return nil
}

// TPMIdentityFromCertificate reads the TCG TPM manufacturer, model and version
// from a certificate's SAN directoryName (EK or AK certificate).
func TPMIdentityFromCertificate(c *x509.Certificate) (TPMIdentity, error) {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		return parseTPMSAN(ext.Value)
	}
	return TPMIdentity{}, errors.New("certificate has no subject alternative name")
}

func parseTPMSAN(der []byte) (TPMIdentity, error) {
	var id TPMIdentity
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &names); err != nil || len(rest) != 0 {
		return id, fmt.Errorf("%w: subject alternative name does not decode", ErrMalformed)
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 {
			return id, fmt.Errorf("%w: subject alternative name holds a name of tag %d, want only directoryName", ErrMalformed, n.Tag)
		}
		var rdns pkix.RDNSequence
		if rest, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil || len(rest) != 0 {
			return id, fmt.Errorf("%w: directoryName does not decode", ErrMalformed)
		}
		for _, set := range rdns {
			for _, atv := range set {
				s, ok := atv.Value.(string)
				if !ok {
					return id, fmt.Errorf("%w: directoryName attribute %v is not a string", ErrMalformed, atv.Type)
				}
				switch {
				case atv.Type.Equal(oidTPMManufacturer):
					id.Manufacturer = s
				case atv.Type.Equal(oidTPMModel):
					id.Model = s
				case atv.Type.Equal(oidTPMVersion):
					id.Version = s
				}
			}
		}
	}
	if id.Manufacturer == "" || id.Model == "" || id.Version == "" {
		return id, fmt.Errorf("%w: subject alternative name lacks TPM manufacturer, model or version", ErrMalformed)
	}
	return id, nil
}

// unknownIssuer names ek's issuer, cut to what a log line holds.
func unknownIssuer(ek *x509.Certificate) *UnknownIssuerError {
	issuer := ek.Issuer.String()
	if len(issuer) > 200 {
		issuer = issuer[:200] + "…"
	}
	return &UnknownIssuerError{Issuer: issuer}
}
