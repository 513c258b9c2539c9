package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/internal/buildinfo"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/internal/clidocs"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
)

var keys = []cliconf.Key{
	cliconf.K("data_dir", "data-dir", "/var/lib/tpmauthn-verifier", "directory for keys, the fleet CA and the embedded JetStream store"),
	cliconf.K("nats.url", "nats-url", "", "an existing NATS cluster; empty runs an embedded nats-server"),
	cliconf.K("nats.seed", "nats-seed", "", "the verifier user's nkey seed file on an existing cluster (default DATA_DIR/verifier.nk)"),
	cliconf.K("nats.listen", "nats-listen", "127.0.0.1:4222", "the embedded nats-server's client address"),
	cliconf.K("nats.tls", "nats-tls", "auto", "the embedded server's TLS: auto (on unless it listens on loopback), on, or off (loopback only)"),
	cliconf.K("nats.tls_hosts", "nats-tls-hosts", []string{}, "names and addresses agents reach the embedded server by, for its certificate (default: the listen address, the hostname, and on 0.0.0.0 every interface's address)"),
	cliconf.K("nats.tls_cert", "nats-tls-cert", "", "the embedded server's own TLS certificate chain (PEM) instead of one from the verifier's NATS CA"),
	cliconf.K("nats.tls_key", "nats-tls-key", "", "the key of --nats-tls-cert"),
	cliconf.K("nats.replicas", "replicas", 0, "replicas of every bucket and the audit stream (0: 3 on a JetStream cluster of 3 or more servers, else 1)"),
	cliconf.K("nats.cluster_listen", "cluster-listen", "", "make the embedded server a node of a JetStream cluster: its route address (host:port)"),
	cliconf.K("nats.cluster_routes", "cluster-routes", []string{}, "the other nodes' route addresses (host:port), comma-separated"),
	cliconf.K("nats.server_name", "server-name", "", "the embedded server's name (default: kept in DATA_DIR/server-name when clustered)"),
	cliconf.K("nats.ca", "nats-ca", "", "PEM bundle to verify the NATS servers with (an existing cluster's CA, or --nats-tls-cert's issuer); join tokens pin its first CA"),
	cliconf.K("enrollment.ek_ca_dir", "ek-ca-dir", "", "directory of TPM manufacturer root and intermediate certificates (PEM or DER); empty trusts no EK certificate"),
	cliconf.K("enrollment.ek_intermediates", "ek-intermediates", "", "file of CA certificates (PEM or DER), such as the manufacturers' EK-issuing intermediates, one of which every EK certificate's chain must pass through; empty: any chain to an --ek-ca-dir root"),
	cliconf.K("enrollment.approval", "approval", "auto", "auto, or manual: new hosts wait for 'tpmauthnctl host approve'"),
	cliconf.K("enrollment.ak_cert_validity", "ak-cert-validity", 365*24*time.Hour, "lifetime of the AK certificates the fleet CA issues"),
	cliconf.K("webauthn.rp_id", "rp-id", "tpmauthn.local", "WebAuthn relying party ID (a domain name)"),
	cliconf.K("webauthn.origin", "origin", "", "WebAuthn origin (default tpmauthn://RP_ID)"),
	cliconf.K("policy.file", "policy", "", "YAML role policy: roles, subjects and bindings; re-read when it changes"),
	cliconf.K("audit.max_bytes", "audit-max-bytes", int64(auditlog.DefaultMaxBytes), "the audit stream's size bound, set when the stream is created; when full, connects are refused (negative: no bound)"),
	cliconf.K("audit.max_age", "audit-max-age", auditlog.DefaultMaxAge, "how long audit events are kept, set when the stream is created (negative: for ever)"),
	cliconf.K("audit.near_limit", "audit-near-limit", auditlog.DefaultNearLimit, "share of audit.max_bytes at which an alert is raised"),
	cliconf.K("metrics_listen", "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics"),
	cliconf.K("http.listen", "http-listen", "", "serve people's logins (the policy's people section) on host:port: /login/IDP, /oidc/callback, /device"),
	cliconf.K("http.tls", "http-tls", "auto", "the HTTP listener's TLS: auto (on unless it listens on loopback), on, or off (loopback only)"),
	cliconf.K("http.tls_cert", "http-tls-cert", "", "the HTTP listener's certificate chain (PEM), one browsers trust (default: one from the verifier's NATS CA)"),
	cliconf.K("http.tls_key", "http-tls-key", "", "the key of --http-tls-cert"),
	cliconf.K("http.public_url", "http-public-url", "", "how browsers and IdPs reach the HTTP listener (https://login.example.com); register PUBLIC_URL/oidc/callback at every IdP (default: the listen address)"),
	cliconf.K("websocket.listen", "websocket-listen", "", "add a NATS WebSocket listener to the embedded server for browsers (host:port): passkeys sign its connects; only the --http-public-url origin may connect; TLS when the pages have it"),
	cliconf.K("websocket.auth_timeout", "websocket-auth-timeout", time.Minute, "time from a WebSocket connection to its decided CONNECT (a passkey prompt); TCP keeps 5s"),
	cliconf.K("log.format", "log-format", "text", "text or json"),
	cliconf.K("log.level", "log-level", "info", "debug, info, warn or error"),
}

