package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
)

var runKeys = []cliconf.Key{
	cliconf.K("tpm", "tpm", tpm.DefaultDevice, "TPM: a device such as /dev/tpmrm0, or swtpm://127.0.0.1:2321"),
	cliconf.K("data_dir", "data-dir", "/var/lib/tpmauthn", "directory for the AK, its certificate and the credentials' key blobs and counters"),
	cliconf.K("nats_url", "nats-url", "nats://127.0.0.1:4222", "the fleet's NATS server, where tpmauthn-verifier serves"),
	cliconf.K("nats_ca", "nats-ca", "", "PEM bundle to verify the NATS server with (default: the CA the join token pinned, kept at enrollment; else the system's roots)"),
	cliconf.K("token_file", "token-file", "", "file holding the join token, for the first start (tpmauthnctl token create)"),
	cliconf.K("hostname", "hostname", "", "name to enroll under (default: the system hostname)"),
	cliconf.K("rp_id", "rp-id", "", "WebAuthn RP ID to expect from the verifier; enrollment fails if it names another (empty: accept the verifier's)"),
	cliconf.K("socket", "socket", agent.DefaultSocket, "Unix socket for workloads (ignored under systemd socket activation)"),
	cliconf.K("request_timeout", "request-timeout", 5*time.Second, "deadline of a socket request, TPM queue wait included"),
	cliconf.K("metrics_listen", "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics"),
	cliconf.K("rotation_check", "rotation-check", time.Minute, "how often to ask the verifier which credentials to rotate and which are revoked (with credentials_watch, the fallback), and to check that people's credentials still belong to their uids' accounts"),
	cliconf.K("credentials_watch", "credentials-watch", true, "hold a request open at the verifier so that 'tpmauthnctl credential rotate', 'revoke' and 'reissue' reach this host at once (false: at its next rotation_check)"),
	cliconf.K("log.format", "log-format", "text", "text or json"),
	cliconf.K("log.level", "log-level", "info", "debug, info, warn or error"),
}

type runSettings struct {
	TPM            string           `mapstructure:"tpm"`
	DataDir        string           `mapstructure:"data_dir"`
	NATSURL        string           `mapstructure:"nats_url"`
	NATSCA         string           `mapstructure:"nats_ca"`
	TokenFile      string           `mapstructure:"token_file"`
	Hostname       string           `mapstructure:"hostname"`
	Socket         string           `mapstructure:"socket"`
	RPID           string           `mapstructure:"rp_id"`
	RequestTimeout time.Duration    `mapstructure:"request_timeout"`
	Workloads      []agent.Workload `mapstructure:"workloads"`
	MetricsListen  string           `mapstructure:"metrics_listen"`
	RotationCheck  time.Duration    `mapstructure:"rotation_check"`
	Watch          bool             `mapstructure:"credentials_watch"`
	Log            struct {
		Format string `mapstructure:"format"`
		Level  string `mapstructure:"level"`
	} `mapstructure:"log"`
}

func newRunCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent: enroll, keep a TPM credential per workload, serve the socket",
		Long: `Runs the host agent. On first start it enrolls with the verifier using the
join token, then creates and registers one TPM credential per configured
workload, and answers local processes on the Unix socket, naming them by
their peer credentials. Workloads are configured in the --config file:

  workloads:
    - name: billing
      match: {systemd_unit: billing.service}
    - name: copilot
      match: {uid: 1001, exe: /usr/local/bin/copilot}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s runSettings
			if err := cliconf.Load(cmd, runKeys, &s); err != nil {
				return err
			}
			return run(s)
		},
	}
	cliconf.Define(cmd, runKeys)
	return cmd
}

func run(s runSettings) error {
	log, err := cliconf.Logger(s.Log.Format, s.Log.Level)
	if err != nil {
		return err
	}
	cfg := agent.Config{
		TPM: s.TPM, DataDir: s.DataDir, RPID: s.RPID, NATSURL: s.NATSURL, NATSCA: s.NATSCA, TokenFile: s.TokenFile, Hostname: s.Hostname,
		Socket: s.Socket, Workloads: s.Workloads, RequestTimeout: s.RequestTimeout, Logger: log, MetricsListen: s.MetricsListen,
		RotationCheck: s.RotationCheck, NoCredentialsWatch: !s.Watch,
		Ready: func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) },
	}
	// Under systemd socket activation the socket is passed in (LISTEN_FDS,
	// LISTEN_PID checked by the library).
	lns, err := activation.Listeners()
	if err != nil {
		return fmt.Errorf("socket activation: %w", err)
	}
	if len(lns) > 1 {
		return fmt.Errorf("socket activation passed %d sockets, want 1", len(lns))
	}
	if len(lns) == 1 {
		cfg.Listener = lns[0]
		log.Info("using the socket passed by systemd", "addr", lns[0].Addr().String())
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}
