package backends

//go:generate go run ./internal/geninstrument

import (
	"context"
	"crypto"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/secret"
)

// Call names one kind of call to a root of trust: the backend's configured
// name and the operation, as the metrics, the audit line and the budget
// see them.
type Call struct{ Backend, Op string }

// Operation names a call gets when its context names none (WithOp).
const (
	OpEncrypt         = "encrypt"
	OpDecrypt         = "decrypt"
	OpMAC             = "mac"
	OpVerifyMAC       = "verify-mac"
	OpSign            = "sign"
	OpPublicKey       = "public-key"
	OpDescribe        = "describe"
	OpRandom          = "random"
	OpGenerateDataKey = "generate-data-key"
	OpCreateKey       = "create-key"
	OpHealth          = "health"
)

type opKey struct{}

// WithOp returns a context under which the next backend call is counted,
// timed and audited as op instead of its method's name: the central tier
// says what a call is for ("derive" for a MAC, "wrap-data-key" for an
// Encrypt), so one counter tells derivations from backend-mode MACs. op
// must come from a closed set: it is a metric label.
func WithOp(ctx context.Context, op string) context.Context {
	return context.WithValue(ctx, opKey{}, op)
}

// InstrumentOptions configures Instrument.
type InstrumentOptions struct {
	// Name is the backend's configured name: the backend label of the
	// metrics and the "backend" in the audit line's "backend:op".
	Name string
	// Scheme names the backend in validation errors (backends.Error's
	// Backend); empty means Name.
	Scheme string
	// Metrics receives one observation per call; nil records none.
	Metrics *Metrics
	// Admit, if set, is asked before each call is made (after its
	// arguments are checked, never for Health or Close). An error refuses
	// the call: the inner backend is not called, and the call is neither
	// counted nor audited. The central tier charges the caller's budget
	// here.
	Admit func(ctx context.Context, c Call) error
	// Logger, if set, traces every call at debug level: backend, op,
	// outcome and duration, never a key name or data.
	Logger *slog.Logger
}

// Instrument returns b behind the decorator every root of trust goes
// through. Each call, in order:
//
//   - has its arguments checked with the Check* validators (the limits of
//     the most restrictive backend), and is refused with ErrInvalidArgument
//     before the inner backend sees it;
//   - is admitted (InstrumentOptions.Admit), counted in Metrics, and noted
//     in the request's audit trace (audit.NoteBackendCall) as
//     "Name:op", op being the context's WithOp or the method's name;
//   - is timed, and observed with its outcome (CodeOf) in Metrics, and
//     traced to the Logger.
//
// The result implements exactly the optional interfaces (MACer, Signer,
// KeyCreator, DataKeyGenerator, HealthChecker, CreatesAlgorithms) that b
// does, so CapabilitiesOf and type assertions see through it. Instrumenting
// an instrumented backend replaces the options rather than stacking a second
// decorator. Health is timed but neither admitted, counted nor audited, and
// Close passes straight through: they are the process's, not a request's.
func Instrument(b Backend, opts InstrumentOptions) Backend {
	if ib, ok := b.(interface{ instrumentedBackend() *instrumented }); ok {
		b = ib.instrumentedBackend().inner
	}
	if opts.Scheme == "" {
		opts.Scheme = opts.Name
	}
	i := &instrumented{inner: b, opts: opts}
	mask := 0
	for bit, ok := range []bool{
		is[MACer](b), is[Signer](b), is[KeyCreator](b), is[DataKeyGenerator](b),
		is[HealthChecker](b), is[CreatesAlgorithms](b),
	} {
		if ok {
			mask |= 1 << bit
		}
	}
	return withCapabilities(i, mask)
}

// InstrumentOpen returns an OpenFunc that opens a backend with open and puts
// it behind Instrument, named by scheme and recording no metrics: a
// registry of such functions hands out only checked backends.
func InstrumentOpen(scheme string, open OpenFunc) OpenFunc {
	return func(ctx context.Context, uri string, opts Options) (Backend, error) {
		b, err := open(ctx, uri, opts)
		if err != nil {
			return nil, err
		}
		return Instrument(b, InstrumentOptions{Name: scheme, Scheme: scheme, Logger: opts.Logger}), nil
	}
}

// Uninstrumented returns the backend Instrument wrapped, or b itself.
func Uninstrumented(b Backend) Backend {
	if ib, ok := b.(interface{ instrumentedBackend() *instrumented }); ok {
		return ib.instrumentedBackend().inner
	}
	return b
}

func is[I any](b Backend) bool {
	_, ok := b.(I)
	return ok
}

type instrumented struct {
	inner Backend
	opts  InstrumentOptions
}

func (i *instrumented) instrumentedBackend() *instrumented { return i }

