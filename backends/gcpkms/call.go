package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	gax "github.com/googleapis/gax-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keybroker/keybroker/backends"
)

// kmsClient is what the backend asks of Cloud KMS: the methods of
// *kms.KeyManagementClient it calls, so tests can stand between the backend
// and the real client.
type kmsClient interface {
	Encrypt(context.Context, *kmspb.EncryptRequest, ...gax.CallOption) (*kmspb.EncryptResponse, error)
	Decrypt(context.Context, *kmspb.DecryptRequest, ...gax.CallOption) (*kmspb.DecryptResponse, error)
	MacSign(context.Context, *kmspb.MacSignRequest, ...gax.CallOption) (*kmspb.MacSignResponse, error)
	MacVerify(context.Context, *kmspb.MacVerifyRequest, ...gax.CallOption) (*kmspb.MacVerifyResponse, error)
	AsymmetricSign(context.Context, *kmspb.AsymmetricSignRequest, ...gax.CallOption) (*kmspb.AsymmetricSignResponse, error)
	GetPublicKey(context.Context, *kmspb.GetPublicKeyRequest, ...gax.CallOption) (*kmspb.PublicKey, error)
	GenerateRandomBytes(context.Context, *kmspb.GenerateRandomBytesRequest, ...gax.CallOption) (*kmspb.GenerateRandomBytesResponse, error)
	GetCryptoKey(context.Context, *kmspb.GetCryptoKeyRequest, ...gax.CallOption) (*kmspb.CryptoKey, error)
	GetCryptoKeyVersion(context.Context, *kmspb.GetCryptoKeyVersionRequest, ...gax.CallOption) (*kmspb.CryptoKeyVersion, error)
	CreateCryptoKey(context.Context, *kmspb.CreateCryptoKeyRequest, ...gax.CallOption) (*kmspb.CryptoKey, error)
	Close() error
}

var _ kmsClient = (*kms.KeyManagementClient)(nil)

// oneShot turns off the client library's own retries and per-call timeout
// for one attempt: the backend's loop retries, and deadlines come from the
// caller's context.
var oneShot = []gax.CallOption{gax.WithRetry(nil), gax.WithTimeout(0)}

// ErrIntegrity is the cause of an error whose response failed an integrity
// check: a verified_* flag false for a checksum that was sent, a response
// checksum that does not match its data, a response naming another
// resource, or a request checksum the service found wrong. Such errors are
// classified backends.ErrUnavailable (so backends.Retryable holds) and no
// data from the response is returned.
var ErrIntegrity = errors.New("integrity check failed")

func integrityf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrIntegrity}, args...)...)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the CRC32C of b in the form the API carries it.
func crc32c(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, castagnoli)))
}

// checkSum checks a response checksum against the data it covers.
func checkSum(field string, data []byte, sum *wrapperspb.Int64Value) error {
	switch {
	case sum == nil:
		return integrityf("response has no %s", field)
	case sum.GetValue() != int64(crc32.Checksum(data, castagnoli)):
		return integrityf("response %s does not match its data", field)
	}
	return nil
}

// checkVerified checks that the service says it verified a checksum sent.
func checkVerified(field string, verified bool) error {
	if !verified {
		return integrityf("service did not verify the request's %s", field)
	}
	return nil
}

// checkName checks that a response names the resource the request named.
func checkName(got, want string) error {
	if got != want {
		return integrityf("response names %q, want %q", got, want)
	}
	return nil
}

// call runs one RPC with the backend's retries; rpc makes one attempt and
// passes oneShot to the client. call refuses a closed backend and a done
// context before sending; check validates a response
// (and scrubs any secret in it when it fails). The result is either a
// checked response or a *backends.Error.
func call[T any](ctx context.Context, b *Backend, op, key string, attempts int,
	rpc func(context.Context) (T, error), check func(T) error) (T, error) {
	var zero T
	if b.closed.Load() {
		return zero, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "backend is closed")
	}
	if err := backends.ContextError(scheme, op, key, ctx); err != nil {
		return zero, err
	}
	var err error
	n := 1
	for ; ; n++ {
		var resp T
		resp, err = rpc(ctx)
		if err == nil {
			if err = check(resp); err == nil {
				return resp, nil
			}
		}
		if errors.Is(err, ErrIntegrity) || requestDamaged(err) {
			b.metrics.integrityFailure(op)
			b.logger.LogAttrs(ctx, slog.LevelWarn, "gcpkms integrity check failed",
				slog.String("op", op), slog.String("key", key), slog.Int("attempt", n), slog.Any("err", err))
		}
		if n >= attempts || !retryable(err) || ctx.Err() != nil || b.closed.Load() {
			break
		}
		b.metrics.retry(op)
		b.logger.LogAttrs(ctx, slog.LevelDebug, "gcpkms call retried",
			slog.String("op", op), slog.String("key", key), slog.Int("attempt", n), slog.Any("err", err))
		if sleep(ctx, b.backoff(n)) != nil {
			break
		}
	}
	if b.closed.Load() {
		return zero, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "backend is closed: %w", err)
	}
	kind, cause := classify(ctx, op, err)
	if n > 1 {
		cause = fmt.Errorf("%d attempts: %w", n, cause)
	}
	return zero, backends.NewError(scheme, op, key, kind, cause)
}

