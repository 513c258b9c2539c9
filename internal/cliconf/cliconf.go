// Package cliconf binds the tpmauthn binaries' settings three ways: a YAML
// config file, TPMAUTHN_* environment variables and command-line flags
// (flags win, then the environment, then the file, then defaults). Only cmd/
// uses it; libraries take typed Configs.
package cliconf

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Key is one setting: its config-file key (dotted), its flag, its default.
// The environment variable is TPMAUTHN_ + the key upper-cased with dots as
// underscores (enrollment.ek_ca_dir -> TPMAUTHN_ENROLLMENT_EK_CA_DIR).
type Key struct {
	Name    string
	Flag    string
	Default any // string, bool, int, time.Duration or []string (comma-separated in flags and the environment)
	Usage   string
}

// EnvName returns the environment variable for a key.
func EnvName(key string) string {
	return "TPMAUTHN_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// Define adds the keys' flags (and --config) to cmd.
func Define(cmd *cobra.Command, keys []Key) {
	f := cmd.Flags()
	f.String("config", "", "YAML config file (every key can also be a flag or a TPMAUTHN_* variable)")
	for _, k := range keys {
		usage := fmt.Sprintf("%s (config %s, env %s)", k.Usage, k.Name, EnvName(k.Name))
		switch d := k.Default.(type) {
		case string:
			f.String(k.Flag, d, usage)
		case bool:
			f.Bool(k.Flag, d, usage)
		case int:
			f.Int(k.Flag, d, usage)
		case int64:
			f.Int64(k.Flag, d, usage)
		case float64:
			f.Float64(k.Flag, d, usage)
		case time.Duration:
			f.Duration(k.Flag, d, usage)
		case []string:
			f.StringSlice(k.Flag, d, usage)
		default:
			panic(fmt.Sprintf("cliconf: key %s: unsupported default %T", k.Name, k.Default))
		}
	}
}

// Load reads the settings of cmd, including its --config file, into out (a
// struct with mapstructure tags). Unknown keys in the file are an error
// (ErrUnknownKey) that names each of them and the valid key nearest to it.
func Load(cmd *cobra.Command, keys []Key, out any) error {
	path, _ := cmd.Flags().GetString("config")
	return load(cmd.Flags(), keys, path, out)
}

// LoadFlags is Load without a config file (persistent flags).
func LoadFlags(fs *pflag.FlagSet, keys []Key, out any) error {
	return load(fs, keys, "", out)
}

func load(fs *pflag.FlagSet, keys []Key, configFile string, out any) error {
	v := viper.New()
	v.SetEnvPrefix("TPMAUTHN")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	for _, k := range keys {
		// A default for every key, or environment overrides never reach
		// Unmarshal (spf13/viper#761).
		v.SetDefault(k.Name, k.Default)
		if err := v.BindPFlag(k.Name, fs.Lookup(k.Flag)); err != nil {
			return err
		}
	}
	if configFile != "" {
		v.SetConfigFile(configFile)
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("config %s: %w", configFile, err)
		}
		// UnmarshalExact below refuses an unknown key too, but says
		// neither where nor what was meant.
		if err := checkKeys(configFile, out); err != nil {
			return err
		}
	}
	if err := v.UnmarshalExact(out); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// Logger builds the process logger: format "text" or "json" on stderr.
func Logger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
}

// K is a short constructor for Key tables.
func K(name, flag string, def any, usage string) Key {
	return Key{Name: name, Flag: flag, Default: def, Usage: usage}
}