type settings struct {
	DataDir string `mapstructure:"data_dir"`
	NATS    struct {
		URL      string   `mapstructure:"url"`
		Seed     string   `mapstructure:"seed"`
		Listen   string   `mapstructure:"listen"`
		TLS      string   `mapstructure:"tls"`
		TLSHosts []string `mapstructure:"tls_hosts"`
		TLSCert  string   `mapstructure:"tls_cert"`
		TLSKey   string   `mapstructure:"tls_key"`
		CA       string   `mapstructure:"ca"`
		Replicas int      `mapstructure:"replicas"`
		Cluster  string   `mapstructure:"cluster_listen"`
		Routes   []string `mapstructure:"cluster_routes"`
		Name     string   `mapstructure:"server_name"`
	} `mapstructure:"nats"`
	Enrollment struct {
		EKCADir         string        `mapstructure:"ek_ca_dir"`
		EKIntermediates string        `mapstructure:"ek_intermediates"`
		Approval        string        `mapstructure:"approval"`
		AKCertValidity  time.Duration `mapstructure:"ak_cert_validity"`
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
	HTTP          struct {
		Listen    string `mapstructure:"listen"`
		TLS       string `mapstructure:"tls"`
		TLSCert   string `mapstructure:"tls_cert"`
		TLSKey    string `mapstructure:"tls_key"`
		PublicURL string `mapstructure:"public_url"`
	} `mapstructure:"http"`
	Websocket struct {
		Listen      string        `mapstructure:"listen"`
		AuthTimeout time.Duration `mapstructure:"auth_timeout"`
	} `mapstructure:"websocket"`
	Log struct {
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
		Version:       buildinfo.Read().String(),
		Args:          cobra.NoArgs,
		RunE:          run,
	}
	cliconf.Define(cmd, keys)
	cmd.AddCommand(clidocs.Command(cmd))
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
		NATSTLS: s.NATS.TLS, NATSTLSHosts: s.NATS.TLSHosts, NATSTLSCert: s.NATS.TLSCert, NATSTLSKey: s.NATS.TLSKey, NATSCA: s.NATS.CA,
		Replicas: s.NATS.Replicas, ClusterListen: s.NATS.Cluster, ClusterRoutes: s.NATS.Routes, ServerName: s.NATS.Name,
		EKCADir: s.Enrollment.EKCADir, EKIntermediates: s.Enrollment.EKIntermediates, Approval: s.Enrollment.Approval, AKCertValidity: s.Enrollment.AKCertValidity,
		RPID: s.WebAuthn.RPID, Origin: s.WebAuthn.Origin, MetricsListen: s.MetricsListen, PolicyFile: s.Policy.File, Logger: log,
		Audit:      auditlog.Config{MaxBytes: s.Audit.MaxBytes, MaxAge: s.Audit.MaxAge, NearLimit: s.Audit.NearLimit},
		HTTPListen: s.HTTP.Listen, HTTPTLS: s.HTTP.TLS, HTTPTLSCert: s.HTTP.TLSCert, HTTPTLSKey: s.HTTP.TLSKey, HTTPPublicURL: s.HTTP.PublicURL,
		WebsocketListen: s.Websocket.Listen, WebsocketAuthTimeout: s.Websocket.AuthTimeout,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return v.Run(ctx)
}
