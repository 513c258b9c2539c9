package tpm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

func TestInfoReadsSwtpmIdentity(t *testing.T) {
	tp := swtpmtest.New(t).Open(t)
	info := tp.Info()
	if info.Manufacturer != 0x49424D00 || info.TransientSlots != 3 {
		t.Fatalf("info = %+v, want swtpm's manufacturer 0x49424D00 and 3 transient slots", info)
	}
	id := attestation.NewTPMIdentity(info.Manufacturer, info.VendorString, info.FirmwareVersion1)
	if id.Manufacturer != "id:49424D00" || id.Model == "" || id.Version == "id:00000000" {
		t.Fatalf("identity = %+v", id)
	}
}

func TestEKCertificateChain(t *testing.T) {
	sw := swtpmtest.New(t)
	other := swtpmtest.New(t)
	ek, err := sw.Open(t).EK()
	if err != nil {
		t.Fatal(err)
	}
	if ek.Certificate == nil {
		t.Fatal("swtpm EK has no certificate")
	}
	now := time.Now()
	tests := []struct {
		name  string
		trust []*x509.Certificate
		sent  []*x509.Certificate
		want  error
	}{
		{"own-root", []*x509.Certificate{sw.RootCert(t), sw.IntermediateCert(t)}, nil, nil},
		{"intermediate-sent-along", []*x509.Certificate{sw.RootCert(t)}, []*x509.Certificate{sw.IntermediateCert(t)}, nil},
		{"missing-intermediate", []*x509.Certificate{sw.RootCert(t)}, nil, attestation.ErrEKUntrusted},
		{"other-root", []*x509.Certificate{other.RootCert(t), other.IntermediateCert(t)}, nil, attestation.ErrEKUntrusted},
		{"other-root-own-intermediate", []*x509.Certificate{other.RootCert(t)}, []*x509.Certificate{sw.IntermediateCert(t)}, attestation.ErrEKUntrusted},
		{"intermediate-as-only-trust", []*x509.Certificate{sw.IntermediateCert(t)}, nil, attestation.ErrEKUntrusted},
		{"no-trust", nil, nil, attestation.ErrEKUntrusted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := attestation.NewEKTrust(tc.trust...).VerifyEKCertificate(ek.Certificate, tc.sent, now)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("VerifyEKCertificate = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		err := attestation.NewEKTrust(sw.RootCert(t), sw.IntermediateCert(t)).VerifyEKCertificate(ek.Certificate, nil, ek.Certificate.NotAfter.Add(time.Hour))
		if !errors.Is(err, attestation.ErrEKUntrusted) {
			t.Fatalf("VerifyEKCertificate after NotAfter = %v, want ErrEKUntrusted", err)
		}
	})
	t.Run("san-identity", func(t *testing.T) {
		id, err := attestation.TPMIdentityFromCertificate(ek.Certificate)
		if err != nil || id.Model != "swtpm" {
			t.Fatalf("EK SAN = %+v, %v; want model swtpm", id, err)
		}
	})
}

func TestCredentialActivation(t *testing.T) {
	a := swtpmtest.New(t).Open(t)
	b := swtpmtest.New(t).Open(t)
	ekA, err := a.EK()
	if err != nil {
		t.Fatal(err)
	}
	akA, err := a.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	akB, err := b.NewAK()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("same-tpm", func(t *testing.T) {
		act, err := attestation.NewActivation(ekA.Public, akA.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.ActivateCredential(akA, act.Challenge)
		if err != nil {
			t.Fatal(err)
		}
		if err := attestation.CheckActivation(act.Secret, got); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ak-from-other-tpm", func(t *testing.T) {
		// The verifier believes akB sits beside ekA. Only a TPM holding ekA
		// could decrypt, and it cannot load akB.
		act, err := attestation.NewActivation(ekA.Public, akB.AttestationParameters())
		if err != nil {
			t.Fatal(err)
		}
		if got, err := b.ActivateCredential(akB, act.Challenge); err == nil {
			if attestation.CheckActivation(act.Secret, got) == nil {
				t.Fatal("TPM B recovered a secret encrypted to TPM A's EK")
			}
		}
		if _, err := a.ActivateCredential(akB, act.Challenge); err == nil {
			t.Fatal("TPM A loaded an AK created by TPM B")
		}
	})
	t.Run("wrong-secret", func(t *testing.T) {
		if err := attestation.CheckActivation([]byte("expected"), []byte("returned")); !errors.Is(err, attestation.ErrActivationFailed) {
			t.Fatalf("CheckActivation = %v", err)
		}
	})
	t.Run("tampered-ak-params", func(t *testing.T) {
		p := akA.AttestationParameters()
		p.CreateSignature = append([]byte(nil), p.CreateSignature...)
		p.CreateSignature[len(p.CreateSignature)-1] ^= 1
		if _, err := attestation.NewActivation(ekA.Public, p); !errors.Is(err, attestation.ErrAttestation) {
			t.Fatalf("NewActivation with a bad creation signature = %v, want ErrAttestation", err)
		}
	})
}

func TestCertifyCarriesQualifyingData(t *testing.T) {
	tp := swtpmtest.New(t).Open(t)
	ak, err := tp.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	q := sha256.Sum256([]byte("qualifying"))
	certInfo, sig, err := tp.Certify(k, ak, q[:])
	if err != nil {
		t.Fatal(err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](certInfo)
	if err != nil {
		t.Fatal(err)
	}
	if string(att.ExtraData.Buffer) != string(q[:]) || att.Type != tpm2.TPMSTAttestCertify {
		t.Fatalf("certInfo type %#x extraData %x, want CERTIFY and %x", att.Type, att.ExtraData.Buffer, q)
	}
	digest := sha256.Sum256(certInfo)
	if !ecdsa.VerifyASN1(ak.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("certify signature does not verify under the AK")
	}
}

// TestCommandsPerSign pins the TPM cost of an assertion: one TPM2_Sign while
// the key stays loaded; with more keys than slots (swtpm keeps one hot key),
// FlushContext + Load + Sign.
func TestCommandsPerSign(t *testing.T) {
	tp := swtpmtest.New(t).Open(t)
	k1, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	sign := func(k *tpm.Key) uint64 {
		before := tp.Commands()
		sig, err := tp.Sign(k, d[:])
		if err != nil {
			t.Fatal(err)
		}
		pub, err := k.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			t.Fatal("signature does not verify")
		}
		return tp.Commands() - before
	}
	if n := sign(k1); n != 1+1 { // cold: Load + Sign
		t.Fatalf("cold sign took %d commands, want 2 (Load, Sign)", n)
	}
	if n := sign(k1); n != 1 {
		t.Fatalf("hot sign took %d commands, want 1 (Sign)", n)
	}
	if n := sign(k2); n != 3 {
		t.Fatalf("sign with a second key took %d commands, want 3 (Flush, Load, Sign) on a 3-slot TPM", n)
	}
	if n := sign(k2); n != 1 {
		t.Fatalf("hot sign took %d commands, want 1", n)
	}
}

func TestKeysSurviveRestart(t *testing.T) {
	sw := swtpmtest.New(t)
	tp, err := tpm.Open(sw.URI())
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tp.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatal(err)
	}
	ekBefore, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	sw.Restart(t)

	tp = sw.Open(t)
	ak2, err := tpm.ParseAK(ak.Blob())
	if err != nil {
		t.Fatal(err)
	}
	sig, err := tp.Sign(k, d[:])
	if err != nil {
		t.Fatalf("sign after restart: %v", err)
	}
	pub, _ := k.PublicKey()
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("signature after restart does not verify")
	}
	if _, _, err := tp.Certify(k, ak2, d[:]); err != nil {
		t.Fatalf("certify with the reloaded AK: %v", err)
	}
	ekAfter, err := tp.EK()
	if err != nil {
		t.Fatal(err)
	}
	if !ekAfter.Public.(interface{ Equal(crypto.PublicKey) bool }).Equal(ekBefore.Public) {
		t.Fatal("EK changed across restart")
	}
}

