package central

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// budgetRefusals exports keybroker_backend_budget_refusals_total{backend,
// op}: the calls to a root of trust refused because the principal had spent
// its backend budget. The calls made (keybroker_backend_calls_total) and
// their durations (keybroker_backend_call_duration_seconds) are recorded by
// the decorator every root is behind, and exported by broker.Roots.Metrics.
type budgetRefusals struct {
	roots   *broker.Roots
	refused *prometheus.Desc
}

func newBudgetRefusals(roots *broker.Roots) *budgetRefusals {
	return &budgetRefusals{roots: roots,
		refused: prometheus.NewDesc("keybroker_backend_budget_refusals_total",
			"Calls to a root of trust refused because the principal had spent its backend budget, by backend and operation.",
			[]string{"backend", "op"}, nil)}
}

func (b *budgetRefusals) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.refused
}

func (b *budgetRefusals) Collect(ch chan<- prometheus.Metric) {
	for k, n := range b.roots.Refused() {
		ch <- prometheus.MustNewConstMetric(b.refused, prometheus.CounterValue, float64(n), k.Backend, k.Op)
	}
}