// begin admits, counts and audits a call whose arguments passed their
// checks, and returns its op.
func (i *instrumented) begin(ctx context.Context, method string) (string, error) {
	op := method
	if o, ok := ctx.Value(opKey{}).(string); ok && o != "" {
		op = o
	}
	if i.opts.Admit != nil {
		if err := i.opts.Admit(ctx, Call{i.opts.Name, op}); err != nil {
			return op, err
		}
	}
	i.opts.Metrics.count(Call{i.opts.Name, op})
	audit.NoteBackendCall(ctx, i.opts.Name, op)
	return op, nil
}

// end observes a call that was made (or refused for its arguments).
func (i *instrumented) end(ctx context.Context, op string, start time.Time, err error) {
	d := time.Since(start)
	code := CodeOf(err)
	i.opts.Metrics.observe(i.opts.Name, op, code, d)
	if l := i.opts.Logger; l != nil && l.Enabled(ctx, slog.LevelDebug) {
		l.LogAttrs(ctx, slog.LevelDebug, "backend call", slog.String("backend", i.opts.Name),
			slog.String("op", op), slog.String("outcome", string(code)), slog.Duration("duration", d))
	}
}

// refuse observes a call refused for its arguments.
func (i *instrumented) refuse(ctx context.Context, method string, err error) error {
	op := method
	if o, ok := ctx.Value(opKey{}).(string); ok && o != "" {
		op = o
	}
	i.end(ctx, op, time.Now(), err)
	return err
}

func (i *instrumented) Encrypt(ctx context.Context, key string, plaintext, aad []byte) (out []byte, err error) {
	if err := CheckEncrypt(i.opts.Scheme, key, plaintext, aad); err != nil {
		return nil, i.refuse(ctx, OpEncrypt, err)
	}
	op, err := i.begin(ctx, OpEncrypt)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, err = i.inner.Encrypt(ctx, key, plaintext, aad)
	i.end(ctx, op, start, err)
	return out, err
}

func (i *instrumented) Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (out *secret.Bytes, err error) {
	if err := CheckDecrypt(i.opts.Scheme, key, ciphertext, aad); err != nil {
		return nil, i.refuse(ctx, OpDecrypt, err)
	}
	op, err := i.begin(ctx, OpDecrypt)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, err = i.inner.Decrypt(ctx, key, ciphertext, aad)
	i.end(ctx, op, start, err)
	return out, err
}

func (i *instrumented) GenerateRandom(ctx context.Context, n int) (out []byte, err error) {
	if err := CheckRandom(i.opts.Scheme, n); err != nil {
		return nil, i.refuse(ctx, OpRandom, err)
	}
	op, err := i.begin(ctx, OpRandom)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, err = i.inner.GenerateRandom(ctx, n)
	i.end(ctx, op, start, err)
	return out, err
}

func (i *instrumented) Describe(ctx context.Context, key string) (info KeyInfo, err error) {
	if key == "" {
		return KeyInfo{}, i.refuse(ctx, OpDescribe, Errorf(i.opts.Scheme, OpDescribe, key, ErrInvalidArgument, "empty key name"))
	}
	op, err := i.begin(ctx, OpDescribe)
	if err != nil {
		return KeyInfo{}, err
	}
	start := time.Now()
	info, err = i.inner.Describe(ctx, key)
	i.end(ctx, op, start, err)
	return info, err
}

func (i *instrumented) Close() error { return i.inner.Close() }

type macMethods struct{ i *instrumented }

func (m macMethods) MAC(ctx context.Context, key string, data []byte) (out *secret.Bytes, err error) {
	i := m.i
	if err := CheckMAC(i.opts.Scheme, OpMAC, key, data); err != nil {
		return nil, i.refuse(ctx, OpMAC, err)
	}
	op, err := i.begin(ctx, OpMAC)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, err = i.inner.(MACer).MAC(ctx, key, data)
	i.end(ctx, op, start, err)
	return out, err
}

func (m macMethods) VerifyMAC(ctx context.Context, key string, data, tag []byte) (err error) {
	i := m.i
	if err := CheckMAC(i.opts.Scheme, OpVerifyMAC, key, data); err != nil {
		return i.refuse(ctx, OpVerifyMAC, err)
	}
	op, err := i.begin(ctx, OpVerifyMAC)
	if err != nil {
		return err
	}
	start := time.Now()
	err = i.inner.(MACer).VerifyMAC(ctx, key, data, tag)
	i.end(ctx, op, start, err)
	return err
}

type signMethods struct{ i *instrumented }

func (s signMethods) Sign(ctx context.Context, key string, digest []byte) (out []byte, err error) {
	i := s.i
	if err := CheckSign(i.opts.Scheme, key, digest); err != nil {
		return nil, i.refuse(ctx, OpSign, err)
	}
	op, err := i.begin(ctx, OpSign)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, err = i.inner.(Signer).Sign(ctx, key, digest)
	i.end(ctx, op, start, err)
	return out, err
}

