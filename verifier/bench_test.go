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

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
)

// BenchmarkEnrollment enrolls a host end to end (agent on swtpm, embedded
// NATS, verifier) and reports the verifier's own share, read from its
// request-duration histograms.
func BenchmarkEnrollment(b *testing.B) {
	dir := b.TempDir()
	var v *verifier.Verifier
	var op *nats.Conn
	var first *swtpmtest.TPM
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		var sw *swtpmtest.TPM // one enrollment per TPM: the EK binds it
		if first == nil {
			sw = swtpmtest.New(b)
			first = sw
		} else {
			sw = swtpmtest.New(b, swtpmtest.SameManufacturer(first))
		}
		if v == nil {
			cfg := verifier.Config{DataDir: dir, NATSListen: "127.0.0.1:-1", EKCADir: ekCADir(b, sw), RPID: "fleet.example.com", MetricsListen: "127.0.0.1:0"}
			var err error
			if v, err = verifier.New(cfg); err != nil {
				b.Fatal(err)
			}
			if err := v.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			op = operatorConn(b, dir, v.ClientURL())
		}
		var r api.TokenCreateResponse
		admin(b, op, "token.create", api.TokenCreateRequest{Roles: []string{"x"}, TTL: time.Hour}, &r)
		a, err := agent.NewAuthenticator(sw.Open(b), b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.AK(); err != nil { // the agent makes its AK once, before enrolling
			b.Fatal(err)
		}
		nc, err := nats.Connect(v.ClientURL(), nats.Token(r.Token))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		_, err = a.Enroll(context.Background(), nc, r.Token, "bench")
		b.StopTimer()
		nc.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	sums := scrape(b, "http://"+v.MetricsAddr()+"/metrics")
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
