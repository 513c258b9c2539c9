package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// TestObservabilityKit: the Prometheus rules pass promtool, and every
// series the rules and the Grafana dashboard name is one a running verifier
// or agent exports (after a host enrolled and a workload connected).
func TestObservabilityKit(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatal("promtool is needed: apt-get install -y prometheus")
	case err != nil:
		t.Skip("promtool not installed (apt-get install -y prometheus)")
	}
	const rules, dashboard = "../deploy/prometheus/tpmauthn-rules.yml", "../deploy/grafana/tpmauthn-dashboard.json"
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	used := seriesUsed(t, rules, dashboard)

	agentMetrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.MetricsListen = "127.0.0.1:0" })
	h := f.NewHost(t, func(c *agent.Config) { c.MetricsListen = agentMetrics })
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	exported := map[string]bool{}
	for _, addr := range []string{f.Verifier.MetricsAddr(), agentMetrics} {
		for _, n := range scrapeNames(t, "http://"+addr+"/metrics") {
			exported[n] = true
		}
	}
	var missing []string
	for _, n := range used {
		base := n
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the rules or the dashboard name series nobody exports: %v", missing)
	}
	t.Logf("%d series used by the rules and the dashboard, all exported", len(used))
}

var seriesName = regexp.MustCompile(`\btpmauthn_[a-z0-9_]+`)

// seriesUsed is every tpmauthn_* name in the rules' and the dashboard's
// expressions.
func seriesUsed(t *testing.T, rules, dashboard string) []string {
	t.Helper()
	var exprs []string
	b, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			exprs = append(exprs, rule.Expr)
		}
	}
	b, err = os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	var names []string
	for _, e := range exprs {
		names = append(names, seriesName.FindAllString(e, -1)...)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) < 10 {
		t.Fatalf("only %d series found in the rules and the dashboard: %v", len(names), names)
	}
	return names
}

// scrapeNames is every metric family a /metrics page declares.
func scrapeNames(t *testing.T, url string) []string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			out = append(out, f[2])
		}
	}
	return out
}
