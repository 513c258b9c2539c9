package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/cliconf"
)

// loadConfig reads the verifier's settings with --config file, as run
// would before it starts anything.
func loadConfig(t *testing.T, file string) (settings, error) {
	t.Helper()
	cmd := newRootCmd()
	if err := cmd.ParseFlags([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	var s settings
	return s, cliconf.Load(cmd, keys, &s)
}

// TestConfigKeyTypo: a misspelled key of the verifier's config file is
// refused with the key it was meant to be; the example config that the
// packages and make install ship has none.
func TestConfigKeyTypo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "verifier.yaml")
	typos := "enrollment:\n  ek_ca_dri: /etc/tpmauthn/ek-ca\nnats:\n  listn: 0.0.0.0:4222\npolicy_file: /etc/tpmauthn/policy.yaml\n"
	if err := os.WriteFile(file, []byte(typos), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(t, file)
	if !errors.Is(err, cliconf.ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	for _, want := range []string{"unknown key enrollment.ek_ca_dri; did you mean enrollment.ek_ca_dir?",
		"unknown key nats.listn; did you mean nats.listen?", "unknown key policy_file (valid keys here: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to say %q", err, want)
		}
	}
	s, err := loadConfig(t, "../../packaging/verifier.yaml")
	if err != nil || s.Enrollment.EKCADir == "" || s.Policy.File == "" {
		t.Fatalf("packaging/verifier.yaml: %+v, %v", s, err)
	}
}
