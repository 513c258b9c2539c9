package slowtpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// TestSampleQuantiles: the draws have the profile's median and 95th
// percentile (a fixed seed: the test is deterministic), and never exceed
// the cap.
func TestSampleQuantiles(t *testing.T) {
	tests := []struct {
		name string
		l    Latency
	}{
		{"sign", RealTPM().Commands[tpm2.TPMCCSign]},
		{"load", RealTPM().Commands[tpm2.TPMCCLoad]},
		{"other", RealTPM().Other},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			d := make([]time.Duration, 20000)
			for i := range d {
				d[i] = tc.l.sample(r)
			}
			slices.Sort(d)
			p50, p95 := d[len(d)/2], d[len(d)*95/100]
			near := func(got, want time.Duration) bool {
				return got > want*93/100 && got < want*107/100
			}
			if !near(p50, tc.l.P50) || !near(p95, tc.l.P95) {
				t.Errorf("p50 %v p95 %v, want %v %v (±7%%)", p50, p95, tc.l.P50, tc.l.P95)
			}
			if d[len(d)-1] > 3*tc.l.P95 {
				t.Errorf("max %v beyond the cap %v", d[len(d)-1], 3*tc.l.P95)
			}
		})
	}
}

func TestSampleEdges(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name string
		l    Latency
		want time.Duration
	}{
		{"zero", Latency{}, 0},
		{"fixed", Latency{P50: 30 * time.Millisecond}, 30 * time.Millisecond},
		{"p95-below-p50", Latency{P50: 30 * time.Millisecond, P95: time.Millisecond}, 30 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.l.sample(r); got != tc.want {
				t.Fatalf("sample = %v, want %v", got, tc.want)
			}
		})
	}
}

func header(size uint32) []byte {
	b := make([]byte, headerSize)
	binary.BigEndian.PutUint16(b, 0x8001)
	binary.BigEndian.PutUint32(b[2:], size)
	binary.BigEndian.PutUint32(b[6:], uint32(tpm2.TPMCCSign))
	return b
}

func TestReadMessage(t *testing.T) {
	whole := append(header(14), 1, 2, 3, 4)
	for _, tc := range []struct {
		name string
		r    io.Reader
		want []byte
		err  error
	}{
		{"whole", bytes.NewReader(whole), whole, nil},
		{"one-byte-reads", iotest.OneByteReader(bytes.NewReader(whole)), whole, nil},
		{"size-below-header", bytes.NewReader(header(9)), nil, errBadSize},
		{"size-too-large", bytes.NewReader(header(maxMessage + 1)), nil, errBadSize},
		{"short-body", bytes.NewReader(whole[:12]), nil, io.ErrUnexpectedEOF},
		{"short-header", bytes.NewReader(whole[:4]), nil, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readMessage(tc.r)
			if !errors.Is(err, tc.err) || !bytes.Equal(got, tc.want) {
				t.Fatalf("readMessage = %x, %v; want %x, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// TestProxyHoldsEachSign runs real TPM2_Sign commands through the proxy to
// swtpm: each is answered by swtpm (a valid signature), counted under its
// command code, and held at least as long as its draw, which replaying the
// seed predicts. Commands sent while fast draw nothing.
func TestProxyHoldsEachSign(t *testing.T) {
	sw := swtpmtest.New(t)
	const seed = 42
	signLat := Latency{P50: 20 * time.Millisecond, P95: 60 * time.Millisecond}
	prof := Profile{Commands: map[tpm2.TPMCC]Latency{tpm2.TPMCCSign: signLat}}
	p, err := Start("127.0.0.1:"+strconv.Itoa(sw.Port), prof, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	p.SetSlow(false)
	tp, err := tpm.Open(p.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	k, err := tp.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	p.SetSlow(true)
	const n = 5
	digest := sha256.Sum256([]byte("slow"))
	for range n {
		sig, err := tp.Sign(k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("the signature through the proxy does not verify")
		}
	}
	replay := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var want time.Duration
	for range n {
		want += signLat.sample(replay)
	}
	st := p.Stats()
	if st[tpm2.TPMCCSign].Count != n {
		t.Fatalf("stats %+v: want %d signs", st, n)
	}
	if st[tpm2.TPMCCSign].Held < want {
		t.Fatalf("signs held %v in all, less than their draws %v", st[tpm2.TPMCCSign].Held, want)
	}
	if _, ok := st[tpm2.TPMCCCreate]; ok {
		t.Fatal("a command sent while fast was counted")
	}
}
