// Command tpmauthn-bench measures the NATS connect path: no auth, static
// nkeys, an approve-all auth callout (synadia-io/callout.go) and the
// tpmauthn verifier, alternated in one run, and prints a table (also written
// as Markdown and JSON) ending in key=value summary lines. BENCH_QUICK=1
// runs everything small.
package main

import (
	"fmt"
	"os"

	"github.com/tpmauthn/tpmauthn/bench"
)

func main() {
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
	r, err := bench.Run(cfg)
	if err == nil {
		err = r.Write(os.Stdout, out)
	}
	_ = os.RemoveAll(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthn-bench:", err)
		os.Exit(1)
	}
}
