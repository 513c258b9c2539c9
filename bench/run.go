package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// Config sizes a run.
type Config struct {
	Concurrency []int // parallel connecting clients
	Reps        int   // repetitions of the whole alternation
	Connects    int   // connects per scenario, concurrency and repetition
	Storms      []int // reconnect storm sizes
	BusyStorms  []int // reconnect storm sizes with a busy loop on one core
	// ClusterStorms are reconnect storms on two servers (a cluster, each in
	// its own process), whatever the file limit.
	ClusterStorms []int
	Scales        []int // credentials in KV for the memory and start-up runs
	Dir           string
	Out           io.Writer
}

// QuickConfig runs everything small (CI: the harness must not rot).
func QuickConfig(dir string, out io.Writer) Config {
	return Config{Concurrency: []int{1, 16}, Reps: 1, Connects: 40, Storms: []int{200}, BusyStorms: []int{200}, ClusterStorms: []int{200}, Scales: []int{1000}, Dir: dir, Out: out}
}

// FullConfig is the configuration of a report.
func FullConfig(dir string, out io.Writer) Config {
	return Config{Concurrency: []int{1, 16, 64, 256}, Reps: 3, Connects: 1500, Storms: []int{1000, 5000, 10000, 10000, 10000, 20000}, BusyStorms: []int{10000}, ClusterStorms: []int{10000}, Scales: []int{10000, 100000}, Dir: dir, Out: out}
}

// Result is one scenario at one concurrency: medians over repetitions.
type Result struct {
	Scenario     string  `json:"scenario"`
	Concurrency  int     `json:"concurrency"`
	ConnectsPerS float64 `json:"connects_per_s"`
	P50ms        float64 `json:"p50_ms"`
	P99ms        float64 `json:"p99_ms"`
	CPUusPerConn float64 `json:"cpu_us_per_connect"` // whole process: clients, server, responder
	// The process's CPU per connect split by part (goroutine labels).
	CPUServer    float64 `json:"cpu_us_server"`
	CPUResponder float64 `json:"cpu_us_responder"`
	CPUClients   float64 `json:"cpu_us_clients"`
	CPUOther     float64 `json:"cpu_us_other"` // GC workers, timers
	// Heap objects allocated per connect by the whole process (clients,
	// server, responder): against noop-callout's, what a decision adds.
	AllocsPerConn float64 `json:"allocs_per_connect"`
	Failures      int     `json:"failures"`
	RatioVsNoop   float64 `json:"ratio_vs_noop_callout"` // connect rate / noop callout's
	Repetitions   int     `json:"repetitions"`
	ConnectsEach  int     `json:"connects_each"`
	rates, p50s   []float64
	p99s, cpus    []float64
	allocs        []float64
	parts         map[string][]float64
}

// Report is a whole run.
type Report struct {
	Started time.Time      `json:"started"`
	Go      string         `json:"go"`
	Results []*Result      `json:"results"`
	Storms  []*StormResult `json:"storms"`
	Scales  []*ScaleResult `json:"scales"`
	// Through the real agent and swtpm (e2e benchmarks, merged by MergeE2E).
	Chain  map[string]float64 `json:"chain,omitempty"`
	Revoke map[string]float64 `json:"revoke,omitempty"`
	// One host's storm on a slow TPM (BenchmarkHostStorm).
	HostStorm map[string]float64 `json:"host_storm,omitempty"`
	Notes     []string           `json:"notes,omitempty"`
	Summary   map[string]float64 `json:"summary"`
}

