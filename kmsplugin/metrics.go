package kmsplugin

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// metrics are the plugin's Prometheus series. key_id has one value per
// key version used, so the label stays small.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	healthy  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_kmsplugin_requests_total",
			Help: "KMS v2 calls by operation, key_id and gRPC code.",
		}, []string{"op", "key_id", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keybroker_kmsplugin_request_duration_seconds",
			Help: "KMS v2 call latency by operation and key_id; each observation's exemplar is the apiserver's uid.",
			// 100 µs to ~3.3 s: a warm Decrypt at an edge is well under
			// a millisecond, the apiserver gives up at 3 s.
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16),
		}, []string{"op", "key_id"}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keybroker_kmsplugin_healthy",
			Help: "1 when the last Status answered healthz ok, else 0.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.healthy} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				return nil, errors.New("kmsplugin: metrics already registered: one Service per registerer")
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(op, keyID, uid string, code codes.Code, d time.Duration) {
	m.requests.WithLabelValues(op, keyID, code.String()).Inc()
	o := m.duration.WithLabelValues(op, keyID)
	// Only a uid keybroker would take as a request id becomes an
	// exemplar: client_golang panics on a label that is not UTF-8.
	if e, ok := o.(prometheus.ExemplarObserver); ok && uidRE.MatchString(uid) {
		e.ObserveWithExemplar(d.Seconds(), prometheus.Labels{"uid": uid})
		return
	}
	o.Observe(d.Seconds())
}
