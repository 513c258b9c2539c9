package agent

import (
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
	m.reg.MustRegister(m.tpm, m.assertions, depth, prometheus.NewGoCollector())
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