// Run measures every scenario, alternating them, and prints the report.
func Run(cfg Config) (*Report, error) {
	raiseFDLimit()
	maxConc := slices.Max(cfg.Concurrency)
	var scen []*scenario
	// The storms and scale runs must not share the CPU with the scenarios'
	// servers and verifier (whose audit backlog still drains): measured,
	// a 10,000-client storm took 18-34 s after them and 11.6 s alone.
	stopScenarios := func() {
		for _, s := range scen {
			s.stop()
		}
		scen = nil
	}
	defer stopScenarios()
	for _, mk := range []func() (*scenario, error){
		noAuth,
		func() (*scenario, error) { return staticNkeys(maxConc) },
		func() (*scenario, error) { return noopCallout(filepath.Join(cfg.Dir, "noop")) },
		func() (*scenario, error) { return tpmauthnScenario(filepath.Join(cfg.Dir, "tpmauthn"), maxConc, true) },
		func() (*scenario, error) {
			return tpmauthnScenario(filepath.Join(cfg.Dir, "tpmauthn-tcp"), maxConc, false)
		},
	} {
		s, err := mk()
		if err != nil {
			return nil, err
		}
		scen = append(scen, s)
	}
	results := map[string]*Result{}
	for rep := range cfg.Reps {
		for _, c := range cfg.Concurrency {
			for _, s := range scen { // A B C D, then again
				fmt.Fprintf(cfg.Out, "rep %d/%d  concurrency %-3d  %-13s ", rep+1, cfg.Reps, c, s.name)
				r, err := measure(s, c, cfg.Connects)
				if err != nil {
					return nil, err
				}
				key := fmt.Sprintf("%s/%d", s.name, c)
				agg := results[key]
				if agg == nil {
					agg = &Result{Scenario: s.name, Concurrency: c, ConnectsEach: cfg.Connects}
					results[key] = agg
				}
				agg.rates, agg.p50s, agg.p99s, agg.cpus = append(agg.rates, r.rate), append(agg.p50s, r.p50), append(agg.p99s, r.p99), append(agg.cpus, r.cpu)
				agg.allocs = append(agg.allocs, r.allocs)
				if agg.parts == nil {
					agg.parts = map[string][]float64{}
				}
				for _, part := range []string{partServer, partResponder, partClients, partOther} {
					agg.parts[part] = append(agg.parts[part], r.cpu*r.shares[part])
				}
				agg.Failures += r.failures
				agg.Repetitions++
				fmt.Fprintf(cfg.Out, "%8.0f connects/s  p50 %6.2f ms  p99 %6.2f ms  failures %d\n", r.rate, r.p50, r.p99, r.failures)
			}
		}
	}
	rep := &Report{Started: time.Now().UTC(), Go: goVersion(), Summary: map[string]float64{}}
	for _, c := range cfg.Concurrency {
		noop := results[fmt.Sprintf("noop-callout/%d", c)]
		for _, s := range scen {
			r := results[fmt.Sprintf("%s/%d", s.name, c)]
			r.ConnectsPerS, r.P50ms, r.P99ms, r.CPUusPerConn = median(r.rates), median(r.p50s), median(r.p99s), median(r.cpus)
			r.CPUServer, r.CPUResponder = median(r.parts[partServer]), median(r.parts[partResponder])
			r.CPUClients, r.CPUOther = median(r.parts[partClients]), median(r.parts[partOther])
			r.AllocsPerConn = median(r.allocs)
			rep.Results = append(rep.Results, r)
		}
		for _, s := range scen {
			r := results[fmt.Sprintf("%s/%d", s.name, c)]
			r.RatioVsNoop = r.ConnectsPerS / median(noop.rates)
		}
	}
	rep.ratioSummary(results, cfg.Concurrency)
	stopScenarios()
	if err := rep.storms(cfg); err != nil {
		return nil, err
	}
	for _, n := range cfg.Scales {
		if err := rep.scale(cfg, n); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// ratioSummary: tpmauthn's rate over the approve-all responder's at each
// concurrency, and the minimum over them (the target holds at every one);
// for the one-command deployment (the verifier reaches its embedded server
// in memory) and for a verifier beside a cluster (over TCP).
func (r *Report) ratioSummary(results map[string]*Result, conc []int) {
	for _, s := range []struct{ scenario, key string }{
		{"tpmauthn", "ratio_vs_noop_callout"},
		{"tpmauthn-tcp", "ratio_tcp_vs_noop_callout"},
	} {
		lowest := math.Inf(1)
		for _, c := range conc {
			ratio := results[fmt.Sprintf("%s/%d", s.scenario, c)].RatioVsNoop
			r.Summary[fmt.Sprintf("%s_c%d", s.key, c)] = ratio
			lowest = min(lowest, ratio)
		}
		r.Summary[s.key+"_min"] = lowest
	}
}

// storms runs the reconnect storms, quiet then with a busy core; a size run
// more than once is summarized by its slowest run.
func (r *Report) storms(cfg Config) error {
	run := func(n int, busy, cluster bool) error {
		name, what, do := fmt.Sprintf("storm-%d", n), "storm", Storm
		switch {
		case busy:
			name, what, do = name+"-busy", "storm_busy", BusyStorm
		case cluster:
			name, what, do = name+"-2servers", "storm_2servers", ClusterStorm
		}
		fmt.Fprintf(cfg.Out, "reconnect %s: %d clients ... ", strings.ReplaceAll(what, "_", " "), n)
		// A server holds a descriptor per client: a storm beyond the file
		// limit runs on two servers, each in its own process (seen: a hard
		// limit of 20,000 without CAP_SYS_RESOURCE to raise it); beyond
		// twice the limit, or without the binary's child processes, it
		// cannot be measured here.
		_, child := benchExe()
		if (cluster || !fitsOneServer(n)) && (!child || !fitsOneServer(n/2+1)) {
			note := fmt.Sprintf("%s of %d clients not run: it needs %d file descriptors in one process, or %d in each of two from the tpmauthn-bench binary; a process may have %d (raise the hard limit: ulimit -Hn, or LimitNOFILE)", what, n, n+2000, n/2+2001, fdLimit())
			if cluster {
				note = fmt.Sprintf("%s of %d clients not run: the second server and the clients run as tpmauthn-bench's child processes", what, n)
			}
			fmt.Fprintln(cfg.Out, "skipped: "+note)
			r.Notes = append(r.Notes, note)
			return nil
		}
		s, err := do(filepath.Join(cfg.Dir, fmt.Sprintf("%s-%d", name, len(r.Storms))), n)
		if err != nil {
			return err
		}
		on := ""
		if s.Servers > 1 {
			on = fmt.Sprintf(" (on %d servers, both restarted)", s.Servers)
		}
		fmt.Fprintf(cfg.Out, "all back %.2f s after the restart%s, %d failures; answered/s %v, shed/s %v\n", s.ReauthS, on, s.Failures, s.Answered, s.Shed)
		r.Storms = append(r.Storms, s)
		if s.Servers > 1 && !cluster { // beyond one process's file limit
			what = strings.Replace(what, "storm", "storm_2servers", 1)
		}
		key := summaryKey(what, n, "s")
		r.Summary[key] = max(r.Summary[key], s.ReauthS)
		return nil
	}
	for _, n := range cfg.Storms {
		if err := run(n, false, false); err != nil {
			return err
		}
	}
	for _, n := range cfg.BusyStorms {
		if err := run(n, true, false); err != nil {
			return err
		}
	}
	for _, n := range cfg.ClusterStorms {
		if err := run(n, false, true); err != nil {
			return err
		}
	}
	return nil
}

type runResult struct {
	rate, p50, p99, cpu float64
	allocs              float64            // heap objects per connect, whole process
	shares              map[string]float64 // of cpu, by part
	failures            int
}

// measure runs n connects (connect, then close) with c workers.
func measure(s *scenario, c, n int) (runResult, error) {
	opts := make([][]nats.Option, c)
	for w := range c {
		o, err := s.options(w)
		if err != nil {
			return runResult{}, err
		}
		opts[w] = append(o, nats.MaxReconnects(0), nats.Timeout(10*time.Second), nats.NoCallbacksAfterClientClose())
	}
	var mu sync.Mutex
	var lat []time.Duration
	var failures int
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	stopProfile, err := cpuSplit(fmt.Sprintf("%s-c%d", s.name, c))
	if err != nil {
		return runResult{}, err
	}
	cpu0, allocs0 := cpuTime(), heapAllocs()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go inPart(partClients, func() {
			defer wg.Done()
			var mine []time.Duration
			fails := 0
			for range next {
				t := time.Now()
				nc, err := nats.Connect(s.url, opts[w]...)
				if err != nil {
					fails++
					continue
				}
				mine = append(mine, time.Since(t))
				nc.Close()
			}
			mu.Lock()
			lat = append(lat, mine...)
			failures += fails
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu, allocs := cpuTime()-cpu0, heapAllocs()-allocs0
	shares, err := stopProfile()
	if err != nil {
		return runResult{}, err
	}
	if len(lat) == 0 {
		return runResult{failures: failures}, fmt.Errorf("%s: every connect failed", s.name)
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return runResult{
		rate: float64(len(lat)) / elapsed.Seconds(), p50: ms(lat[len(lat)/2]), p99: ms(lat[len(lat)*99/100]),
		cpu: float64(cpu.Microseconds()) / float64(len(lat)), shares: shares, failures: failures,
		allocs: float64(allocs) / float64(len(lat)),
	}, nil
}

// heapAllocs is how many heap objects the process has allocated so far
// (runtime/metrics: no stop-the-world, unlike ReadMemStats).
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

func median(x []float64) float64 {
	y := slices.Clone(x)
	sort.Float64s(y)
	if len(y) == 0 {
		return 0
	}
	return y[len(y)/2]
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseFDLimit: every connection needs two descriptors (client and server
// side, in this one process). As root the hard limit can rise too.
func raiseFDLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return
	}
	want := syscall.Rlimit{Cur: 1 << 17, Max: 1 << 17}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return
	}
	l.Cur = l.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
}

func fdLimit() uint64 {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0
	}
	return l.Cur
}

func goVersion() string {
	b, err := os.ReadFile("/proc/version")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Write prints the table, writes Markdown and JSON next to each other and
// ends with the machine-readable summary lines.
func (r *Report) Write(out io.Writer, dir string) error {
	var md strings.Builder
	fmt.Fprintf(&md, "| scenario | concurrency | connects/s | p50 ms | p99 ms | CPU µs/connect | server | responder | clients | other | allocs/connect | failures | vs noop callout |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Results {
		fmt.Fprintf(&md, "| %s | %d | %.0f | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %d | %.2f |\n", x.Scenario, x.Concurrency, x.ConnectsPerS, x.P50ms, x.P99ms,
			x.CPUusPerConn, x.CPUServer, x.CPUResponder, x.CPUClients, x.CPUOther, x.AllocsPerConn, x.Failures, x.RatioVsNoop)
	}
	if len(r.Storms) > 0 {
		fmt.Fprintf(&md, "\n| reconnect storm: clients | servers | busy core | initial connect s | all re-authorized s after restart | callouts/s | failures | answered per second (shed) |\n|---|---|---|---|---|---|---|---|\n")
		for _, s := range r.Storms {
			fmt.Fprintf(&md, "| %d | %d | %v | %.2f | %.2f | %.0f | %d | %s |\n", s.Clients, max(s.Servers, 1), s.Busy, s.ConnectS, s.ReauthS, s.CalloutsPerS, s.Failures, curve(s))
		}
	}
	if len(r.Scales) > 0 {
		fmt.Fprintf(&md, "\n| credentials | hosts | verifier start-up s | RSS after start MB | RSS with all cached MB | Go heap MB | audit backlog | connect each once s | failures |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range r.Scales {
			fmt.Fprintf(&md, "| %d | %d | %.2f | %.0f | %.0f | %.0f | %d | %.1f | %d |\n", x.Credentials, x.Hosts, x.StartS, x.RSSStartMB, x.RSSWarmMB, x.HeapWarmMB, x.AuditBacklog, x.WarmS, x.WarmFailed)
		}
	}
	if r.Chain != nil {
		c := r.Chain
		fmt.Fprintf(&md, "\n| through the agent and swtpm (%.0f connects) | p50 ms | p99 ms |\n|---|---|---|\n", c["connects"])
		fmt.Fprintf(&md, "| TPM2_Sign alone (baseline) | %.2f | %.2f |\n| whole NATS connect | %.2f | %.2f |\n| chain overhead beyond the TPM | %.2f | %.2f |\n| socket overhead beyond the TPM | %.2f | %.2f |\n| verifier decision | %.3f | %.3f |\n",
			c["tpm_sign_p50_ms"], c["tpm_sign_p99_ms"], c["connect_p50_ms"], c["connect_p99_ms"], c["chain_overhead_p50_ms"], c["chain_overhead_p99_ms"],
			c["socket_overhead_p50_ms"], c["socket_overhead_p99_ms"], c["decision_p50_us"]/1000, c["decision_p99_us"]/1000)
		fmt.Fprintf(&md, "\nTPM commands per connect: %.2f (per assertion through the socket: %.2f)\n", c["tpm_commands_per_connect"], c["tpm_commands_per_assertion"])
	}
	if r.Revoke != nil {
		fmt.Fprintf(&md, "\nRevoke → live connection dropped, %.0f revocations: p50 %.2f ms, p99 %.2f ms (after the command's reply: p50 %.2f, p99 %.2f ms)\n",
			r.Revoke["revocations"], r.Revoke["kick_p50_ms"], r.Revoke["kick_p99_ms"], r.Revoke["reply_to_drop_p50_ms"], r.Revoke["reply_to_drop_p99_ms"])
	}
	if h := r.HostStorm; h != nil {
		fmt.Fprintf(&md, "\n| one host's storm, slow TPM (TPM2_Sign p50 200 ms, p95 600 ms) | |\n|---|---|\n")
		fmt.Fprintf(&md, "| first connects, all at once | %.2f s |\n| connections re-authorized | %.0f of %.0f |\n| host whole again after the restart | %.2f s |\n| capacity (one TPM) | %.2f connects/s |\n",
			h["initial_s"], h["reconnected"], h["connections"], h["whole_s"], h["connects_per_s"])
		fmt.Fprintf(&md, "| errors surfaced to workloads | %.0f |\n| TPM2_Sign run / wasted | %.0f / %.0f |\n| signs finished past their deadline | %.0f |\n| TPM busy | %.1f s |\n| refused: expected wait / deadline / busy | %.0f / %.0f / %.0f |\n",
			h["surfaced_errors"], h["tpm_signs"], h["wasted_signs"], h["late_signs"], h["tpm_busy_s"], h["refused_expected_wait"], h["refused_deadline"], h["refused_busy"])
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&md, "\nNote: %s\n", n)
	}
	fmt.Fprint(out, "\n"+md.String())
	mdPath, jsonPath := filepath.Join(dir, "bench.md"), filepath.Join(dir, "bench.json")
	if err := os.WriteFile(mdPath, []byte(md.String()), 0o644); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(jsonPath, js, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nwrote %s and %s\n", mdPath, jsonPath)
	keys := make([]string, 0, len(r.Summary))
	for k := range r.Summary {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(out, "%s=%.3f\n", k, r.Summary[k])
	}
	return nil
}

// scale runs Scale when this is the tpmauthn-bench binary (the verifier
// needs a process of its own), and says so when it is not.
func (r *Report) scale(cfg Config, n int) error {
	if _, ok := benchExe(); !ok {
		r.Notes = append(r.Notes, fmt.Sprintf("scale (%d credentials) not run: it needs the tpmauthn-bench binary", n))
		return nil
	}
	fmt.Fprintf(cfg.Out, "scale: %d credentials ... ", n)
	s, err := Scale(filepath.Join(cfg.Dir, fmt.Sprintf("scale-%d", n)), n)
	if err != nil {
		return err
	}
	fmt.Fprintf(cfg.Out, "start-up %.2f s, RSS %.0f MB, %.0f MB with every credential cached\n", s.StartS, s.RSSStartMB, s.RSSWarmMB)
	r.Scales = append(r.Scales, s)
	r.Summary[summaryKey("rss", n, "mb")] = s.RSSWarmMB
	return nil
}

// summaryKey names a summary line for a size n: rss_100k_mb, storm_10k_s
// (the names issue 7 asks for), storm_200_s.
func summaryKey(what string, n int, unit string) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%s_%dk_%s", what, n/1000, unit)
	}
	return fmt.Sprintf("%s_%d_%s", what, n, unit)
}

// MergeE2E adds the e2e benchmarks' results (e2e-chain.json, e2e-revoke.json,
// e2e-hoststorm.json in dir, written by BenchmarkChain,
// BenchmarkRevokeToDisconnect and BenchmarkHostStorm with BENCH_RESULTS_DIR
// set) to the report and its summary.
func (r *Report) MergeE2E(dir string) error {
	read := func(name string) (map[string]float64, error) {
		b, err := os.ReadFile(filepath.Join(dir, "e2e-"+name+".json"))
		if errors.Is(err, os.ErrNotExist) {
			r.Notes = append(r.Notes, fmt.Sprintf("no e2e %s results in %s: run make bench (it runs the e2e benchmarks first)", name, dir))
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var m map[string]float64
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("e2e-%s.json: %w", name, err)
		}
		return m, nil
	}
	var err error
	if r.Chain, err = read("chain"); err != nil {
		return err
	}
	if r.Revoke, err = read("revoke"); err != nil {
		return err
	}
	if r.HostStorm, err = read("hoststorm"); err != nil {
		return err
	}
	if h := r.HostStorm; h != nil {
		r.Summary["host_storm_whole_s"] = h["whole_s"]
		r.Summary["host_storm_connects_per_s"] = h["connects_per_s"]
		r.Summary["host_storm_surfaced_errors"] = h["surfaced_errors"]
		r.Summary["host_storm_late_signs"] = h["late_signs"]
	}
	if r.Chain != nil {
		r.Summary["chain_overhead_p99_ms"] = r.Chain["chain_overhead_p99_ms"]
		// The chain's own cost against what an approve-all responder's
		// connect costs in this run (one client, as the chain connects).
		for _, x := range r.Results {
			if x.Scenario == "noop-callout" && x.Concurrency == 1 {
				r.Summary["chain_overhead_vs_noop_p99_ms"] = r.Chain["chain_overhead_p99_ms"] - x.P99ms
			}
		}
		r.Summary["tpm_commands_per_connect"] = r.Chain["tpm_commands_per_connect"]
	}
	if r.Revoke != nil {
		r.Summary["kick_p99_ms"] = r.Revoke["kick_p99_ms"]
	}
	return nil
}

// curve is a storm's answered callouts per second, with the shed ones in
// brackets where there were any: "830 812 (40) 790".
func curve(s *StormResult) string {
	var b strings.Builder
	for i, a := range s.Answered {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d", a)
		if i < len(s.Shed) && s.Shed[i] > 0 {
			fmt.Fprintf(&b, " (%d)", s.Shed[i])
		}
	}
	return b.String()
}
