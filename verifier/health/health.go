package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Alert kinds this package raises.
const (
	AlertStoreUnavailable = "store_unavailable"
)

// probeEvery is how often an unavailable store is tried again (a variable
// for tests). It bounds how late the episode's end is noticed, not when
// connects are granted again: grants never wait for the monitor.
var probeEvery = time.Second

// Prober tries one write to the store.
type Prober interface {
	Probe(ctx context.Context) error
}

type alerter interface {
	Alert(kind string, e audit.Event)
}

type recorder interface{ Record(audit.Event) }

type gauge interface {
	StoreAvailable(bool)
	StoreWriteFailureUnconfirmed()
}

// auditState says whether the audit trail takes events: Unavailable once
// it refuses grants (after its own window), Failing as soon as an append
// fails and until one succeeds.
type auditState interface {
	Unavailable() error
	Failing() bool
	Alerting() bool
}

// errAuditFailing keeps an episode open while the trail's appends fail but
// have not yet failed for long enough to refuse grants.
var errAuditFailing = fmt.Errorf("%w: audit appends are failing", api.ErrUnavailable)

// Config is what the monitor needs.
type Config struct {
	Store   Prober
	Alerts  alerter
	Trail   recorder
	Metrics gauge
	Audit   auditState // optional
	Logger  *slog.Logger
}

// Monitor tracks store availability episodes.
type Monitor struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	down    bool
	since   time.Time
	reason  string
	full    bool // the reason is JetStream's store full (store.Full)
	probing bool
	// confirming: a failure is being confirmed before an episode opens;
	// until quietUntil, failures are not confirmed again.
	confirming bool
	quietUntil time.Time
	closed     bool // Close was called: nothing new starts

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New makes a monitor; the store counts as available until an error says
// otherwise.
func New(cfg Config) *Monitor {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Monitor{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel}
	cfg.Metrics.StoreAvailable(true)
	return m
}

// Observe takes the outcome of a request that used the store: an error
// wrapping api.ErrUnavailable starts (or continues) an episode. Only the
// probe's write ends one: a request that succeeds may have only read (the
// fault campaign saw episodes flap, an alert every two seconds, while reads
// worked and writes did not). Other errors say nothing about the store.
//
// A full JetStream store counts whichever write met it first: the audit
// trail's append (store.ErrFull without api.ErrUnavailable) is as much the
// store's episode as a bucket's write, with the same alert and hint.
func (m *Monitor) Observe(err error) {
	if err != nil && (errors.Is(err, api.ErrUnavailable) || store.Full(err)) {
		m.fail(err)
	}
}

func (m *Monitor) fail(err error) {
	if store.Full(err) { // JetStream said so: nothing to confirm
		m.open(err)
		return
	}
	m.mu.Lock()
	if m.down || m.confirming || m.closed || time.Now().Before(m.quietUntil) {
		m.mu.Unlock()
		return
	}
	m.confirming = true
	m.mu.Unlock()
	m.wg.Go(func() { m.confirm(err) })
}

// confirm opens the episode unless, within probeEvery, a write of its own
// succeeds and the audit trail takes grants: a grant's write can fail at its
// client's deadline because the verifier is behind (a reconnect storm on a
// loaded cluster), or because a restart lost the trail's ack, and neither
// is the store down. Seen without it: store_unavailable tamper signals
// during storms while the store took every write.
func (m *Monitor) confirm(err error) {
	deadline := time.Now().Add(probeEvery)
	for {
		ctx, cancel := context.WithTimeout(m.ctx, probeEvery)
		perr := m.cfg.Store.Probe(ctx)
		cancel()
		// The trail refusing grants confirms, as do its appends failing
		// for more than a reconnect (no quorum, a refusal: the trail's own
		// alert is raised); a restart that lost an ack, retried inside
		// FailClosedAfter, does not.
		if perr == nil && m.cfg.Audit != nil {
			perr = m.cfg.Audit.Unavailable()
			if perr == nil && m.cfg.Audit.Alerting() {
				perr = errAuditFailing
			}
		}
		if m.ctx.Err() != nil {
			return
		}
		if perr == nil {
			m.mu.Lock()
			// One confirmation a probeEvery: a storm's failures do not
			// each cost a write and a log line.
			m.confirming, m.quietUntil = false, time.Now().Add(probeEvery)
			m.mu.Unlock()
			m.cfg.Metrics.StoreWriteFailureUnconfirmed()
			m.log.Warn("a grant's write failed, but the store takes writes: the verifier was behind, or a restart interrupted it", "error", err)
			return
		}
		if time.Now().After(deadline) {
			m.open(err)
			return
		}
		time.Sleep(probeEvery / 10)
	}
}

