package verifier_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// BenchmarkEnrollment enrolls a host end to end (agent on swtpm, embedded
// NATS, verifier) and reports the verifier's own share, read from its
// request-duration histograms.
func BenchmarkEnrollment(b *testing.B) {
	f := fleettest.New(b, func(f *fleettest.Fleet) { f.Config.MetricsListen = "127.0.0.1:0" })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sw := f.TPM // one enrollment per TPM: the EK binds it
		if i > 0 {
			sw = swtpmtest.New(b, swtpmtest.SameManufacturer(f.TPM))
		}
		token := f.Token(b, time.Hour, "x")
		a := fleettest.Authenticator(b, sw)
		if _, err := a.AK(); err != nil { // the agent makes its AK once, before enrolling
			b.Fatal(err)
		}
		nc, err := f.EnrollSession(token)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		_, err = a.Enroll(context.Background(), nc, token, "bench")
		b.StopTimer()
		nc.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	sums := scrape(b, "http://"+f.Verifier.MetricsAddr()+"/metrics")
	verifierSecs := sums["tpmauthn.v1.enroll.begin"] + sums["tpmauthn.v1.enroll.finish"]
	b.ReportMetric(verifierSecs*1000/float64(b.N), "verifier-ms/op")
}

// scrape returns request-duration sums by endpoint.
func scrape(b *testing.B, url string) map[string]float64 {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 1<<20))
	for sc.Scan() {
		line := sc.Text()
		const p = `tpmauthn_request_duration_seconds_sum{endpoint="`
		if !strings.HasPrefix(line, p) {
			continue
		}
		rest := strings.TrimPrefix(line, p)
		i := strings.Index(rest, `"}`)
		f, _ := strconv.ParseFloat(strings.TrimSpace(rest[i+2:]), 64)
		out[rest[:i]] = f
	}
	return out
}
