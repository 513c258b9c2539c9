package cliconf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

type testSettings struct {
	DataDir    string `mapstructure:"data_dir"`
	Enrollment struct {
		EKCADir  string        `mapstructure:"ek_ca_dir"`
		Validity time.Duration `mapstructure:"validity"`
	} `mapstructure:"enrollment"`
}

var testKeys = []Key{
	K("data_dir", "data-dir", "/default", "data"),
	K("enrollment.ek_ca_dir", "ek-ca-dir", "", "ek"),
	K("enrollment.validity", "validity", time.Hour, "validity"),
}

func parse(t *testing.T, args ...string) (testSettings, error) {
	t.Helper()
	var s testSettings
	cmd := &cobra.Command{Use: "x", RunE: func(cmd *cobra.Command, _ []string) error { return Load(cmd, testKeys, &s) }}
	Define(cmd, testKeys)
	cmd.SetArgs(args)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err := cmd.Execute()
	return s, err
}

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("data_dir: /from-file\nenrollment:\n  ek_ca_dir: /file-ek\n  validity: 2h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := parse(t, "--config", file)
	if err != nil || s.DataDir != "/from-file" || s.Enrollment.EKCADir != "/file-ek" || s.Enrollment.Validity != 2*time.Hour {
		t.Fatalf("file only: %+v, %v", s, err)
	}
	t.Setenv("TPMAUTHN_ENROLLMENT_EK_CA_DIR", "/env-ek")
	t.Setenv("TPMAUTHN_DATA_DIR", "/from-env")
	s, err = parse(t, "--config", file, "--data-dir", "/from-flag")
	if err != nil || s.DataDir != "/from-flag" || s.Enrollment.EKCADir != "/env-ek" {
		t.Fatalf("flag > env > file: %+v, %v", s, err)
	}
	s, err = parse(t)
	if err != nil || s.DataDir != "/from-env" || s.Enrollment.Validity != time.Hour {
		t.Fatalf("env > default: %+v, %v", s, err)
	}
}

func TestUnknownKeyInFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("data_dri: /typo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parse(t, "--config", file); err == nil || !strings.Contains(err.Error(), "data_dri") {
		t.Fatalf("a misspelled key: %v", err)
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("enrollment.ek_ca_dir"); got != "TPMAUTHN_ENROLLMENT_EK_CA_DIR" {
		t.Fatal(got)
	}
}

// TestUnknownKeyNamesNearest: every unknown key of a config file is named,
// where it is, with the valid key nearest to it, or the valid keys there
// when none is near.
func TestUnknownKeyNamesNearest(t *testing.T) {
	type selector struct {
		UID         *uint32 `mapstructure:"uid"`
		SystemdUnit string  `mapstructure:"systemd_unit"`
	}
	type workload struct {
		Name  string   `mapstructure:"name"`
		Match selector `mapstructure:"match"`
	}
	type settings struct {
		testSettings `mapstructure:",squash"`
		Workloads    []workload `mapstructure:"workloads"`
	}
	tests := []struct {
		name, file string
		want       []string
	}{
		{"swapped-letters", "data_dri: /x\n", []string{"unknown key data_dri; did you mean data_dir?"}},
		{"nested", "enrollment:\n  ek_ca_dirs: /x\n", []string{"unknown key enrollment.ek_ca_dirs; did you mean enrollment.ek_ca_dir?"}},
		{"in-a-list", "workloads:\n  - name: a\n    match: {uid: 1}\n  - name: b\n    match: {systemd-unit: b.service}\n",
			[]string{"unknown key workloads[1].match.systemd-unit; did you mean workloads[1].match.systemd_unit?"}},
		{"far", "enrollment:\n  frobnicate: 1\n", []string{"unknown key enrollment.frobnicate (valid keys here: ek_ca_dir, validity)"}},
		{"all-at-once", "datadir: /x\nworkload: []\n", []string{"datadir; did you mean data_dir?", "workload; did you mean workloads?"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var s settings
			cmd := &cobra.Command{Use: "x", RunE: func(cmd *cobra.Command, _ []string) error { return Load(cmd, testKeys, &s) }}
			Define(cmd, testKeys)
			cmd.SetArgs([]string{"--config", file})
			cmd.SilenceErrors, cmd.SilenceUsage = true, true
			err := cmd.Execute()
			if !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("err = %v, want ErrUnknownKey", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to say %q", err, w)
				}
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"data_dir", "data_dir", 0}, {"data_dri", "data_dir", 1}, {"datadir", "data_dir", 1}, {"rp-id", "rp_id", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