// retryable reports whether one attempt's failure is worth another try.
func retryable(err error) bool {
	if errors.Is(err, ErrIntegrity) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	case codes.InvalidArgument:
		return checksumRejected(st)
	}
	return false
}

// requestDamaged reports whether err is the service refusing a request
// whose checksum did not match.
func requestDamaged(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.InvalidArgument && checksumRejected(st)
}

// checksumRejected reports whether the service refused a request because a
// *_crc32c did not match its field: the request was damaged on the way.
func checksumRejected(st *status.Status) bool {
	msg := strings.ToLower(st.Message())
	return strings.Contains(msg, "checksum") || strings.Contains(msg, "crc32c")
}

// backoff is the pause after attempt n: exponential, capped, with the upper
// half jittered so that clients that failed together do not retry together.
func (b *Backend) backoff(n int) time.Duration {
	d := b.retry.InitialBackoff
	for i := 1; i < n && d < b.retry.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, b.retry.MaxBackoff)
	half := d / 2
	return half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// classify maps the last failure of an operation into the taxonomy. The
// cause keeps the gRPC status reachable (status.FromError and errors.As to
// interface{ GRPCStatus() *status.Status } both find it).
func classify(ctx context.Context, op string, err error) (kind, cause error) {
	if ctxErr := ctx.Err(); ctxErr != nil {
		kind = backends.ErrUnavailable
		if errors.Is(ctxErr, context.Canceled) {
			kind = context.Canceled
		}
		if err == nil || errors.Is(err, ctxErr) {
			return kind, ctxErr
		}
		return kind, fmt.Errorf("%w (last attempt: %w)", ctxErr, err)
	}
	if errors.Is(err, ErrIntegrity) {
		return backends.ErrUnavailable, err
	}
	st, ok := status.FromError(err)
	if !ok {
		// Not a status: the client could not reach or understand the service.
		return backends.ErrUnavailable, err
	}
	switch st.Code() {
	case codes.NotFound:
		return backends.ErrNotFound, err
	case codes.PermissionDenied, codes.Unauthenticated:
		return backends.ErrPermissionDenied, err
	case codes.InvalidArgument:
		switch {
		case checksumRejected(st):
			return backends.ErrUnavailable, fmt.Errorf("%w: the service rejected a request checksum: %w", ErrIntegrity, err)
		case op == "decrypt":
			// The service reports a wrong AAD, a tampered ciphertext and a
			// ciphertext from another key all as INVALID_ARGUMENT; the
			// arguments themselves were checked before sending.
			return backends.ErrDecryptionFailed, err
		}
		return backends.ErrInvalidArgument, err
	case codes.AlreadyExists, codes.OutOfRange:
		return backends.ErrInvalidArgument, err
	case codes.FailedPrecondition:
		// Both a key of the wrong purpose ("has incorrect key purpose") and
		// a version that is not ENABLED are FAILED_PRECONDITION; only the
		// message tells them apart.
		if strings.Contains(strings.ToLower(st.Message()), "purpose") {
			return backends.ErrInvalidArgument, err
		}
		return backends.ErrDisabled, err
	case codes.ResourceExhausted:
		return backends.ErrThrottled, err
	case codes.Unimplemented:
		return backends.ErrUnsupported, err
	}
	// Unavailable, DeadlineExceeded (the service's, the caller's context
	// being live), Internal, Unknown, Aborted, DataLoss, and Canceled by the
	// transport rather than the caller.
	return backends.ErrUnavailable, err
}

// ---- metrics ----

// metrics are the backend's Prometheus collectors; a nil *metrics records
// nothing. Labels are the operation and the error code, both closed sets:
// never a key name.
type metrics struct {
	calls     *prometheus.CounterVec
	retries   *prometheus.CounterVec
	integrity *prometheus.CounterVec
	duration  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "gcpkms", Name: "calls_total",
			Help: "GCP Cloud KMS backend operations by operation and result code.",
		}, []string{"op", "code"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "gcpkms", Name: "retries_total",
			Help: "RPC attempts beyond the first, by operation.",
		}, []string{"op"}),
		integrity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "keybroker", Subsystem: "gcpkms", Name: "integrity_failures_total",
			Help: "Responses discarded because a checksum, verified flag or resource name did not match, by operation.",
		}, []string{"op"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "keybroker", Subsystem: "gcpkms", Name: "call_duration_seconds",
			Help:    "Duration of backend operations, retries included.",
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
	if m.integrity, err = backends.RegisterCollector(reg, m.integrity); err != nil {
		return nil, err
	}
	if m.duration, err = backends.RegisterCollector(reg, m.duration); err != nil {
		return nil, err
	}
	return m, nil
}

// observe records a finished operation; used as
// defer b.metrics.observe(op, time.Now(), &err).
func (m *metrics) observe(op string, start time.Time, errp *error) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(op, string(backends.CodeOf(*errp))).Inc()
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (m *metrics) retry(op string) {
	if m != nil {
		m.retries.WithLabelValues(op).Inc()
	}
}

func (m *metrics) integrityFailure(op string) {
	if m != nil {
		m.integrity.WithLabelValues(op).Inc()
	}
}
