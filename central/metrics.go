package central

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// backendCalls exports broker.Roots' call counts as
// keybroker_backend_calls_total{backend, op}: every call the central node
// makes to a root of trust, whatever the backend, so the effect of the
// material, data-key and unwrap caches can be read off one counter.
//
// keybroker_backend_budget_refusals_total{backend, op} counts the calls
// refused because the principal had spent its backend budget.
type backendCalls struct {
	roots   *broker.Roots
	desc    *prometheus.Desc
	refused *prometheus.Desc
}

func newBackendCalls(roots *broker.Roots) *backendCalls {
	return &backendCalls{roots: roots, desc: prometheus.NewDesc("keybroker_backend_calls_total",
		"Calls made to a root of trust, by backend and operation (derive, unwrap, wrap, random, wrap-data-key, unwrap-data-key, sign, mac, describe, public-key).",
		[]string{"backend", "op"}, nil),
		refused: prometheus.NewDesc("keybroker_backend_budget_refusals_total",
			"Calls to a root of trust refused because the principal had spent its backend budget, by backend and operation.",
			[]string{"backend", "op"}, nil)}
}

func (b *backendCalls) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.desc
	ch <- b.refused
}

func (b *backendCalls) Collect(ch chan<- prometheus.Metric) {
	for k, n := range b.roots.Calls() {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.CounterValue, float64(n), k.Backend, k.Op)
	}
	for k, n := range b.roots.Refused() {
		ch <- prometheus.MustNewConstMetric(b.refused, prometheus.CounterValue, float64(n), k.Backend, k.Op)
	}
}
