package tpm_test

import (
	"crypto/sha256"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// Benchmarks time each TPM operation on swtpm (make bench). Absolute numbers
// are swtpm's; a real TPM is 10-100x slower. Ratios are what carry over.

func BenchmarkTPM(b *testing.B) {
	tp := swtpmtest.New(b).Open(b)
	ak, err := tp.NewAK()
	if err != nil {
		b.Fatal(err)
	}
	k1, err := tp.CreateKey()
	if err != nil {
		b.Fatal(err)
	}
	k2, err := tp.CreateKey()
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	b.Run("CreateKey", func(b *testing.B) {
		for b.Loop() {
			if _, err := tp.CreateKey(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Certify", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := tp.Certify(k1, ak, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SignHot", func(b *testing.B) {
		start := tp.Commands()
		for b.Loop() {
			if _, err := tp.Sign(k1, d[:]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(tp.Commands()-start)/float64(b.N), "cmds/op")
	})
	b.Run("SignAlternating2Keys", func(b *testing.B) {
		start := tp.Commands()
		i := 0
		for b.Loop() {
			k := k1
			if i%2 == 1 {
				k = k2
			}
			i++
			if _, err := tp.Sign(k, d[:]); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(tp.Commands()-start)/float64(b.N), "cmds/op")
	})
}
