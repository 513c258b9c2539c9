package e2e

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// P3: a host was one EK, but a TPM has several certified EKs (swtpm: RSA
// 2048 and ECC P-384). After `host revoke` the same machine enrolled again
// with its other EK and a fresh join token, keeping its AK or making a new
// one. Now enrollment claims every EK the agent presents (and activates
// with) and the AK; a revoked host's key coming back is refused, audited
// and alerted on, and the token is not spent.
func TestAttackRevokedTPMReturnsWithItsOtherEK(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	f.MustAdmin(t, "host.revoke", api.IDRequest{ID: e.HostID, Reason: "stolen"}, nil)

	other := otherCertifiedEK(t, a)
	sameAK, err := a.AK()
	if err != nil {
		t.Fatal(err)
	}
	newAK, err := a.TPM().NewAK()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ak   *tpm.AK
	}{
		{"sameAK", sameAK},
		{"newAK", newAK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			token := f.Token(t, time.Hour)
			if code := enrollWithEK(t, f, a.TPM(), tc.ak, other, token); code != api.CodeRevoked {
				t.Fatalf("enrollment with the revoked TPM's other EK: code %q, want %q", code, api.CodeRevoked)
			}
			var tokens []record.Token
			f.MustAdmin(t, "token.list", struct{}{}, &tokens)
			for _, ti := range tokens {
				if ti.UsedBy != "" && ti.UsedBy != e.HostID {
					t.Fatalf("token %s spent by the refused enrollment (%s)", ti.ID, ti.UsedBy)
				}
			}
		})
	}
	eventually.Until(t, 5*time.Second, func() error {
		for _, ev := range f.AuditEvents(t) {
			if ev.Kind == "alert.revoked_tpm" && ev.Host == e.HostID {
				return nil
			}
		}
		return errAttackNotAudited
	})
}

// otherCertifiedEK is one of a's TPM's certified EKs that is not the one
// the agent enrolls with (the RSA EK go-attestation picks).
func otherCertifiedEK(t *testing.T, a *agent.Authenticator) *tpm.CertifiedEK {
	t.Helper()
	ek, err := a.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	all, err := a.TPM().CertifiedEKs()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		if k, ok := c.Public.(interface{ Equal(crypto.PublicKey) bool }); ok && !k.Equal(ek.Public) {
			return c
		}
	}
	t.Fatalf("the TPM has %d certified EKs, none but the RSA one", len(all))
	return nil
}

// enrollWithEK is a modified agent: it enrolls ak with ek alone, over
// token's enrollment session, and returns the verifier's error code ("" on
// success).
func enrollWithEK(t *testing.T, f *fleettest.Fleet, tp *tpm.TPM, ak *tpm.AK, ek *tpm.CertifiedEK, token string) string {
	t.Helper()
	nc, err := f.EnrollSession(token)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	der, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	p := ak.AttestationParameters()
	info := tp.Info()
	req := api.EnrollBeginRequest{
		Token: token, Hostname: "back-again", EKPublic: der, EKCert: ek.Certificate.Raw, EKPublicArea: ek.PublicArea,
		AK:  api.AKParams{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		TPM: api.TPMInfo{Manufacturer: info.Manufacturer, VendorString: info.VendorString, FirmwareVersion1: info.FirmwareVersion1},
	}
	var begin api.EnrollBeginResponse
	if code := fleettest.Request(t, nc, api.TokenScope(token).Subject(api.OpEnrollBegin), req, &begin); code != "" {
		return code
	}
	secret, err := tp.ActivateCredentialWithEK(ak, ek, begin.Credential, begin.Secret)
	if err != nil {
		t.Fatal(err)
	}
	var res api.EnrollResult
	return fleettest.Request(t, nc, api.TokenScope(token).Subject(api.OpEnrollFinish), api.EnrollFinishRequest{Session: begin.Session, Secret: secret}, &res)
}

// Offboarding releases every key an enrollment claimed: the TPM may enroll
// again, with any of its EKs, as a new host.
func TestOffboardReleasesEveryClaim(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var h record.Host
	f.MustAdmin(t, "host.show", api.IDRequest{ID: e.HostID}, &h)
	if len(h.Claims) != 3 { // the RSA EK, the ECC EK, the AK
		t.Fatalf("host claims %q, want its two EKs and its AK", h.Claims)
	}
	f.MustAdmin(t, "host.offboard", api.IDRequest{ID: e.HostID, Reason: "decommissioned"}, nil)
	ak, err := a.AK()
	if err != nil {
		t.Fatal(err)
	}
	if code := enrollWithEK(t, f, a.TPM(), ak, otherCertifiedEK(t, a), f.Token(t, time.Hour)); code != "" {
		t.Fatalf("enrollment after offboarding: code %q", code)
	}
}

// P1 (rest): a manufacturer's root signs more than the EK intermediates of
// the TPMs an operator bought (other product lines, other customers' CAs).
// With enrollment.ek_intermediates the EK certificate's chain must pass
// through a pinned one: a TPM whose EK chains to a trusted root through
// another intermediate is refused (ek_untrusted), the pinned line enrolls.
func TestAttackEKUnderUnpinnedIntermediate(t *testing.T) {
	other := swtpmtest.New(t) // another product line, its root trusted too
	var dir, pinned string
	f := fleettest.New(t, func(f *fleettest.Fleet) {
		dir = f.EKCADir
		for name, c := range map[string][]byte{"other-root.pem": other.RootCert(t).Raw, "other-intermediate.pem": other.IntermediateCert(t).Raw} {
			writePEM(t, filepath.Join(dir, name), c)
		}
		pinned = filepath.Join(t.TempDir(), "pinned.pem")
		writePEM(t, pinned, f.TPM.IntermediateCert(t).Raw)
		f.Config.EKIntermediates = pinned
	})
	_, err := f.Enroll(t, fleettest.Authenticator(t, other), f.Token(t, time.Hour))
	fleettest.WantCode(t, err, api.CodeEKUntrusted)
	if _, err := f.Enroll(t, fleettest.Authenticator(t, f.TPM), f.Token(t, time.Hour)); err != nil {
		t.Fatalf("a TPM under the pinned intermediate: %v", err)
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
