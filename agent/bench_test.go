package agent_test

import (
	"crypto/sha256"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// BenchmarkAssert measures a whole assertion (counter persisted with fsync,
// encodings, TPM2_Sign) against TPM2_Sign alone, in the same run: the
// difference is what the agent adds on top of the TPM.
func BenchmarkAssert(b *testing.B) {
	sw := swtpmtest.New(b)
	a, err := agent.NewAuthenticator(sw.Open(b), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ca, caKey, err := attestation.NewCA("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	if err := a.EnrollWithCA(ca, caKey); err != nil {
		b.Fatal(err)
	}
	chal := make([]byte, 32)
	_, cred, err := a.Register(agent.RegisterOptions{Name: "bench", RPID: rpID, Origin: origin, Challenge: chal})
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256(chal)
	b.Run("TPMSignOnly", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.TPM().Sign(&cred.Key, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Assert", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Assert(cred.ID, chal); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Register", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := a.Register(agent.RegisterOptions{Name: "bench", RPID: rpID, Origin: origin, Challenge: chal}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
