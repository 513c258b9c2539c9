// Command tpmauthn-bench measures the NATS connect path: no auth, static
// nkeys, an approve-all auth callout (synadia-io/callout.go) and the
// tpmauthn verifier, alternated in one run, and prints a table (also written
// as Markdown and JSON) ending in key=value summary lines. BENCH_QUICK=1
// runs everything small.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tpmauthn/tpmauthn/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == bench.VerifierChildArg {
		if err := bench.VerifierChildMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "tpmauthn-bench verifier-child:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == bench.StormServerArg {
		if err := bench.StormServerMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "tpmauthn-bench storm-server:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == bench.StormClientsArg {
		if err := bench.StormClientsMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "tpmauthn-bench storm-clients:", err)
			os.Exit(1)
		}
		return
	}
	dir, err := os.MkdirTemp("", "tpmauthn-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthn-bench:", err)
		os.Exit(1)
	}
	out := "."
	if len(os.Args) > 1 {
		out = os.Args[1]
	}
	cfg := bench.FullConfig(dir, os.Stdout)
	if os.Getenv("BENCH_QUICK") == "1" {
		cfg = bench.QuickConfig(dir, os.Stdout)
	}
	if n, err := strconv.Atoi(os.Getenv("BENCH_CONNECTS")); err == nil && n > 0 {
		cfg.Connects = n // per scenario, concurrency and repetition
	}
	if os.Getenv("BENCH_ONLY_CONNECT") == "1" { // the connect table alone
		cfg.Storms, cfg.BusyStorms, cfg.ClusterStorms, cfg.Scales = nil, nil, nil, nil
	}
	if s := os.Getenv("BENCH_CONCURRENCY"); s != "" { // e.g. 256 or 1,16
		cfg.Concurrency = nil
		for _, f := range strings.Split(s, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				cfg.Concurrency = append(cfg.Concurrency, n)
			}
		}
	}
	if s, ok := os.LookupEnv("BENCH_STORMS"); ok { // e.g. 10000 or 1000,5000; empty: none
		cfg.Storms = sizes(s)
	}
	if s, ok := os.LookupEnv("BENCH_BUSY_STORMS"); ok { // the same with a busy core
		cfg.BusyStorms = sizes(s)
	}
	if s, ok := os.LookupEnv("BENCH_CLUSTER_STORMS"); ok { // the same on two servers
		cfg.ClusterStorms = sizes(s)
	}
	if s := os.Getenv("BENCH_ONLY_SCALE"); s != "" { // e.g. 100000: just that scale run
		n, err := strconv.Atoi(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tpmauthn-bench: BENCH_ONLY_SCALE:", err)
			os.Exit(2)
		}
		r, err := bench.Scale(dir, n)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tpmauthn-bench:", err)
			os.Exit(1)
		}
		fmt.Printf("scale: %+v\n", *r)
		_ = os.RemoveAll(dir)
		return
	}
	if s := os.Getenv("BENCH_ONLY_STORM"); s != "" { // e.g. 10000, or 5000,10000: just those storms
		for i, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				fmt.Fprintln(os.Stderr, "tpmauthn-bench: BENCH_ONLY_STORM:", err)
				os.Exit(2)
			}
			do := bench.Storm
			if os.Getenv("BENCH_BUSY") == "1" { // a busy loop pinned to one core
				do = bench.BusyStorm
			}
			if os.Getenv("BENCH_STORM_SERVERS") == "2" { // a cluster of two servers
				do = bench.ClusterStorm
			}
			r, err := do(filepath.Join(dir, strconv.Itoa(i)), n)
			if err != nil {
				fmt.Fprintln(os.Stderr, "tpmauthn-bench:", err)
				os.Exit(1)
			}
			fmt.Printf("storm (busy core %v, servers %d): %d clients, connected in %.2f s, all re-authorized %.2f s after the restart (%.0f callouts/s), %d failures\nanswered/s %v\nshed/s %v\nstorm_%d_s=%.3f\n",
				r.Busy, max(r.Servers, 1), r.Clients, r.ConnectS, r.ReauthS, r.CalloutsPerS, r.Failures, r.Answered, r.Shed, r.Clients, r.ReauthS)
		}
		_ = os.RemoveAll(dir)
		return
	}
	r, err := bench.Run(cfg)
	if err == nil {
		err = r.MergeE2E(out)
	}
	if err == nil {
		err = r.Write(os.Stdout, out)
	}
	_ = os.RemoveAll(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthn-bench:", err)
		os.Exit(1)
	}
}

// sizes parses a comma-separated list of positive sizes.
func sizes(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			out = append(out, n)
		}
	}
	return out
}
