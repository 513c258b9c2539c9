// Package metrics is the verifier's Prometheus instrumentation: a registry
// of its own (not the global one) with the request, decision, enrollment,
// registration, tamper and audit series every room of the verifier reports
// to.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tpmauthn/tpmauthn/api"
)

// Metrics are one verifier's series.
type Metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	enrollments   *prometheus.CounterVec
	registrations *prometheus.CounterVec
	tamper        *prometheus.CounterVec
	auditAppend   prometheus.Histogram
	shed          prometheus.Counter
	storeUp       prometheus.Gauge
	storeBehind   prometheus.Counter
	olderPeers    prometheus.Gauge
}

// New makes the series and registers them with the Go and process
// collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tpmauthn_requests_total", Help: "Requests answered, by endpoint and result (ok or an error code).",
		}, []string{"endpoint", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tpmauthn_request_duration_seconds", Help: "Time to answer a request, by endpoint.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"endpoint"}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tpmauthn_enrollments_total", Help: "Host enrollments completed or refused, by result.",
		}, []string{"result"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tpmauthn_registrations_total", Help: "Credential registrations completed or refused, by result.",
		}, []string{"result"}),
		tamper: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tpmauthn_tamper_signals_total", Help: "Tamper signals (alerts), by kind.",
		}, []string{"kind"}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tpmauthn_callouts_shed_total", Help: "Callout requests dropped because the server had stopped waiting for them.",
		}),
		auditAppend: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tpmauthn_audit_append_seconds", Help: "Time to chain, sign and append one stream message of audit events (one or more).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}),
		storeUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tpmauthn_store_available", Help: "1 while the fleet store (JetStream KV) takes writes; 0 while new connects are denied for want of it.",
		}),
		storeBehind: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tpmauthn_store_write_failures_unconfirmed_total",
			Help: "Grants whose store write failed while the verifier's own write succeeded within a second (the verifier behind, not the store down): no store_unavailable episode, each such grant denied.",
		}),
		olderPeers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tpmauthn_older_verifiers",
			Help: "Verifier instances of an older version connected to the fleet's servers (verifier/peers): they drop record fields this version relies on.",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.enrollments, m.registrations, m.tamper, m.auditAppend, m.shed, m.storeUp, m.storeBehind, m.olderPeers,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Observe records one request's outcome: result is "ok", an error code
// (api.Code*) or "denied" (a refused connect).
func (m *Metrics) Observe(subject, result string, took time.Duration) {
	refused := result != "ok"
	m.requests.WithLabelValues(subject, result).Inc()
	m.latency.WithLabelValues(subject).Observe(took.Seconds())
	switch subject {
	case api.SubjectV1Prefix + api.OpEnrollBegin:
		if refused { // a refusal at begin is a refused enrollment
			m.enrollments.WithLabelValues(result).Inc()
		}
	case api.SubjectV1Prefix + api.OpEnrollFinish:
		m.enrollments.WithLabelValues(result).Inc()
	case api.SubjectV1Prefix + api.OpRegisterFinish:
		m.registrations.WithLabelValues(result).Inc()
	}
}

// WatchAuditBacklog exports the events recorded but not yet appended: a
// backlog that keeps growing means the audit trail is falling behind.
func (m *Metrics) WatchAuditBacklog(backlog func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_audit_backlog", Help: "Audit events recorded but not yet appended to the stream.",
	}, func() float64 { return float64(backlog()) }))
}

// StoreAvailable sets whether the fleet store takes writes.
func (m *Metrics) StoreAvailable(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.storeUp.Set(v)
}

// StoreWriteFailureUnconfirmed counts a grant's failed write that the
// health monitor's own write did not confirm.
func (m *Metrics) StoreWriteFailureUnconfirmed() { m.storeBehind.Inc() }

// OlderVerifiers sets how many older verifier instances are connected.
func (m *Metrics) OlderVerifiers(n int) { m.olderPeers.Set(float64(n)) }

// Registry is where the series are registered (served at /metrics).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Tamper counts a tamper signal of kind.
func (m *Metrics) Tamper(kind string) { m.tamper.WithLabelValues(kind).Inc() }

// KnownTamperKinds makes each kind's series exist at 0 from the start, so
// that rate() and increase() see the first signal of each (a series that
// appears at 1 has no increase).
func (m *Metrics) KnownTamperKinds(kinds ...string) {
	for _, k := range kinds {
		m.tamper.WithLabelValues(k)
	}
}

// Shed counts a callout dropped unanswered (the server stopped waiting).
func (m *Metrics) Shed() { m.shed.Inc() }

// AuditAppended records how long one audit append took.
func (m *Metrics) AuditAppended(d time.Duration) { m.auditAppend.Observe(d.Seconds()) }

// auditStream is the audit writer's state (auditlog.Log).
type auditStream interface {
	Usage() (bytes uint64, maxBytes int64)
	Failing() bool
	AppendFailures() uint64
	Dropped() uint64
}

// WatchAuditStream exports the audit stream's size and limit, whether
// appends fail now, and the failed appends and dropped events so far: alert
// on size/max > 0.8 and on failing == 1 (the verifier then refuses
// connects).
func (m *Metrics) WatchAuditStream(a auditStream) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tpmauthn_audit_stream_bytes", Help: "Bytes the audit stream holds (as of its last look, every audit.watch_every).",
		}, func() float64 { b, _ := a.Usage(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tpmauthn_audit_stream_max_bytes", Help: "The audit stream's max bytes (-1: no bound). When full, appends fail and connects are refused.",
		}, func() float64 { _, m := a.Usage(); return float64(m) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tpmauthn_audit_append_failing", Help: "1 while audit appends fail (the stream full, JetStream away).",
		}, func() float64 {
			if a.Failing() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tpmauthn_audit_append_failures_total", Help: "Failed audit appends, each retry counted.",
		}, func() float64 { return float64(a.AppendFailures()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tpmauthn_audit_events_dropped_total", Help: "Audit events dropped because the queue was full while appends failed.",
		}, func() float64 { return float64(a.Dropped()) }),
	)
}