// TestSignSurvivesRestartBehindCache: a TPM restart drops loaded objects; the
// cached handle goes stale and Sign reloads the key once.
func TestSignSurvivesStaleHandle(t *testing.T) {
	sw := swtpmtest.New(t)
	tp := sw.Open(t)
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatal(err)
	}
	// Another user of the TPM flushes everything (as a TPM reset would).
	hs, err := tp.TransientHandles()
	if err != nil || len(hs) != 1 {
		t.Fatalf("transient handles = %v, %v; want the one cached key", hs, err)
	}
	if err := tp.FlushForTest(hs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatalf("sign with a stale cached handle: %v", err)
	}
}

func TestCloseFlushesEverything(t *testing.T) {
	sw := swtpmtest.New(t)
	tp, err := tpm.Open(sw.URI())
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tp.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, _, err := tp.Certify(k, ak, d[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatal(err)
	}
	if n := tp.LoadedKeys(); n != 1 {
		t.Fatalf("loaded keys = %d, want 1 (the hot key)", n)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	tp = sw.Open(t)
	if n := tp.StaleTransientAtOpen(); n != 0 {
		t.Fatalf("%d transient objects left after Close", n)
	}
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, addr := range []string{"swtpm://", "swtpm://127.0.0.1", "tcp://127.0.0.1:1", "swtpm://127.0.0.1:1/x"} {
		if _, err := tpm.Open(addr); !errors.Is(err, tpm.ErrBadURI) {
			t.Errorf("Open(%q) = %v, want ErrBadURI", addr, err)
		}
	}
	if _, err := tpm.Open("/nonexistent/tpm"); err == nil {
		t.Error("Open of a missing device succeeded")
	}
}

func TestParseAKRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("{}"), []byte(`{"KeyEncoding":2}`), []byte("not json")} {
		if _, err := tpm.ParseAK(b); !errors.Is(err, tpm.ErrBadBlob) {
			t.Errorf("ParseAK(%q) = %v, want ErrBadBlob", b, err)
		}
	}
}

// TestRecoversFromSwtpmRestart: while swtpm is down every call fails with
// ErrUnavailable; once it is back the same TPM object signs again.
func TestRecoversFromSwtpmRestart(t *testing.T) {
	sw := swtpmtest.New(t)
	tp := sw.Open(t)
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := tp.Sign(k, d[:]); err != nil {
		t.Fatal(err)
	}
	if err := sw.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := tp.Sign(k, d[:]); !errors.Is(err, tpm.ErrUnavailable) {
			t.Fatalf("sign while swtpm is down: %v, want ErrUnavailable", err)
		}
	}
	if err := sw.StartOnPort(); err != nil {
		t.Fatal(err)
	}
	sig, err := tp.Sign(k, d[:])
	if err != nil {
		t.Fatalf("sign after swtpm came back: %v", err)
	}
	pub, _ := k.PublicKey()
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatal("signature after recovery does not verify")
	}
}
