package httpapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

func hello(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "too big", http.StatusRequestEntityTooLarge)
		return
	}
	_, _ = w.Write(b)
}

func TestCleartextOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		err    error
	}{
		{"0.0.0.0:0", ErrCleartext}, {"192.0.2.1:0", ErrCleartext}, {"[::]:0", ErrCleartext},
		{"127.0.0.1:0", nil}, {"[::1]:0", nil}, {"localhost:0", nil},
	} {
		t.Run(strings.NewReplacer(":", "_", "[", "", "]", "").Replace(tc.listen), func(t *testing.T) {
			s, err := Listen(Config{Listen: tc.listen})
			if s != nil {
				s.Close()
			}
			if tc.err == nil && err != nil && strings.Contains(err.Error(), "cannot assign") {
				t.Skip(err) // no IPv6 loopback here
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("Listen(%s) = %v, want %v", tc.listen, err, tc.err)
			}
		})
	}
}

func TestTLSFromNATSCA(t *testing.T) {
	dir := t.TempDir()
	k, _, err := keys.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := keys.HTTPServerCert(dir, k, []string{"127.0.0.1", "localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Listen(Config{Listen: "0.0.0.0:0", TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	s.Serve(http.HandlerFunc(hello))
	t.Cleanup(s.Close)
	if !strings.HasPrefix(s.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %s", s.URL())
	}
	pool := x509.NewCertPool()
	pool.AddCert(k.NATSCA)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post(s.URL(), "text/plain", strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for h, want := range map[string]string{"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
		"Cache-Control": "no-store", "Strict-Transport-Security": "max-age=31536000"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Errorf("CSP %q", resp.Header.Get("Content-Security-Policy"))
	}
	// A client that does not know the CA is refused the handshake.
	if _, err := http.Get(s.URL()); err == nil {
		t.Fatal("a client without the CA got through")
	}
}

func TestBoundsAndRate(t *testing.T) {
	s, err := Listen(Config{Listen: "127.0.0.1:0", RatePerSecond: 1, Burst: 3})
	if err != nil {
		t.Fatal(err)
	}
	s.Serve(http.HandlerFunc(hello))
	t.Cleanup(s.Close)
	resp, err := http.Post(s.URL(), "text/plain", strings.NewReader(strings.Repeat("x", maxBody+1)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %s", resp.Status)
	}
	codes := []int{}
	for range 4 {
		resp, err := http.Get(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if codes[len(codes)-1] != http.StatusTooManyRequests {
		t.Fatalf("statuses %v: the burst of 3 was not enforced", codes)
	}
}

// M3: an IPv6 host holds a /64, so the rate is per /64; IPv4 (and IPv4
// mapped in IPv6) per address.
func TestRateKeyIPv6Per64(t *testing.T) {
	l := newLimiter(1, 2)
	for _, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"} {
		l.allow(limitKey(a)) // the burst of 2, spent by two addresses
	}
	if l.allow(limitKey("2001:db8:1:2:abcd::1")) {
		t.Fatal("a third address of the same /64 got its own burst")
	}
	if !l.allow(limitKey("2001:db8:1:3::1")) {
		t.Fatal("another /64 shares the bucket")
	}
	if limitKey("::ffff:10.0.0.1") != "10.0.0.1" || limitKey("10.0.0.1") == limitKey("10.0.0.2") {
		t.Fatal("IPv4 keys")
	}
}

// M3: the limiter's map is bounded: beyond it, new clients share a bucket.
func TestRateMapBounded(t *testing.T) {
	l := newLimiter(1, 1)
	l.max = 3
	for i := range 10 {
		l.allow(fmt.Sprintf("10.0.0.%d", i))
	}
	if len(l.m) > 4 { // 3 clients and the shared overflow bucket
		t.Fatalf("%d entries, want at most 4", len(l.m))
	}
}