// check is one probe: a write to the store, and the audit trail taking
// events (an episode must not end on the bucket's write alone).
func (m *Monitor) check(ctx context.Context) error {
	err := m.cfg.Store.Probe(ctx)
	if err == nil && m.cfg.Audit != nil {
		err = m.cfg.Audit.Unavailable()
		if err == nil && m.cfg.Audit.Failing() {
			err = errAuditFailing
		}
	}
	return err
}

// open starts an episode (once): the gauge, the log, the alert, and the
// probe that ends it.
func (m *Monitor) open(err error) {
	m.mu.Lock()
	m.confirming = false
	if m.down || m.closed {
		m.mu.Unlock()
		return
	}
	m.down, m.since, m.reason, m.full = true, time.Now(), err.Error(), store.Full(err)
	startProbe := !m.probing
	m.probing = true
	m.mu.Unlock()

	m.cfg.Metrics.StoreAvailable(false)
	m.log.Error("the fleet store cannot take writes: new connects are denied until it can (live sessions run on)", "error", err)
	m.cfg.Alerts.Alert(AlertStoreUnavailable, audit.Event{Reason: "the fleet store cannot take writes: " + err.Error()})
	if startProbe {
		m.wg.Go(m.probe)
	}
}

func (m *Monitor) up() {
	m.mu.Lock()
	if !m.down {
		m.mu.Unlock()
		return
	}
	took := time.Since(m.since)
	m.down = false
	m.mu.Unlock()
	m.cfg.Metrics.StoreAvailable(true)
	m.log.Info("the fleet store takes writes again", "after", took.Round(time.Millisecond))
	m.cfg.Trail.Record(audit.Event{Kind: "store.available", Result: "ok",
		Reason: "the fleet store takes writes again after " + took.Round(time.Millisecond).String()})
}

// probe writes to the store every probeEvery while it is down.
func (m *Monitor) probe() {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(m.ctx, probeEvery)
		err := m.check(ctx)
		cancel()
		m.mu.Lock()
		if err == nil || !m.down {
			m.probing = false
			m.mu.Unlock()
			if err == nil {
				m.up()
			}
			return
		}
		m.reason, m.full = err.Error(), store.Full(err)
		m.mu.Unlock()
	}
}

// Close stops probing.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// Status is /healthz's answer.
type Status struct {
	Status string    `json:"status"` // ok, store_unavailable or audit_unavailable
	Since  time.Time `json:"since,omitzero"`
	Reason string    `json:"reason,omitempty"`
	Hint   string    `json:"hint,omitempty"`
}

// hintFull is what to do when JetStream refuses writes for want of space:
// nothing ends that but an operator (or records expiring).
const hintFull = "new connects are denied until JetStream has room again: free space on the servers' JetStream store (tpmauthnctl status shows each stream's bytes; streams other than tpmauthn's count too) or raise max_file_store (or the account's JetStream storage limit); the verifier recovers by itself"

// Now is the current status.
func (m *Monitor) Now() Status {
	var trailErr error
	if m.cfg.Audit != nil {
		trailErr = m.cfg.Audit.Unavailable()
	}
	if trailErr != nil && store.Full(trailErr) {
		// The trail met the full store first: it is the store's episode,
		// and the gauge and the alert say so as /healthz does (fail does
		// nothing if the episode is already open).
		m.fail(trailErr)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down && m.full {
		return Status{Status: "store_unavailable", Since: m.since, Reason: m.reason, Hint: hintFull}
	}
	if m.down {
		return Status{Status: "store_unavailable", Since: m.since, Reason: m.reason,
			Hint: "new connects are denied until JetStream takes writes again: check the servers' JetStream (quorum, disk space: tpmauthnctl status)"}
	}
	if trailErr != nil {
		return Status{Status: "audit_unavailable", Reason: trailErr.Error(),
			Hint: "new connects are denied until the audit stream takes events again (its limits: tpmauthnctl status)"}
	}
	return Status{Status: "ok"}
}

// ServeHTTP answers /healthz: 200 when connects can be granted, 503 with
// the reason and what to do otherwise.
func (m *Monitor) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	st := m.Now()
	w.Header().Set("Content-Type", "application/json")
	if st.Status != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(st)
}
