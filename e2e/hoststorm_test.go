package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/slowtpm"
)

// hostStorm is what one host went through when its NATS server restarted
// and every workload connection of the host reconnected at once, on a TPM
// with a real TPM's latency (internal/slowtpm).
type hostStorm struct {
	Connections int
	InitialS    float64 // all connecting at once at the start, until the last is up
	InitialLate float64 // the agent's late jobs until then (enrollment included)
	Reconnected int
	// Surfaced counts what the workloads saw go wrong: asynchronous errors
	// and connections closed for good. Reconnect attempts that fail are
	// nats.go's business and are not surfaced.
	Surfaced int
	// WholeS is from the server being back to the last connection
	// re-authorized: the host is whole again.
	WholeS float64
	// Signs is TPM2_Sign commands the TPM ran during the storm; Wasted those
	// beyond the connections they bought (the workloads' and the agent's
	// own session).
	Signs, Wasted int
	TPMBusyS      float64 // the TPM's time on every command during the storm
	// The agent's counters over the storm.
	Late, RefusedDeadline, RefusedWait, RefusedBusy float64
}

// ConnectsPerS is the host's capacity in the storm: connections
// re-authorized per second until it was whole, with one TPM.
func (s *hostStorm) ConnectsPerS() float64 { return float64(s.Reconnected) / s.WholeS }

// stormConns connects n workload connections through h's agent, all at
// once (a host whose workloads start together) with client.Connect, which
// takes turns at the TPM; each counts its reconnects and whatever it is
// told of errors.
type stormConns struct {
	conns       []*nats.Conn
	reconnected chan time.Time
	surfaced    atomic.Int64
}

func connectWorkloads(t testing.TB, h *fleettest.Host, n int) *stormConns {
	t.Helper()
	s := &stormConns{reconnected: make(chan time.Time, n*4)}
	handlers := []nats.Option{
		nats.ReconnectHandler(func(*nats.Conn) { s.reconnected <- time.Now() }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			s.surfaced.Add(1)
			t.Logf("error surfaced to a workload: %v", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if nc.LastError() != nil {
				s.surfaced.Add(1)
				t.Logf("workload connection closed: %v", nc.LastError())
			}
		}),
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range n {
		wg.Go(func() {
			nc, err := client.Connect(ctx, h.Socket, h.Config.NATSURL, handlers...)
			if err != nil {
				t.Errorf("initial connect: %v", err)
				return
			}
			mu.Lock()
			s.conns = append(s.conns, nc)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, nc := range s.conns {
			nc.SetClosedHandler(nil)
			nc.Close()
		}
	})
	if len(s.conns) != n {
		t.Fatalf("%d of %d workload connections up before the storm", len(s.conns), n)
	}
	return s
}

// runHostStorm runs one host with n workload connections on a slow TPM
// (draws from seed), restarts the fleet's NATS server on the same port and
// waits (up to wait) until every connection is re-authorized.
func runHostStorm(t testing.TB, n int, seed uint64, wait time.Duration) *hostStorm {
	t.Helper()
	port := freePort(t)
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.NATSListen = fmt.Sprintf("127.0.0.1:%d", port) })
	p := fleettest.SlowTPM(t, f.TPM, seed)
	p.SetSlow(true) // the agent's whole life, enrollment included, on a slow TPM
	h := f.NewHost(t, fleettest.TPMAt(p.URI()), func(c *agent.Config) { c.MetricsListen = "127.0.0.1:0" })
	start := time.Now()
	conns := connectWorkloads(t, h, n)
	initial := time.Since(start)
	before := scrapeAgent(t, h.Agent.MetricsAddr())
	initialLate := before["tpmauthn_agent_tpm_late_total"]
	signsBefore, busyBefore := tpmStats(p)

	f.Verifier.Close()
	f.Start(t)
	up := time.Now()
	res := &hostStorm{Connections: n, InitialS: initial.Seconds(), InitialLate: initialLate}
	deadline := time.After(wait)
	var last time.Time
	for res.Reconnected < n {
		select {
		case at := <-conns.reconnected:
			res.Reconnected++
			last = at
		case <-deadline:
			t.Errorf("%d of %d connections re-authorized %v after the restart", res.Reconnected, n, wait)
			last = time.Now()
			n = res.Reconnected // stop waiting
		}
	}
	res.WholeS = last.Sub(up).Seconds()
	res.Surfaced = int(conns.surfaced.Load())
	signs, busy := tpmStats(p)
	res.Signs, res.TPMBusyS = signs-signsBefore, (busy - busyBefore).Seconds()
	res.Wasted = max(0, res.Signs-res.Reconnected-1) // one for the agent's own session
	after := scrapeAgent(t, h.Agent.MetricsAddr())
	delta := func(k string) float64 { return after[k] - before[k] }
	res.Late = delta("tpmauthn_agent_tpm_late_total")
	res.RefusedDeadline = delta(`tpmauthn_agent_tpm_refused_total{reason="deadline"}`)
	res.RefusedWait = delta(`tpmauthn_agent_tpm_refused_total{reason="expected_wait"}`)
	res.RefusedBusy = delta(`tpmauthn_agent_tpm_refused_total{reason="busy"}`)
	return res
}

