package cliconf

import (
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
