package verifier

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
)

// TLS modes of the embedded server.
const (
	TLSAuto = "auto"
	TLSOn   = "on"
	TLSOff  = "off"
)

// Approval modes for new hosts.
const (
	ApprovalAuto   = "auto"
	ApprovalManual = "manual"
)

// Config configures a Verifier. Zero values are documented defaults.
type Config struct {
	DataDir string // required: keys, fleet CA, embedded JetStream

	// NATSURL of an existing cluster; empty runs an embedded nats-server.
	NATSURL string
	// NATSInProcess, if set, is the nats-server at NATSURL running in this
	// process: the verifier's own connections reach it through memory
	// instead of TCP (a program that embeds both). The embedded server is
	// always reached so. It names one server: after that server shuts
	// down, the verifier's reconnects fail until the verifier is started
	// again (a program that restarts its server under a running verifier
	// leaves this unset).
	NATSInProcess nats.InProcessConnProvider
	// NATSSeed is the verifier's user seed on an existing cluster; empty
	// uses DATA_DIR/verifier.nk (the user keys.ServerConfig declares).
	NATSSeed string
	// NATSListen is the embedded server's client address (127.0.0.1:4222).
	NATSListen string
	// NATSTLS is the embedded server's TLS: TLSAuto (default: on unless
	// NATSListen is on loopback), TLSOn, or TLSOff (refused beyond loopback).
	NATSTLS string
	// NATSTLSHosts are the names and addresses agents reach the embedded
	// server by, which its certificate names (default: the listen address,
	// this host's name and, listening on every interface, their addresses;
	// always localhost and the loopback addresses).
	NATSTLSHosts []string
	// NATSTLSCert and NATSTLSKey are the embedded server's own certificate
	// (chain) and key, instead of one from the verifier's NATS CA.
	NATSTLSCert, NATSTLSKey string
	// Replicas of every bucket and of the audit stream: 0 chooses (3 on a
	// JetStream cluster of at least 3 servers, else 1).
	Replicas int
	// ClusterListen, if set, makes the embedded server a node of a
	// JetStream cluster with the servers at ClusterRoutes (host:port, or
	// nats-route:// URLs), over mutual TLS with the NATS CA.
	ClusterListen string
	ClusterRoutes []string
	// ServerName is the embedded server's name (default: "tpmauthn"
	// standalone; clustered, one kept in DataDir).
	ServerName string
	// NATSCA is the PEM bundle the NATS servers' certificates are verified
	// with: an existing cluster's, or the issuer of NATSTLSCert. Join tokens
	// pin its first CA. Empty: the NATS CA (embedded), else the system roots.
	NATSCA string

	// EKCADir holds the TPM manufacturers' roots and intermediates. Empty
	// means no EK certificate is trusted: only the EK allow-list enrolls.
	EKCADir string
	// EKIntermediates is a file of CA certificates (PEM or DER), usually
	// the manufacturers' EK-issuing intermediates: when set, an EK
	// certificate whose chain passes through none of them is refused, even
	// if it chains to a root of EKCADir. Empty: any chain will do.
	EKIntermediates string
	// Approval is "auto" (default) or "manual" (hosts wait for an operator).
	Approval string

	RPID   string // WebAuthn RP ID (tpmauthn.local)
	Origin string // WebAuthn origin (tpmauthn://RPID)

	AKCertValidity    time.Duration // 1 year
	CredentialMaxAge  time.Duration // agents rotate credentials before this age (30 days; negative: never)
	RotationGrace     time.Duration // a replaced credential stays valid this long (10m)
	EnrollSessionTTL  time.Duration // lifetime of an enrollment session's NATS JWT (5m)
	RegisterChallenge time.Duration // lifetime of a registration challenge (2m)
	Workers           int           // concurrent requests (64)

	// PolicyFile is the YAML role policy (see Policy); it is re-read when
	// it changes. Empty grants workloads nothing.
	PolicyFile string

	// MetricsListen serves Prometheus metrics at http://ADDR/metrics; empty
	// serves none.
	MetricsListen string

	// HTTPListen serves people's logins (the policy's people section:
	// /login/{idp}, /oidc/callback, /cli/token, /device) on host:port; empty
	// serves none.
	HTTPListen string
	// HTTPTLS is TLSAuto (default: on unless HTTPListen is on loopback),
	// TLSOn, or TLSOff (refused beyond loopback).
	HTTPTLS string
	// HTTPTLSCert and HTTPTLSKey are the listener's certificate (chain) and
	// key: one browsers trust. Empty: one from the verifier's NATS CA,
	// which only clients given that CA accept.
	HTTPTLSCert, HTTPTLSKey string
	// HTTPPublicURL is how browsers and IdPs reach the listener
	// (https://login.example.com); each IdP's redirect URI is it +
	// /oidc/callback. Empty: the listen address.
	HTTPPublicURL string
	// DevicePoll is the device flow's polling interval (5s).
	DevicePoll time.Duration
	// PeersEvery is how often the servers are asked for verifier instances
	// of an older version (verifier/peers; a minute if 0).
	PeersEvery time.Duration
	// WebsocketListen adds a WebSocket listener to the embedded server
	// (host:port) for browsers: people's passkeys sign its NATS connects
	// and the console's pages use it. It needs HTTPListen: the pages'
	// origin is the only one it accepts, and it serves TLS, with the HTTP
	// listener's certificate, exactly when the pages do.
	WebsocketListen string
	// WebsocketAuthTimeout is its time from connection to a decided
	// CONNECT (60 s: a passkey prompt; TCP keeps 5 s).
	WebsocketAuthTimeout time.Duration

	// Audit configures the audit stream: its limits (created with them;
	// max bytes 1 GiB and max age 90 days by default), the alert near its
	// limit, and the checkpoint file (DATA_DIR/audit-checkpoint.json by
	// default). See auditlog.Config for the discard policy.
	Audit auditlog.Config

	// OnDecision, if set, is called after every auth-callout decision with
	// the time it took and its error (nil: granted). For benchmarks and
	// monitoring; it must be fast.
	OnDecision func(took time.Duration, err error)

	Logger *slog.Logger

	// Clock is the time of join tokens and of the records operators see
	// (nil: time.Now): tests move it instead of sleeping. Session JWTs,
	// certificates and the audit trail keep the real clock.
	Clock func() time.Time
}