func tpmStats(p *slowtpm.Proxy) (signs int, busy time.Duration) {
	for cc, s := range p.Stats() {
		busy += s.Held
		if cc == tpm2.TPMCCSign {
			signs = s.Count
		}
	}
	return signs, busy
}

// scrapeAgent reads the agent's /metrics: each sample by its name and
// labels as the text format writes them.
func scrapeAgent(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *hostStorm) String() string {
	return fmt.Sprintf("first connects %.2f s (%.0f late); %d/%d re-authorized in %.2f s after the restart (%.2f connects/s, one TPM); %d errors surfaced; "+
		"%d TPM2_Sign (%d wasted), TPM busy %.1f s (%.0f%%); agent: %.0f late, refused %.0f expected-wait, %.0f deadline, %.0f busy",
		s.InitialS, s.InitialLate, s.Reconnected, s.Connections, s.WholeS, s.ConnectsPerS(), s.Surfaced, s.Signs, s.Wasted, s.TPMBusyS, 100*s.TPMBusyS/s.WholeS,
		s.Late, s.RefusedWait, s.RefusedDeadline, s.RefusedBusy)
}

// TestHostStorm: 50 workload connections of one host connect at once, then
// reconnect at once after the NATS server restarts, on a TPM with a real
// TPM's latency (TPM2_Sign ~200 ms median, ~600 ms p95). All come back, no workload is
// told of an error, and the TPM signs nothing for a request already past
// its deadline.
func TestHostStorm(t *testing.T) {
	s := runHostStorm(t, 50, 1, 3*time.Minute)
	t.Log(s)
	if s.Reconnected != s.Connections {
		t.Errorf("%d of %d connections came back", s.Reconnected, s.Connections)
	}
	if s.Surfaced != 0 {
		t.Errorf("%d errors surfaced to the workloads", s.Surfaced)
	}
	if s.Late != 0 || s.InitialLate != 0 {
		t.Errorf("the TPM finished %v jobs after their request's deadline in the storm, %v before", s.Late, s.InitialLate)
	}
}

// BenchmarkHostStorm is TestHostStorm's storm as a measurement, with
// BENCH_HOST_STORM connections (50); it leaves e2e-hoststorm.json for
// tpmauthn-bench.
func BenchmarkHostStorm(b *testing.B) {
	n := 50
	if v, err := strconv.Atoi(os.Getenv("BENCH_HOST_STORM")); err == nil && v > 0 {
		n = v
	}
	s := runHostStorm(b, n, 1, 3*time.Minute)
	b.Log(s)
	b.ReportMetric(s.WholeS, "whole-s")
	b.ReportMetric(s.ConnectsPerS(), "connects/s")
	b.ReportMetric(s.Late, "late-signs")
	writeBenchResult(b, "hoststorm", map[string]float64{
		"connections": float64(s.Connections), "initial_s": s.InitialS, "initial_late_signs": s.InitialLate, "reconnected": float64(s.Reconnected), "whole_s": s.WholeS,
		"connects_per_s": s.ConnectsPerS(), "surfaced_errors": float64(s.Surfaced), "tpm_signs": float64(s.Signs),
		"wasted_signs": float64(s.Wasted), "tpm_busy_s": s.TPMBusyS, "late_signs": s.Late,
		"refused_expected_wait": s.RefusedWait, "refused_deadline": s.RefusedDeadline, "refused_busy": s.RefusedBusy,
	})
}