func (s signMethods) PublicKey(ctx context.Context, key string) (pub crypto.PublicKey, err error) {
	i := s.i
	if key == "" {
		return nil, i.refuse(ctx, OpPublicKey, Errorf(i.opts.Scheme, OpPublicKey, key, ErrInvalidArgument, "empty key name"))
	}
	op, err := i.begin(ctx, OpPublicKey)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	pub, err = i.inner.(Signer).PublicKey(ctx, key)
	i.end(ctx, op, start, err)
	return pub, err
}

type createMethods struct{ i *instrumented }

func (c createMethods) CreateKey(ctx context.Context, name string, alg Algorithm) (info KeyInfo, err error) {
	i := c.i
	if !alg.Valid() {
		return KeyInfo{}, i.refuse(ctx, OpCreateKey, Errorf(i.opts.Scheme, OpCreateKey, name, ErrInvalidArgument, "unknown algorithm %q", alg))
	}
	op, err := i.begin(ctx, OpCreateKey)
	if err != nil {
		return KeyInfo{}, err
	}
	start := time.Now()
	info, err = i.inner.(KeyCreator).CreateKey(ctx, name, alg)
	i.end(ctx, op, start, err)
	return info, err
}

type dataKeyMethods struct{ i *instrumented }

func (d dataKeyMethods) GenerateDataKey(ctx context.Context, key string, aad []byte) (dek *secret.Bytes, wrapped []byte, err error) {
	i := d.i
	if err := CheckDataKey(i.opts.Scheme, key, aad); err != nil {
		return nil, nil, i.refuse(ctx, OpGenerateDataKey, err)
	}
	op, err := i.begin(ctx, OpGenerateDataKey)
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	dek, wrapped, err = i.inner.(DataKeyGenerator).GenerateDataKey(ctx, key, aad)
	i.end(ctx, op, start, err)
	return dek, wrapped, err
}

type healthMethods struct{ i *instrumented }

// Health is timed and observed, but neither admitted, counted nor audited:
// probes are the process's, not a request's.
func (h healthMethods) Health(ctx context.Context) error {
	start := time.Now()
	err := h.i.inner.(HealthChecker).Health(ctx)
	h.i.end(ctx, OpHealth, start, err)
	return err
}

type algorithmsMethods struct{ i *instrumented }

func (a algorithmsMethods) CreatableAlgorithms() []Algorithm {
	return a.i.inner.(CreatesAlgorithms).CreatableAlgorithms()
}

// Metrics holds what Instrument records, for every backend of a process.
// It is a prometheus.Collector exporting
//
//   - keybroker_backend_calls_total{backend, op}: calls made to a root of
//     trust (admitted, whatever their outcome), so the effect of the
//     material, data-key and unwrap caches can be read off one counter;
//   - keybroker_backend_call_duration_seconds{backend, op, outcome}: how
//     long each call took, outcome being its Code (arguments refused by
//     the checks are observed as invalid_argument with no duration to
//     speak of).
//
// A nil *Metrics records nothing.
type Metrics struct {
	calls    sync.Map // Call → *atomic.Uint64
	callDesc *prometheus.Desc
	seconds  *prometheus.HistogramVec
	// observers memoizes seconds' children: a label lookup hashes every
	// value on each call, and the label set is small and closed.
	observers sync.Map // observerKey → prometheus.Observer
}

type observerKey struct {
	backend, op string
	code        Code
}

// NewMetrics returns an empty Metrics, registered nowhere.
func NewMetrics() *Metrics {
	return &Metrics{
		callDesc: prometheus.NewDesc("keybroker_backend_calls_total",
			"Calls made to a root of trust, by backend and operation (derive, unwrap, wrap, random, wrap-data-key, unwrap-data-key, sign, mac, describe, public-key).",
			[]string{"backend", "op"}, nil),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_backend_call_duration_seconds",
			Help:    "Duration of calls to a root of trust, by backend, operation and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"backend", "op", "outcome"}),
	}
}

func (m *Metrics) count(c Call) {
	if m == nil {
		return
	}
	v, ok := m.calls.Load(c)
	if !ok {
		v, _ = m.calls.LoadOrStore(c, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

func (m *Metrics) observe(backend, op string, code Code, d time.Duration) {
	if m == nil {
		return
	}
	k := observerKey{backend, op, code}
	o, ok := m.observers.Load(k)
	if !ok {
		o, _ = m.observers.LoadOrStore(k, m.seconds.WithLabelValues(backend, op, string(code)))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
}

// Calls returns the number of calls made, by backend and op.
func (m *Metrics) Calls() map[Call]uint64 {
	out := map[Call]uint64{}
	if m == nil {
		return out
	}
	m.calls.Range(func(k, v any) bool {
		out[k.(Call)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.callDesc
	m.seconds.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for c, n := range m.Calls() {
		ch <- prometheus.MustNewConstMetric(m.callDesc, prometheus.CounterValue, float64(n), c.Backend, c.Op)
	}
	m.seconds.Collect(ch)
}