func (c *Config) setDefaults() {
	if c.NATSListen == "" {
		c.NATSListen = "127.0.0.1:4222"
	}
	if c.Approval == "" {
		c.Approval = ApprovalAuto
	}
	if c.NATSTLS == "" {
		c.NATSTLS = TLSAuto
	}
	if c.HTTPTLS == "" {
		c.HTTPTLS = TLSAuto
	}
	if c.RPID == "" {
		c.RPID = "tpmauthn.local"
	}
	if c.Origin == "" {
		c.Origin = "tpmauthn://" + c.RPID
	}
	if c.AKCertValidity == 0 {
		c.AKCertValidity = 365 * 24 * time.Hour
	}
	if c.EnrollSessionTTL == 0 {
		c.EnrollSessionTTL = 5 * time.Minute
	}
	if c.RegisterChallenge == 0 {
		c.RegisterChallenge = 2 * time.Minute
	}
	if c.CredentialMaxAge == 0 {
		c.CredentialMaxAge = 30 * 24 * time.Hour
	}
	if c.RotationGrace == 0 {
		c.RotationGrace = 10 * time.Minute
	}
	if c.Workers == 0 {
		c.Workers = 64
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem at once, naming the config keys.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: required"))
	} else if abs, err := filepath.Abs(c.DataDir); err != nil {
		errs = append(errs, fmt.Errorf("data_dir: %w", err))
	} else {
		c.DataDir = abs
	}
	errs = append(errs, c.validateTLS()...)
	errs = append(errs, c.validateCluster()...)
	errs = append(errs, c.validateHTTP()...)
	errs = append(errs, c.validateWebsocket()...)
	if c.Approval != ApprovalAuto && c.Approval != ApprovalManual {
		errs = append(errs, fmt.Errorf("enrollment.approval: %q, want auto or manual", c.Approval))
	}
	if err := protocol.ValidateRPID(c.RPID); err != nil {
		errs = append(errs, fmt.Errorf("webauthn.rp_id: %q: a domain name with at least two labels, or localhost", c.RPID))
	}
	if c.Origin == attestation.VerifierOrigin(c.RPID) {
		errs = append(errs, fmt.Errorf("webauthn.origin: %q is reserved for the assertions only the verifier consumes: choose another", c.Origin))
	}
	if c.EKIntermediates != "" && c.EKCADir == "" {
		errs = append(errs, errors.New("enrollment.ek_intermediates: set, but enrollment.ek_ca_dir is empty: pinned intermediates need the roots they chain to"))
	}
	if c.AKCertValidity < time.Hour {
		errs = append(errs, fmt.Errorf("enrollment.ak_cert_validity: %v, want at least 1h", c.AKCertValidity))
	}
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("workers: %d, want at least 1", c.Workers))
	}
	if err := c.Audit.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Config) validateTLS() []error {
	var errs []error
	switch c.NATSTLS {
	case TLSAuto, TLSOn, TLSOff:
	default:
		errs = append(errs, fmt.Errorf("nats.tls: %q, want auto, on or off", c.NATSTLS))
	}
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		errs = append(errs, errors.New("nats.tls_cert and nats.tls_key: give both or neither"))
	}
	if c.NATSURL != "" {
		if c.NATSTLSCert != "" || len(c.NATSTLSHosts) > 0 || c.NATSTLS == TLSOn {
			errs = append(errs, errors.New("nats.tls, nats.tls_cert, nats.tls_hosts: the embedded server's settings; with nats.url the cluster's servers have their own TLS (give their CA with nats.ca)"))
		}
		return errs
	}
	host, _, err := net.SplitHostPort(c.NATSListen)
	if err != nil {
		return append(errs, fmt.Errorf("nats.listen: %q: want host:port (%w)", c.NATSListen, err))
	}
	if c.NATSTLS == TLSOff && !natstls.LoopbackHost(host) {
		// Join tokens and host proofs are bearer secrets, and a NATS login
		// can be relayed by whoever answers in the server's place.
		errs = append(errs, fmt.Errorf("nats.listen: %q is beyond loopback and nats.tls is off: agents' join tokens and logins would cross the network in clear; leave nats.tls at auto (TLS from the verifier's NATS CA) or listen on 127.0.0.1", c.NATSListen))
	}
	return errs
}

