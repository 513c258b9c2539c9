package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/google/pprof/profile"
)

// The server, the responder and the clients of a scenario share this
// process, so its CPU time is split between them with goroutine labels: each
// part is started under a "part" label, goroutines inherit the label of the
// goroutine that starts them, and a CPU profile taken during the measurement
// attributes every sample. Unlabelled samples (GC workers, timers) are
// "other".

// Parts of a scenario, as labelled.
const (
	partServer    = "server"
	partResponder = "responder"
	partClients   = "clients"
	partOther     = "other"
)

// inPart runs f, and every goroutine f starts, under the part's label.
func inPart(part string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("part", part), func(context.Context) { f() })
}

// cpuSplit profiles the process until stop is called, then returns each
// part's share of the sampled CPU time (shares sum to 1). With
// BENCH_PROFILE_DIR set the profile is also kept there as name.pprof.
func cpuSplit(name string) (stop func() (map[string]float64, error), err error) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() (map[string]float64, error) {
		pprof.StopCPUProfile()
		if dir := os.Getenv("BENCH_PROFILE_DIR"); dir != "" {
			if err := os.WriteFile(filepath.Join(dir, name+".pprof"), buf.Bytes(), 0o644); err != nil {
				return nil, err
			}
			if f, err := os.Create(filepath.Join(dir, "allocs.pprof")); err == nil { // cumulative, the process so far
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				_ = f.Close()
			}
		}
		p, err := profile.Parse(&buf)
		if err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		return shares(p), nil
	}, nil
}

func shares(p *profile.Profile) map[string]float64 {
	idx := len(p.SampleType) - 1 // cpu nanoseconds
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			idx = i
		}
	}
	sum := map[string]float64{}
	var total float64
	for _, s := range p.Sample {
		part := partOther
		if l := s.Label["part"]; len(l) > 0 {
			part = l[0]
		}
		v := float64(s.Value[idx])
		sum[part] += v
		total += v
	}
	if total > 0 {
		for k := range sum {
			sum[k] /= total
		}
	}
	return sum
}
