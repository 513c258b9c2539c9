package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuick runs the harness small, as CI does, so it cannot rot. It reports;
// it asserts only that every scenario connected without failure.
func TestQuick(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	r, err := Run(QuickConfig(dir, &out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if err := r.Write(&out, dir); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	for _, x := range r.Results {
		if x.Failures != 0 || x.ConnectsPerS == 0 {
			t.Errorf("%s at %d: %d failures, %.0f connects/s", x.Scenario, x.Concurrency, x.Failures, x.ConnectsPerS)
		}
	}
	if len(r.Storms) != 2 || r.Storms[0].Failures != 0 || r.Storms[1].Failures != 0 || !r.Storms[1].Busy {
		t.Errorf("storms (quiet, busy core): %+v", r.Storms)
	}
	for _, s := range r.Storms {
		var answered uint64
		for _, a := range s.Answered {
			answered += a
		}
		if answered == 0 && s.ReauthS >= 1 {
			t.Errorf("storm of %.1f s with no answered-per-second curve: %+v", s.ReauthS, s)
		}
	}
	for _, line := range []string{"ratio_vs_noop_callout_min=", "ratio_vs_noop_callout_c1=", "ratio_vs_noop_callout_c16=", "ratio_tcp_vs_noop_callout_min=", "storm_200_s=", "storm_busy_200_s="} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("no summary line %s", line)
		}
	}
}

func TestSummaryKey(t *testing.T) {
	for _, tc := range []struct {
		what string
		n    int
		unit string
		want string
	}{
		{"storm", 10000, "s", "storm_10k_s"},
		{"storm", 1000, "s", "storm_1k_s"},
		{"storm", 200, "s", "storm_200_s"},
		{"rss", 100000, "mb", "rss_100k_mb"},
		{"rss", 1500, "mb", "rss_1500_mb"},
	} {
		if got := summaryKey(tc.what, tc.n, tc.unit); got != tc.want {
			t.Errorf("summaryKey(%q, %d, %q) = %q, want %q", tc.what, tc.n, tc.unit, got, tc.want)
		}
	}
}

// TestMergeHostStorm: BenchmarkHostStorm's results reach the report's table
// and summary lines; without them the report says how to get them.
func TestMergeHostStorm(t *testing.T) {
	dir := t.TempDir()
	js := `{"connections": 50, "reconnected": 50, "whole_s": 14.3, "connects_per_s": 3.5, "surfaced_errors": 0, "late_signs": 0, "tpm_signs": 51}`
	if err := os.WriteFile(filepath.Join(dir, "e2e-hoststorm.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Report{Summary: map[string]float64{}}
	if err := r.MergeE2E(dir); err != nil {
		t.Fatal(err)
	}
	if r.Summary["host_storm_whole_s"] != 14.3 || r.Summary["host_storm_connects_per_s"] != 3.5 {
		t.Fatalf("summary %v", r.Summary)
	}
	var out bytes.Buffer
	if err := r.Write(&out, dir); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one host's storm", "| capacity (one TPM) | 3.50 connects/s |", "host_storm_late_signs=0.000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	empty := &Report{Summary: map[string]float64{}}
	if err := empty.MergeE2E(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if empty.HostStorm != nil || !strings.Contains(strings.Join(empty.Notes, "\n"), "no e2e hoststorm results") {
		t.Fatalf("without results: %v %v", empty.HostStorm, empty.Notes)
	}
}