// embeddedTLS says whether the embedded server serves TLS.
func (c *Config) embeddedTLS() bool {
	if c.NATSTLS == TLSAuto {
		host, _, _ := net.SplitHostPort(c.NATSListen)
		return !natstls.LoopbackHost(host) || c.NATSTLSCert != ""
	}
	return c.NATSTLS == TLSOn
}

func (c *Config) validateHTTP() []error {
	var errs []error
	switch c.HTTPTLS {
	case TLSAuto, TLSOn, TLSOff:
	default:
		errs = append(errs, fmt.Errorf("http.tls: %q, want auto, on or off", c.HTTPTLS))
	}
	if (c.HTTPTLSCert == "") != (c.HTTPTLSKey == "") {
		errs = append(errs, errors.New("http.tls_cert and http.tls_key: give both or neither"))
	}
	if c.HTTPListen == "" {
		if c.HTTPPublicURL != "" || c.HTTPTLSCert != "" {
			errs = append(errs, errors.New("http.public_url, http.tls_cert: set, but http.listen is empty"))
		}
		return errs
	}
	host, _, err := net.SplitHostPort(c.HTTPListen)
	if err != nil {
		return append(errs, fmt.Errorf("http.listen: %q: want host:port (%w)", c.HTTPListen, err))
	}
	if c.HTTPTLS == TLSOff && !natstls.LoopbackHost(host) {
		errs = append(errs, fmt.Errorf("http.listen: %q is beyond loopback and http.tls is off: login codes and grants would cross the network in clear; leave http.tls at auto or listen on 127.0.0.1", c.HTTPListen))
	}
	if c.HTTPPublicURL != "" {
		if err := checkPublicURL(c.HTTPPublicURL, c.httpTLS()); err != nil {
			errs = append(errs, fmt.Errorf("http.public_url: %q: %w", c.HTTPPublicURL, err))
		}
	}
	return errs
}

// checkPublicURL: scheme and host only, https when the listener serves
// TLS (and http only then when it does not).
func checkPublicURL(s string, tls bool) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("want scheme://host[:port], without a path")
	}
	if want := map[bool]string{true: "https", false: "http"}[tls]; u.Scheme != want {
		return fmt.Errorf("the listener serves %s", want)
	}
	return nil
}

// httpTLS says whether the HTTP listener serves TLS.
func (c *Config) httpTLS() bool {
	if c.HTTPTLS == TLSAuto {
		host, _, _ := net.SplitHostPort(c.HTTPListen)
		return !natstls.LoopbackHost(host) || c.HTTPTLSCert != ""
	}
	return c.HTTPTLS == TLSOn
}
