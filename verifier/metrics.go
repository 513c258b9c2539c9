package verifier

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tpmauthn/tpmauthn/api"
)

// metrics are per Verifier (a registry of its own, not the global one).
type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	enrollments   *prometheus.CounterVec
	registrations *prometheus.CounterVec
	tamper        *prometheus.CounterVec
	auditAppend   prometheus.Histogram
	shed          prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
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
	}
	m.reg.MustRegister(m.requests, m.latency, m.enrollments, m.registrations, m.tamper, m.auditAppend, m.shed,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// observe records one request's outcome.
func (m *metrics) observe(subject string, err error, took time.Duration) {
	result := "ok"
	if err != nil {
		result, _ = errorCode(err)
		if errors.Is(err, errDenied) || subject == calloutSubject {
			result = "denied"
		}
	}
	m.requests.WithLabelValues(subject, result).Inc()
	m.latency.WithLabelValues(subject).Observe(took.Seconds())
	switch subject {
	case api.SubjectEnrollBegin:
		if err != nil { // a refusal at begin is a refused enrollment
			m.enrollments.WithLabelValues(result).Inc()
		}
	case api.SubjectEnrollFinish:
		m.enrollments.WithLabelValues(result).Inc()
	case api.SubjectRegisterFinish:
		m.registrations.WithLabelValues(result).Inc()
	}
}

// watchAuditBacklog exports the events recorded but not yet appended: a
// backlog that keeps growing means the audit trail is falling behind.
func (m *metrics) watchAuditBacklog(backlog func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_audit_backlog", Help: "Audit events recorded but not yet appended to the stream.",
	}, func() float64 { return float64(backlog()) }))
}
