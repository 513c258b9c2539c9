package agent

import (
	"crypto/x509"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// agentMetrics: TPM command latency by command, the TPM queue's depth, and
// assertions by workload and result.
type agentMetrics struct {
	reg        *prometheus.Registry
	tpm        *prometheus.HistogramVec
	assertions *prometheus.CounterVec
}

func newAgentMetrics(q *tpmQueue) *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		tpm: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tpmauthn_agent_tpm_command_seconds", Help: "TPM command latency, by command and result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"command", "result"}),
		assertions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tpmauthn_agent_assertions_total", Help: "Assertions and NATS signatures, by workload and result.",
		}, []string{"workload", "kind", "result"}),
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_agent_tpm_queue_depth", Help: "Requests waiting for the TPM.",
	}, func() float64 { return float64(q.Depth()) })
	refused := func(reason string, n *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tpmauthn_agent_tpm_refused_total", Help: "Requests the TPM queue refused without running them, by reason.",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(n.Load()) })
	}
	late := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tpmauthn_agent_tpm_late_total",
		Help: "TPM jobs that finished after their request's deadline: TPM time spent on an answer nobody waits for.",
	}, func() float64 { return float64(q.stats.late.Load()) })
	turns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_agent_nats_turn_waiting", Help: "NATS handshakes waiting for a turn at the TPM.",
	}, func() float64 { return float64(q.TurnsWaiting()) })
	estimate := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_agent_tpm_job_estimate_seconds", Help: "How long the queue expects a TPM job to take (moving mean).",
	}, func() float64 { return q.Estimate().Seconds() })
	m.reg.MustRegister(m.tpm, m.assertions, depth, late, turns, estimate, refused("busy", &q.stats.busy), refused("deadline", &q.stats.deadline),
		refused("expected_wait", &q.stats.overloaded), prometheus.NewGoCollector())
	return m
}

func (m *agentMetrics) observeTPM(command string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.tpm.WithLabelValues(command, result).Observe(took.Seconds())
}

func (m *agentMetrics) assertion(workload, kind string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.assertions.WithLabelValues(workload, kind, result).Inc()
}

// watchAKCertificate exports when the AK certificate expires (Unix
// seconds; 0: none), read at each scrape: the verifier renews it at
// registration when a third of its validity is left, so an alert on it
// catches a host that stopped renewing.
func (m *agentMetrics) watchAKCertificate(der func() []byte) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tpmauthn_agent_ak_certificate_expiry_seconds", Help: "When this host's AK certificate expires (Unix seconds; 0: none yet).",
	}, func() float64 {
		c, err := x509.ParseCertificate(der())
		if err != nil {
			return 0
		}
		return float64(c.NotAfter.Unix())
	}))
}
