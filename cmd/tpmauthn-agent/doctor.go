package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/internal/doctor"
)

var doctorKeys = append(append([]cliconf.Key{}, runKeys...),
	cliconf.K("ek_ca_dir", "ek-ca-dir", "", "the TPM manufacturer CAs the verifier trusts (its --ek-ca-dir): check that the EK certificate chains to them"),
	cliconf.K("unit", "unit", "tpmauthn-agent.service", "the systemd unit to check"),
	cliconf.K("json", "json", false, "print JSON for scripts"),
)

type doctorSettings struct {
	runSettings `mapstructure:",squash"`
	EKCADir     string `mapstructure:"ek_ca_dir"`
	Unit        string `mapstructure:"unit"`
	JSON        bool   `mapstructure:"json"`
}

func newDoctorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host: TPM, EK certificate, data directory, socket, unit, NATS, the verifier's view",
		Long: `Checks what the agent needs, one line each, with the fix for what is wrong:
the configuration, the data directory's permissions, the enrollment, the
running agent and its socket, the TPM (manufacturer, firmware, transient
slots) and its EK certificate (against --ek-ca-dir), the systemd unit, the
NATS server (TLS verified as the agent verifies it), and what the verifier
said of this host's credentials at the agent's last check. Give it the
agent's flags or --config. Exits 1 when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s doctorSettings
			if err := cliconf.Load(cmd, doctorKeys, &s); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			cfg := agent.Config{TPM: s.TPM, DataDir: s.DataDir, RPID: s.RPID, NATSURL: s.NATSURL, NATSCA: s.NATSCA,
				Socket: s.Socket, Workloads: s.Workloads, RequestTimeout: s.RequestTimeout}
			checks := agent.Doctor(ctx, cfg, agent.DoctorOptions{EKCADir: s.EKCADir, Unit: s.Unit})
			if err := doctor.Print(cmd.OutOrStdout(), checks, s.JSON); err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return errors.New("some checks failed (see above)")
			}
			return nil
		},
	}
	cliconf.Define(cmd, doctorKeys)
	return cmd
}
