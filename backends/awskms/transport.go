package awskms

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/backends"
)

// retryBaseDelay is the ceiling of the first retry's delay; it doubles with
// every attempt up to Config.MaxBackoff. The SDK's own default starts at one
// second, far longer than a key-broker request should wait.
const retryBaseDelay = 50 * time.Millisecond

// newRetryer builds the SDK's standard retryer (throttling, 5xx and
// connection errors retried; a client-side retry quota that stops retry
// storms in an outage) with full-jitter exponential backoff.
func newRetryer(c Config) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		// No client-side retry quota: every attempt, retries included,
		// already waits for a token of the backend's own rate limit
		// (Config.RateLimit), which is what bounds a retry storm. The
		// SDK's quota (500 tokens, 5 a retry, 1 back a success) runs dry
		// after a few hundred calls under sustained throttling of half the
		// calls, and from then on every throttled call fails at once.
		o.RateLimiter = ratelimit.None
		o.MaxAttempts = c.MaxAttempts
		o.MaxBackoff = c.MaxBackoff
		o.Backoff = fullJitter{base: min(retryBaseDelay, c.MaxBackoff), max: c.MaxBackoff}
		o.Retryables = append(o.Retryables, retry.RetryableErrorCode{Codes: map[string]struct{}{
			// Transient service-side failures whose HTTP status alone may
			// not mark them retryable.
			"KMSInternalException":       {},
			"DependencyTimeoutException": {},
			"KeyUnavailableException":    {},
		}})
	})
}

// fullJitter is "full jitter" exponential backoff: attempt n (from 1) waits
// a uniformly random time in [0, min(max, base·2ⁿ⁻¹)].
type fullJitter struct{ base, max time.Duration }

func (j fullJitter) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	ceiling := j.max
	if attempt < 31 {
		ceiling = min(j.max, j.base<<(attempt-1))
	}
	if ceiling <= 0 {
		return 0, nil
	}
	return rand.N(ceiling + 1), nil
}

// callState follows one backend call through the SDK's retry loop.
type callState struct {
	op       string
	attempts atomic.Int32
}

type callStateKey struct{}

// attemptMiddleware runs once per attempt, inside the SDK's retry loop and
// before signing: it counts the attempt and takes a rate-limit token, so
// retries are paced and counted like first attempts.
type attemptMiddleware struct {
	limiter *rate.Limiter
	metrics *metrics
}

func (*attemptMiddleware) ID() string { return "KeybrokerRateLimit" }

func (m *attemptMiddleware) HandleFinalize(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (
	middleware.FinalizeOutput, middleware.Metadata, error,
) {
	op := "unknown"
	if st, ok := ctx.Value(callStateKey{}).(*callState); ok {
		st.attempts.Add(1)
		op = st.op
	}
	start := time.Now()
	if err := m.limiter.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return middleware.FinalizeOutput{}, middleware.Metadata{}, ctx.Err()
		}
		// rate.Limiter refuses at once when the wait would outlast the
		// deadline; say so in terms of the deadline.
		return middleware.FinalizeOutput{}, middleware.Metadata{}, &limitError{err: err}
	}
	m.metrics.observeWait(op, time.Since(start))
	return next.HandleFinalize(ctx, in)
}

// limitError reports that no rate-limit token could be had before the
// caller's deadline. It is not retried: the deadline will not move.
type limitError struct{ err error }

func (e *limitError) Error() string {
	return "outbound rate limit: no request token before the context deadline (" + e.err.Error() + ")"
}

func (e *limitError) Unwrap() error        { return context.DeadlineExceeded }
func (e *limitError) RetryableError() bool { return false }

// metrics are the backend's Prometheus collectors; a nil *metrics records
// nothing. Labels are the operation and the error code: both closed sets.
type metrics struct {
	calls    *prometheus.CounterVec
	retries  *prometheus.CounterVec
	wait     *prometheus.HistogramVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "awskms", Name: "calls_total",
			Help: "AWS KMS backend calls by operation and result code.",
		}, []string{"op", "code"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "awskms", Name: "retries_total",
			Help: "Attempts beyond the first made by the SDK retryer, by operation.",
		}, []string{"op"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keybroker", Subsystem: "awskms", Name: "ratelimit_wait_seconds",
			Help:    "Time an attempt waited for an outbound rate-limit token (queue time).",
			Buckets: []float64{.0001, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keybroker", Subsystem: "awskms", Name: "call_duration_seconds",
			Help:    "Duration of backend calls, retries and rate-limit waits included.",
			Buckets: prometheus.DefBuckets,
		}, []string{"op"}),
	}
	var err error
	if m.calls, err = backends.RegisterCollector(reg, m.calls); err != nil {
		return nil, err
	}
	if m.retries, err = backends.RegisterCollector(reg, m.retries); err != nil {
		return nil, err
	}
	if m.wait, err = backends.RegisterCollector(reg, m.wait); err != nil {
		return nil, err
	}
	if m.duration, err = backends.RegisterCollector(reg, m.duration); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) observeWait(op string, d time.Duration) {
	if m != nil {
		m.wait.WithLabelValues(op).Observe(d.Seconds())
	}
}

func (m *metrics) observeCall(op, code string, retries int, d time.Duration) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(op, code).Inc()
	if retries > 0 {
		m.retries.WithLabelValues(op).Add(float64(retries))
	}
	m.duration.WithLabelValues(op).Observe(d.Seconds())
}
