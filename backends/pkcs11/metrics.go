package pkcs11

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/backends"
)

// Operation names: the op label of the metrics and the Op of errors. The set
// is closed, so the label's cardinality is bounded.
const (
	opOpen        = "open"
	opEncrypt     = "encrypt"
	opDecrypt     = "decrypt"
	opMAC         = "mac"
	opVerifyMAC   = "verify-mac"
	opSign        = "sign"
	opPublicKey   = "public-key"
	opDescribe    = "describe"
	opRandom      = "generate-random"
	opDataKey     = "generate-data-key"
	opCreateKey   = "create-key"
	opWrapKWP     = "wrap-kwp"
	opUnwrapKWP   = "unwrap-kwp"
	opHealth      = "health"
	metricsPrefix = "keybroker_pkcs11_"
)

var allOps = []string{opEncrypt, opDecrypt, opMAC, opVerifyMAC, opSign, opPublicKey, opDescribe,
	opRandom, opDataKey, opCreateKey, opWrapKWP, opUnwrapKWP, opHealth}

// metrics are the backend's Prometheus collectors. A nil *metrics records
// nothing. Every series carries a token label (the configured token's
// label or serial: one value per configured token) and never a key name.
type metrics struct {
	sessionsOpen  prometheus.Gauge
	sessionsInUse prometheus.Gauge
	waiters       prometheus.Gauge
	ops           *prometheus.CounterVec
	opsOK         map[string]prometheus.Counter
	poolWait      prometheus.Observer
	opSeconds     map[string]prometheus.Observer
	recoveries    *prometheus.CounterVec
	breakerState  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, token string) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	cl := prometheus.Labels{"token": token}
	m := &metrics{}
	var err error
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: metricsPrefix + name, Help: help, ConstLabels: cl})
		g, err = register(reg, g, err)
		return g
	}
	m.sessionsOpen = gauge("sessions_open", "PKCS#11 sessions open in the pool (excluding the login session).")
	m.sessionsInUse = gauge("sessions_in_use", "PKCS#11 sessions currently lent to an operation.")
	m.waiters = gauge("pool_waiters", "Operations waiting for a free PKCS#11 session.")
	m.breakerState = gauge("breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.")

	ops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricsPrefix + "operations_total", Help: "PKCS#11 backend operations by operation and result code.", ConstLabels: cl,
	}, []string{"op", "code"})
	m.ops, err = register(reg, ops, err)

	wait := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: metricsPrefix + "pool_wait_seconds", Help: "Time an operation waited for a PKCS#11 session.", ConstLabels: cl,
		Buckets: []float64{1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1, 10},
	})
	var w prometheus.Histogram
	w, err = register(reg, wait, err)
	m.poolWait = w

	secs := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: metricsPrefix + "operation_seconds", Help: "Time an operation spent on its PKCS#11 session (excluding the pool wait).", ConstLabels: cl,
		Buckets: []float64{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1, 1},
	}, []string{"op"})
	secs, err = register(reg, secs, err)

	rec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricsPrefix + "recoveries_total", Help: "Recoveries from lost sessions, stale handles and module failures, by kind and result.", ConstLabels: cl,
	}, []string{"kind", "result"})
	m.recoveries, err = register(reg, rec, err)
	if err != nil {
		return nil, err
	}
	m.opsOK = make(map[string]prometheus.Counter, len(allOps))
	m.opSeconds = make(map[string]prometheus.Observer, len(allOps))
	for _, op := range allOps {
		m.opsOK[op] = m.ops.WithLabelValues(op, string(backends.CodeOK))
		m.opSeconds[op] = secs.WithLabelValues(op)
	}
	return m, nil
}

// register chains backends.RegisterCollector calls, stopping at the first
// error.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, prev error) (C, error) {
	if prev != nil {
		return c, prev
	}
	return backends.RegisterCollector(reg, c)
}

func (m *metrics) gauges() poolGauges {
	if m == nil {
		return poolGauges{}
	}
	return poolGauges{open: m.sessionsOpen.Add, inUse: m.sessionsInUse.Add, waiting: m.waiters.Add}
}

func (m *metrics) observeWait(d time.Duration) {
	if m != nil {
		m.poolWait.Observe(d.Seconds())
	}
}

func (m *metrics) observeOp(op string, d time.Duration) {
	if m != nil {
		if o := m.opSeconds[op]; o != nil {
			o.Observe(d.Seconds())
		}
	}
}

func (m *metrics) count(op string, err error) {
	if m == nil {
		return
	}
	if err == nil {
		if c := m.opsOK[op]; c != nil {
			c.Inc()
			return
		}
	}
	m.ops.WithLabelValues(op, string(backends.CodeOf(err))).Inc()
}

func (m *metrics) recovery(kind recovery, ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "failed"
	}
	m.recoveries.WithLabelValues(kind.String(), result).Inc()
}

func (m *metrics) breaker(s BreakerState) {
	if m != nil {
		m.breakerState.Set(float64(s))
	}
}
