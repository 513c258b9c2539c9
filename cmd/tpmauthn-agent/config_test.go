package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/cliconf"
)

// loadRun reads the run command's settings with --config file, as run
// would before it starts anything.
func loadRun(t *testing.T, file string) (runSettings, error) {
	t.Helper()
	cmd := newRunCmd()
	if err := cmd.ParseFlags([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	var s runSettings
	return s, cliconf.Load(cmd, runKeys, &s)
}

// TestConfigKeyTypo: a misspelled key of the agent's config file is
// refused with the key it was meant to be, a workload's selector included;
// the shipped example has none.
func TestConfigKeyTypo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	typos := "nats_ulr: tls://nats.example.com:4222\nworkloads:\n  - name: billing\n    match: {systemd_unti: billing.service}\n"
	if err := os.WriteFile(file, []byte(typos), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadRun(t, file)
	if !errors.Is(err, cliconf.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	for _, want := range []string{"unknown key nats_ulr; did you mean nats_url?",
		"unknown key workloads[0].match.systemd_unti; did you mean workloads[0].match.systemd_unit?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %q", err, want)
		}
	}
	example, err := os.ReadFile("../../systemd/agent.yaml.example")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, example, 0o600); err != nil { // viper reads by the extension
		t.Fatal(err)
	}
	s, err := loadRun(t, file)
	if err != nil || len(s.Workloads) == 0 {
		t.Fatalf("systemd/agent.yaml.example: %+v, %v", s, err)
	}
}
