package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAKCertificateProfile(t *testing.T) {
	ca, caKey, err := NewCA("fleet", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := NewTPMIdentity(0x49424D00, "SW TPM", 0x20191023)
	der, err := IssueAKCertificate(ca, caKey, AKCertRequest{AKPublic: &ak.PublicKey, TPM: id})
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	// WebAuthn §8.3.1, checked field by field.
	if c.Version != 3 {
		t.Errorf("version %d, want 3", c.Version)
	}
	if c.Subject.String() != "" || len(c.Subject.Names) != 0 {
		t.Errorf("subject %q, want empty", c.Subject)
	}
	if !c.BasicConstraintsValid || c.IsCA {
		t.Errorf("basic constraints valid=%v CA=%v, want present and false", c.BasicConstraintsValid, c.IsCA)
	}
	if len(c.UnknownExtKeyUsage) != 1 || !c.UnknownExtKeyUsage[0].Equal(asn1.ObjectIdentifier{2, 23, 133, 8, 3}) {
		t.Errorf("EKU %v, want 2.23.133.8.3", c.UnknownExtKeyUsage)
	}
	var sanCritical, aaguidOK bool
	for _, e := range c.Extensions {
		switch {
		case e.Id.Equal(oidSubjectAltName):
			sanCritical = e.Critical
		case e.Id.Equal(oidFIDOAAGUID):
			var v []byte
			_, err := asn1.Unmarshal(e.Value, &v)
			aaguidOK = err == nil && bytes.Equal(v, AAGUID[:])
		}
	}
	if !sanCritical || !aaguidOK {
		t.Errorf("SAN critical=%v, AAGUID extension ok=%v", sanCritical, aaguidOK)
	}
	got, err := TPMIdentityFromCertificate(c)
	if err != nil || got != (TPMIdentity{"id:49424D00", "SW TPM", "id:20191023"}) {
		t.Errorf("SAN identity = %+v, %v", got, err)
	}
	if err := c.CheckSignatureFrom(ca); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
	if _, err := IssueAKCertificate(ca, caKey, AKCertRequest{AKPublic: &ak.PublicKey}); err == nil {
		t.Error("issued an AK certificate without a TPM identity")
	}
}

func TestLoadEKTrustDir(t *testing.T) {
	root, rootKey, err := NewCA("root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := issueIntermediate(t, root, rootKey)
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("root.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}))
	write("inter.der", inter.Raw)
	write("README.txt", []byte("not a certificate"))
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	trust, err := LoadEKTrustDir(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if trust.Roots() != 1 {
		t.Fatalf("roots = %d, want 1", trust.Roots())
	}
	if !strings.Contains(logs.String(), "README.txt") {
		t.Fatalf("no warning about README.txt: %s", logs.String())
	}
	empty := t.TempDir()
	if _, err := LoadEKTrustDir(empty, nil); err == nil {
		t.Fatal("an empty EK CA directory was accepted")
	}
	if _, err := LoadEKTrustDir(filepath.Join(dir, "missing"), nil); err == nil {
		t.Fatal("a missing EK CA directory was accepted")
	}
}

func issueIntermediate(t *testing.T, root *x509.Certificate, rootKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *root
	tmpl.Subject.CommonName = "intermediate"
	tmpl.SerialNumber = tmpl.SerialNumber.Add(tmpl.SerialNumber, tmpl.SerialNumber)
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, root, &k.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseTPMSANRejects(t *testing.T) {
	dns, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("example.com")}})
	partial, _ := tpmSAN(TPMIdentity{"id:1", "m", "v"})
	partial = bytes.Replace(partial, []byte{0x67, 0x81, 0x05, 0x02, 0x03}, []byte{0x67, 0x81, 0x05, 0x02, 0x09}, 1) // 2.23.133.2.3 -> .9: no version
	for name, der := range map[string][]byte{
		"garbage":    []byte("x"),
		"dns-name":   dns,
		"no-version": partial,
	} {
		if _, err := parseTPMSAN(der); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// P1: the EK certificate profile was not enforced, only a chain to a vendor
// root: the key of any end-entity certificate under a trusted vendor CA
// could pose as an EK. Each property the profile requires is checked.
func TestAttackNonEKCertificateUnderVendorRoot(t *testing.T) {
	root, rootKey, err := NewCA("vendor root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	san, err := tpmSAN(TPMIdentity{Manufacturer: "id:00001014", Model: "swtpm", Version: "id:20191023"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(mod func(*x509.Certificate)) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageKeyAgreement, BasicConstraintsValid: true,
			UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidEKCertificate},
			ExtraExtensions:    []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: san}},
		}
		mod(tmpl)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	trust := NewEKTrust(root)
	for _, tc := range []struct {
		name string
		mod  func(*x509.Certificate)
		ok   bool
	}{
		{"ekProfile", func(*x509.Certificate) {}, true},
		{"noEKUListed", func(c *x509.Certificate) { c.UnknownExtKeyUsage = nil }, true},
		{"tlsServer", func(c *x509.Certificate) {
			c.ExtraExtensions, c.UnknownExtKeyUsage = nil, nil
			c.DNSNames, c.ExtKeyUsage = []string{"www.vendor.example"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, false},
		{"otherEKU", func(c *x509.Certificate) {
			c.UnknownExtKeyUsage, c.ExtKeyUsage = nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}, false},
		{"signingKey", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }, false},
		{"ca", func(c *x509.Certificate) { c.IsCA, c.KeyUsage = true, c.KeyUsage|x509.KeyUsageCertSign }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := trust.VerifyEKCertificate(issue(tc.mod), nil, time.Now())
			if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrEKUntrusted)) {
				t.Fatalf("%v, want ok=%v", err, tc.ok)
			}
		})
	}
}
