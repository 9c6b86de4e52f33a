package gcpkms

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	gax "github.com/googleapis/gax-go/v2"
	"github.com/googleapis/gax-go/v2/apierror"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest/gcpfake"
)

// everyOp runs each backend operation once; each must succeed.
func everyOp(t *testing.T, e *env, b *Backend) map[string]func() error {
	ctx := t.Context()
	ct, err := b.Encrypt(ctx, e.aes, []byte("x"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	tag, err := b.MAC(ctx, e.hmac, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	var seq atomic.Int32
	return map[string]func() error{
		"Encrypt": func() error { _, err := b.Encrypt(ctx, e.aes, []byte("x"), []byte("aad")); return err },
		"Decrypt": func() error { _, err := b.Decrypt(ctx, e.aes, ct, []byte("aad")); return err },
		"MacSign": func() error { _, err := b.MAC(ctx, e.hmac, []byte("x")); return err },
		"MacVerify": func() error {
			return b.VerifyMAC(ctx, e.hmac, []byte("x"), tag.Reveal())
		},
		"AsymmetricSign": func() error { _, err := b.Sign(ctx, e.ecdsa, make([]byte, 32)); return err },
		"GetPublicKey": func() error {
			b.pubs.Clear()
			_, err := b.PublicKey(ctx, e.ecdsa)
			return err
		},
		"GenerateRandomBytes": func() error { _, err := b.GenerateRandom(ctx, 32); return err },
		"GetCryptoKey":        func() error { _, err := b.Describe(ctx, e.aes); return err },
		"GetCryptoKeyVersion": func() error { _, err := b.Describe(ctx, e.hmac); return err },
		"CreateCryptoKey": func() error {
			_, err := b.CreateKey(ctx, "retried-"+string(rune('a'+seq.Add(1))), backends.AES256)
			return err
		},
	}
}

// TestEveryMethodRetriesUnavailable proves GCP UNAVAILABLE is retried on
// every RPC the backend makes, not only on Encrypt and Decrypt.
func TestEveryMethodRetriesUnavailable(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	for method, run := range everyOp(t, e, b) {
		t.Run(method, func(t *testing.T) {
			e.fake.ResetCalls()
			e.fake.SetFaults(gcpfake.Faults{FailNext: 3})
			defer e.fake.SetFaults(gcpfake.Faults{})
			if err := run(); err != nil {
				t.Fatalf("%s after 3 UNAVAILABLE answers: %v", method, err)
			}
			if n := e.fake.Calls(method); n != 4 {
				t.Errorf("%s calls = %d, want 4 (3 failures, 1 success)", method, n)
			}
		})
	}
}

func TestUnavailableFraction(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	ops := everyOp(t, e, b)
	e.fake.SetFaults(gcpfake.Faults{UnavailableFraction: 0.5})
	defer e.fake.SetFaults(gcpfake.Faults{})
	e.fake.ResetCalls()
	const rounds = 10
	for range rounds {
		for method, run := range ops {
			if err := run(); err != nil {
				t.Fatalf("%s with half the calls failing: %v", method, err)
			}
		}
	}
	if n := e.fake.TotalCalls(); n <= rounds*len(ops) {
		t.Errorf("%d calls for %d operations: no call was retried", n, rounds*len(ops))
	}
}

func TestUnavailableFractionConcurrent(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	// Concurrent callers share the fault pattern, so one caller can meet
	// several failures in a row; twenty attempts make running out of them
	// practically impossible.
	cfg.Retry.MaxAttempts = 20
	b := e.open(t, cfg)
	e.fake.SetFaults(gcpfake.Faults{UnavailableFraction: 0.5})
	defer e.fake.SetFaults(gcpfake.Faults{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	errs := make(chan error, 32)
	for range cap(errs) {
		go func() {
			var err error
			for range 8 {
				var ct []byte
				if ct, err = b.Encrypt(ctx, e.aes, []byte("x"), nil); err != nil {
					break
				}
				if _, err = b.Decrypt(ctx, e.aes, ct, nil); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("concurrent call with half the calls failing: %v", err)
		}
	}
}

func TestRetriesExhausted(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	e.fake.SetFaults(gcpfake.Faults{FailNext: 100})
	defer e.fake.SetFaults(gcpfake.Faults{})
	_, err := b.Encrypt(t.Context(), e.aes, []byte("x"), nil)
	wantKind(t, "Encrypt through persistent failures", err, backends.ErrUnavailable)
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable {
		t.Errorf("status.FromError(err).Code() = %v, want Unavailable", st.Code())
	}
	if n := e.fake.Calls("Encrypt"); n != fastRetry.MaxAttempts {
		t.Errorf("Encrypt calls = %d, want %d", n, fastRetry.MaxAttempts)
	}
}

// TestOutageEndsAtDeadline proves an outage is retried until the caller's
// deadline and no further, whether the service refuses at once or never
// answers.
func TestOutageEndsAtDeadline(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults gcpfake.Faults
	}{
		{"refusing", gcpfake.Faults{Outage: true}},
		{"silent", gcpfake.Faults{Outage: true, Latency: time.Hour}},
		{"slow", gcpfake.Faults{Latency: time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.config()
			cfg.Retry.MaxAttempts = 1 << 30
			b := e.open(t, cfg)
			e.fake.SetFaults(tc.faults)
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			_, err := b.Encrypt(ctx, e.aes, []byte("x"), nil)
			wantKind(t, "Encrypt during an outage", err, backends.ErrUnavailable)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
			}
			if backends.Retryable(err) {
				t.Errorf("backends.Retryable(%v) = true after the deadline, want false", err)
			}
		})
	}
}

// TestCanceledDuringRetries proves cancellation ends the retry loop with
// context.Canceled.
func TestCanceledDuringRetries(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.Retry.MaxAttempts = 1 << 30
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	b := e.openWith(t, cfg, func(c kmsClient) kmsClient { return &cancelAfter{kmsClient: c, n: 3, cancel: cancel} })
	e.fake.SetFaults(gcpfake.Faults{Outage: true})
	_, err := b.Encrypt(ctx, e.aes, []byte("x"), nil)
	wantKind(t, "Encrypt cancelled during an outage", err, context.Canceled)
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable {
		t.Errorf("last attempt's status = %v, want Unavailable", st.Code())
	}
}

// cancelAfter cancels the caller's context after n Encrypt attempts.
type cancelAfter struct {
	kmsClient
	n      int32
	calls  atomic.Int32
	cancel context.CancelFunc
}

func (c *cancelAfter) Encrypt(ctx context.Context, req *kmspb.EncryptRequest, o ...gax.CallOption) (*kmspb.EncryptResponse, error) {
	r, err := c.kmsClient.Encrypt(ctx, req, o...)
	if c.calls.Add(1) == c.n {
		c.cancel()
	}
	return r, err
}

func TestHealth(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	if err := b.Health(t.Context()); err != nil {
		t.Fatalf("Health() = %v", err)
	}
	e.fake.ResetCalls()
	e.fake.SetFaults(gcpfake.Faults{FailNext: 1})
	defer e.fake.SetFaults(gcpfake.Faults{})
	wantKind(t, "Health during a failure", b.Health(t.Context()), backends.ErrUnavailable)
	if n := e.fake.TotalCalls(); n != 1 {
		t.Errorf("Health made %d calls, want 1 (no retries)", n)
	}
}

// failing answers every call with err.
type failing struct {
	kmsClient
	err   error
	calls atomic.Int32
}

func (f *failing) Encrypt(context.Context, *kmspb.EncryptRequest, ...gax.CallOption) (*kmspb.EncryptResponse, error) {
	f.calls.Add(1)
	return nil, f.err
}

func (f *failing) Decrypt(context.Context, *kmspb.DecryptRequest, ...gax.CallOption) (*kmspb.DecryptResponse, error) {
	f.calls.Add(1)
	return nil, f.err
}

func (f *failing) Close() error { return nil }

func apiError(t *testing.T, err error) error {
	t.Helper()
	ae, ok := apierror.FromError(err)
	if !ok {
		t.Fatalf("apierror.FromError(%v) failed", err)
	}
	return ae
}

func TestErrorMapping(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name     string
		op       string // "encrypt" or "decrypt"
		err      error
		kind     error
		attempts int
	}{
		{"not found", "encrypt", status.Error(codes.NotFound, "CryptoKey x not found."), backends.ErrNotFound, 1},
		{"permission denied", "encrypt", status.Error(codes.PermissionDenied, "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied"), backends.ErrPermissionDenied, 1},
		{"unauthenticated", "decrypt", status.Error(codes.Unauthenticated, "Request had invalid authentication credentials."), backends.ErrPermissionDenied, 1},
		{"invalid argument", "encrypt", status.Error(codes.InvalidArgument, "plaintext too large"), backends.ErrInvalidArgument, 1},
		{"invalid argument on decrypt", "decrypt", status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid."), backends.ErrDecryptionFailed, 1},
		{"foreign ciphertext", "decrypt", status.Error(codes.InvalidArgument, "Decryption failed: verify that 'name' refers to the correct CryptoKey."), backends.ErrDecryptionFailed, 1},
		{"request checksum", "decrypt", status.Error(codes.InvalidArgument, "The checksum in field ciphertext_crc32c did not match the data in field ciphertext."), backends.ErrUnavailable, 5},
		{"disabled", "encrypt", status.Error(codes.FailedPrecondition, "projects/p/.../cryptoKeyVersions/1 is not enabled, current state is: DISABLED."), backends.ErrDisabled, 1},
		{"destroyed", "decrypt", status.Error(codes.FailedPrecondition, "projects/p/.../cryptoKeyVersions/1 is not enabled, current state is: DESTROYED."), backends.ErrDisabled, 1},
		{"wrong purpose", "encrypt", status.Error(codes.FailedPrecondition, "Operation requested for Key x has incorrect key purpose: MAC"), backends.ErrInvalidArgument, 1},
		{"already exists", "encrypt", status.Error(codes.AlreadyExists, "exists"), backends.ErrInvalidArgument, 1},
		{"quota", "encrypt", status.Error(codes.ResourceExhausted, "Quota exceeded"), backends.ErrThrottled, 1},
		{"unavailable", "decrypt", status.Error(codes.Unavailable, "The service is currently unavailable."), backends.ErrUnavailable, 5},
		{"deadline", "encrypt", status.Error(codes.DeadlineExceeded, "Deadline exceeded"), backends.ErrUnavailable, 5},
		{"internal", "encrypt", status.Error(codes.Internal, "Internal error"), backends.ErrUnavailable, 1},
		{"unimplemented", "encrypt", status.Error(codes.Unimplemented, "no"), backends.ErrUnsupported, 1},
		{"not a status", "encrypt", errors.New("dial tcp: connection refused"), backends.ErrUnavailable, 1},
	} {
		for _, wrapped := range []bool{false, true} {
			name := tc.name
			err := tc.err
			if wrapped {
				if _, ok := status.FromError(err); !ok {
					continue
				}
				// What the client returns once gax has seen the error.
				name, err = name+" (apierror)", apiError(t, err)
			}
			t.Run(name, func(t *testing.T) {
				stub := &failing{err: err}
				b := e.openWith(t, e.config(), func(kmsClient) kmsClient { return stub })
				var got error
				if tc.op == "decrypt" {
					_, got = b.Decrypt(t.Context(), e.aes, []byte("ciphertext"), nil)
				} else {
					_, got = b.Encrypt(t.Context(), e.aes, []byte("x"), nil)
				}
				wantKind(t, tc.op, got, tc.kind)
				be, _ := errors.AsType[*backends.Error](got)
				if be != nil && (be.Backend != "gcpkms" || be.Op != tc.op || be.Key != e.aes) {
					t.Errorf("error names %s/%s/%q, want gcpkms/%s/%q", be.Backend, be.Op, be.Key, tc.op, e.aes)
				}
				if want, ok := status.FromError(tc.err); ok {
					st, ok := status.FromError(got)
					if !ok || st.Code() != want.Code() {
						t.Errorf("status.FromError(%v) = %v, %v; want code %v", got, st.Code(), ok, want.Code())
					}
					var gs interface{ GRPCStatus() *status.Status }
					if !errors.As(got, &gs) || gs.GRPCStatus().Code() != want.Code() {
						t.Errorf("errors.As(%v, GRPCStatus) did not find code %v", got, want.Code())
					}
				} else if !errors.Is(got, tc.err) {
					t.Errorf("err = %v, want it to wrap %v", got, tc.err)
				}
				if n := int(stub.calls.Load()); n != tc.attempts {
					t.Errorf("%d attempts, want %d", n, tc.attempts)
				}
			})
		}
	}
}

// TestFakeErrorsEndToEnd runs the mapping through the real client and the
// fake's own answers.
func TestFakeErrorsEndToEnd(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	_, err := b.Encrypt(t.Context(), e.unknown, []byte("x"), nil)
	if st, _ := status.FromError(err); st.Code() != codes.NotFound {
		t.Errorf("Encrypt(unknown): status code %v, want NotFound (err %v)", st.Code(), err)
	}
	_, err = b.Encrypt(t.Context(), e.disabled, []byte("x"), nil)
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !errors.Is(err, backends.ErrDisabled) {
		t.Errorf("Encrypt(disabled) = %v, want FailedPrecondition classified disabled", err)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) map[string][]*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string][]*dto.Metric)
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

func counter(ms []*dto.Metric, labels map[string]string) float64 {
next:
	for _, m := range ms {
		for _, lp := range m.GetLabel() {
			if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
				continue next
			}
		}
		return m.GetCounter().GetValue()
	}
	return 0
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	cfg := e.config()
	cfg.Metrics = reg
	b := e.open(t, cfg)
	// A second backend on the same registry shares the collectors.
	b2 := e.open(t, cfg)
	ctx := t.Context()
	for _, bk := range []*Backend{b, b2} {
		if _, err := bk.Encrypt(ctx, e.aes, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	ct, _ := b.Encrypt(ctx, e.aes, []byte("x"), []byte("a"))
	if _, err := b.Decrypt(ctx, e.aes, ct, []byte("b")); err == nil {
		t.Fatal("Decrypt with the wrong aad succeeded")
	}
	e.fake.SetFaults(gcpfake.Faults{CorruptResponseCRC: true})
	_, _ = b.MAC(ctx, e.hmac, []byte("x"))
	e.fake.SetFaults(gcpfake.Faults{})

	m := gather(t, reg)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keybroker_gcpkms_calls_total", map[string]string{"op": "encrypt", "code": "ok"}, 3},
		{"keybroker_gcpkms_calls_total", map[string]string{"op": "decrypt", "code": "decryption_failed"}, 1},
		{"keybroker_gcpkms_calls_total", map[string]string{"op": "mac", "code": "unavailable"}, 1},
		{"keybroker_gcpkms_integrity_failures_total", map[string]string{"op": "mac"}, float64(fastRetry.MaxAttempts)},
		{"keybroker_gcpkms_retries_total", map[string]string{"op": "mac"}, float64(fastRetry.MaxAttempts - 1)},
	} {
		if got := counter(m[c.name], c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for name, ms := range m {
		for _, metric := range ms {
			for _, lp := range metric.GetLabel() {
				if strings.Contains(lp.GetValue(), "projects/") || strings.Contains(lp.GetValue(), "aes-1") {
					t.Errorf("%s has label %s=%q: a key name", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}
