package verifier

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
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
	// NATSSeed is the verifier's user seed on an existing cluster; empty
	// uses DATA_DIR/verifier.nk (the user keys.ServerConfig declares).
	NATSSeed string
	// NATSListen is the embedded server's client address (127.0.0.1:4222).
	NATSListen string

	// EKCADir holds the TPM manufacturers' roots and intermediates. Empty
	// means no EK certificate is trusted: only the EK allow-list enrolls.
	EKCADir string
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
	if c.Approval != ApprovalAuto && c.Approval != ApprovalManual {
		errs = append(errs, fmt.Errorf("enrollment.approval: %q, want auto or manual", c.Approval))
	}
	if err := protocol.ValidateRPID(c.RPID); err != nil {
		errs = append(errs, fmt.Errorf("webauthn.rp_id: %q: a domain name with at least two labels, or localhost", c.RPID))
	}
	if c.Origin == attestation.VerifierOrigin(c.RPID) {
		errs = append(errs, fmt.Errorf("webauthn.origin: %q is reserved for the assertions only the verifier consumes: choose another", c.Origin))
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
