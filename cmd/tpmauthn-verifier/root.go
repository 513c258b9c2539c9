package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
)

var keys = []cliconf.Key{
	cliconf.K("data_dir", "data-dir", "/var/lib/tpmauthn-verifier", "directory for keys, the fleet CA and the embedded JetStream store"),
	cliconf.K("nats.url", "nats-url", "", "an existing NATS cluster; empty runs an embedded nats-server"),
	cliconf.K("nats.seed", "nats-seed", "", "the verifier user's nkey seed file on an existing cluster (default DATA_DIR/verifier.nk)"),
	cliconf.K("nats.listen", "nats-listen", "127.0.0.1:4222", "the embedded nats-server's client address"),
	cliconf.K("enrollment.ek_ca_dir", "ek-ca-dir", "", "directory of TPM manufacturer root and intermediate certificates (PEM or DER); empty trusts no EK certificate"),
	cliconf.K("enrollment.approval", "approval", "auto", "auto, or manual: new hosts wait for 'tpmauthnctl host approve'"),
	cliconf.K("enrollment.ak_cert_validity", "ak-cert-validity", 365*24*time.Hour, "lifetime of the AK certificates the fleet CA issues"),
	cliconf.K("webauthn.rp_id", "rp-id", "tpmauthn.local", "WebAuthn relying party ID (a domain name)"),
	cliconf.K("webauthn.origin", "origin", "", "WebAuthn origin (default tpmauthn://RP_ID)"),
	cliconf.K("policy.file", "policy", "", "YAML role policy: roles, subjects and bindings; re-read when it changes"),
	cliconf.K("audit.max_bytes", "audit-max-bytes", int64(auditlog.DefaultMaxBytes), "the audit stream's size bound, set when the stream is created; when full, connects are refused (negative: no bound)"),
	cliconf.K("audit.max_age", "audit-max-age", auditlog.DefaultMaxAge, "how long audit events are kept, set when the stream is created (negative: for ever)"),
	cliconf.K("audit.near_limit", "audit-near-limit", auditlog.DefaultNearLimit, "share of audit.max_bytes at which an alert is raised"),
	cliconf.K("metrics_listen", "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics"),
	cliconf.K("log.format", "log-format", "text", "text or json"),
	cliconf.K("log.level", "log-level", "info", "debug, info, warn or error"),
}

type settings struct {
	DataDir string `mapstructure:"data_dir"`
	NATS    struct {
		URL    string `mapstructure:"url"`
		Seed   string `mapstructure:"seed"`
		Listen string `mapstructure:"listen"`
	} `mapstructure:"nats"`
	Enrollment struct {
		EKCADir        string        `mapstructure:"ek_ca_dir"`
		Approval       string        `mapstructure:"approval"`
		AKCertValidity time.Duration `mapstructure:"ak_cert_validity"`
	} `mapstructure:"enrollment"`
	WebAuthn struct {
		RPID   string `mapstructure:"rp_id"`
		Origin string `mapstructure:"origin"`
	} `mapstructure:"webauthn"`
	Policy struct {
		File string `mapstructure:"file"`
	} `mapstructure:"policy"`
	Audit struct {
		MaxBytes  int64         `mapstructure:"max_bytes"`
		MaxAge    time.Duration `mapstructure:"max_age"`
		NearLimit float64       `mapstructure:"near_limit"`
	} `mapstructure:"audit"`
	MetricsListen string `mapstructure:"metrics_listen"`
	Log           struct {
		Format string `mapstructure:"format"`
		Level  string `mapstructure:"level"`
	} `mapstructure:"log"`
}

func newRootCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tpmauthn-verifier",
		Short: "Enroll TPM hosts, register their credentials and authorize their NATS connections",
		Long: `tpmauthn-verifier enrolls hosts (EK chain, credential activation, AK
certificate from its fleet CA), registers their TPM credentials and answers NATS
auth callout. With no --nats-url it runs an embedded nats-server with everything
set up; on first start it creates its keys in --data-dir.

Operators use tpmauthnctl --data-dir DATA_DIR.`,
		Example:       "  tpmauthn-verifier --data-dir ./verifier --ek-ca-dir /etc/tpmauthn/ek-ca",
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          run,
	}
	cliconf.Define(cmd, keys)
	return cmd
}

func run(cmd *cobra.Command, _ []string) error {
	var s settings
	if err := cliconf.Load(cmd, keys, &s); err != nil {
		return err
	}
	log, err := cliconf.Logger(s.Log.Format, s.Log.Level)
	if err != nil {
		return err
	}
	v, err := verifier.New(verifier.Config{
		DataDir: s.DataDir, NATSURL: s.NATS.URL, NATSSeed: s.NATS.Seed, NATSListen: s.NATS.Listen,
		EKCADir: s.Enrollment.EKCADir, Approval: s.Enrollment.Approval, AKCertValidity: s.Enrollment.AKCertValidity,
		RPID: s.WebAuthn.RPID, Origin: s.WebAuthn.Origin, MetricsListen: s.MetricsListen, PolicyFile: s.Policy.File, Logger: log,
		Audit: auditlog.Config{MaxBytes: s.Audit.MaxBytes, MaxAge: s.Audit.MaxAge, NearLimit: s.Audit.NearLimit},
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return v.Run(ctx)
}
