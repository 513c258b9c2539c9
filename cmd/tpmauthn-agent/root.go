package main

import (
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/tpmauthn/tpmauthn/internal/buildinfo"
	"github.com/tpmauthn/tpmauthn/internal/clidocs"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tpmauthn-agent",
		Short:         "TPM-backed WebAuthn platform authenticator for the workloads on this host",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Read().String(),
	}
	root.AddCommand(newRunCmd(), newDebugCmd(), newDoctorCmd())
	root.AddCommand(clidocs.Command(root))
	return root
}

// newViper returns a viper that reads TPMAUTHN_* variables: every flag FOO-BAR
// can also be set as TPMAUTHN_FOO_BAR.
func newViper(cmd *cobra.Command) (*viper.Viper, error) {
	v := viper.New()
	v.SetEnvPrefix("TPMAUTHN")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	v.AutomaticEnv()
	if err := v.BindPFlags(cmd.Flags()); err != nil {
		return nil, err
	}
	return v, nil
}
