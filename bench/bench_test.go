package bench

import (
	"bytes"
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
	if len(r.Storms) != 1 || r.Storms[0].Failures != 0 {
		t.Errorf("storm: %+v", r.Storms)
	}
	if !strings.Contains(out.String(), "ratio_vs_noop_callout=") || !strings.Contains(out.String(), "storm_200_s=") {
		t.Fatal("no summary line")
	}
}
