// Package alert raises the verifier's tamper signals (DESIGN.md flow 5): a
// counter that does not increase, a revoked credential used, an AK that is
// not the host's, an EK outside the trust roots, a revoked host's TPM
// enrolling again. Each is published on
// tpmauthn.alerts.<kind> for whoever watches, counted in metrics, logged and
// audited.
package alert

import (
	"encoding/json"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Kinds of tamper signal.
const (
	CounterRegression = "counter_regression"
	RevokedUsed       = "revoked_credential_used"
	AKMismatch        = "ak_mismatch"
	EKUntrusted       = "ek_untrusted"
	// RevokedTPM: an EK or AK of a revoked host tries to enroll again.
	RevokedTPM = "revoked_tpm"
	// PersonOffboarded: a person's live access was cut (credentials
	// revoked, sessions kicked) by their IdP's SCIM deprovisioning or an
	// operator, or their IdP refused the re-check's refresh
	// (verifier/offboard). Not a tamper signal but a security event the
	// same watchers want; counted with them.
	PersonOffboarded = "person_offboarded"
	// BreakGlass: the operator key file was used while people operate the
	// fleet (the policy grants admin roles to IdP groups).
	BreakGlass = "break_glass"
)

// Kinds are this package's kinds of signal (other rooms raise theirs:
// store_unavailable, audit_*).
var Kinds = []string{CounterRegression, RevokedUsed, AKMismatch, EKUntrusted, RevokedTPM, PersonOffboarded, BreakGlass}

// SubjectPrefix is where alerts are published: SubjectPrefix + kind.
const SubjectPrefix = "tpmauthn.alerts."

type recorder interface{ Record(audit.Event) }

type counter interface{ Tamper(kind string) }

// Publisher raises alerts.
type Publisher struct {
	nc      *nats.Conn
	trail   recorder
	metrics counter
	log     *slog.Logger
}

// NewPublisher publishes on nc, audits to trail and counts in metrics.
func NewPublisher(nc *nats.Conn, trail recorder, metrics counter, log *slog.Logger) *Publisher {
	return &Publisher{nc: nc, trail: trail, metrics: metrics, log: log}
}

// Alert raises a tamper signal of kind; e says what was seen.
func (p *Publisher) Alert(kind string, e audit.Event) {
	e.Kind, e.Result = "alert."+kind, audit.Alert
	p.metrics.Tamper(kind)
	p.log.Warn("tamper signal", "kind", kind, "host", e.Host, "credential", e.Credential, "reason", e.Reason)
	if b, err := json.Marshal(e); err == nil {
		_ = p.nc.Publish(SubjectPrefix+kind, b)
	}
	p.trail.Record(e)
}
