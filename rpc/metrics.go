package rpc

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Metrics counts gRPC calls by method and code and times them.
type Metrics struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers keybroker_grpc_requests_total and
// keybroker_grpc_request_duration_seconds with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "grpc", Name: "requests_total",
			Help: "gRPC calls by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keybroker", Subsystem: "grpc", Name: "request_duration_seconds",
			Help: "gRPC call duration by method.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"method"}),
	}
	reg.MustRegister(m.calls, m.duration)
	return m
}

// Interceptor counts calls; methods are a fixed set, so labels are bounded.
func (m *Metrics) Interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.calls.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	return resp, err
}
