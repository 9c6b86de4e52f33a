package awskms

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest"
	"github.com/keybroker/keybroker/backends/backendtest/awsfake"
)

var staticCreds = credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "")

// testConfig points a backend at endpoint with static credentials, no rate
// limit and millisecond backoff, so tests never wait on real time.
func testConfig(endpoint string) Config {
	return Config{
		Region:      awsfake.Region,
		Endpoint:    endpoint,
		Credentials: staticCreds,
		RateLimit:   math.Inf(1),
		MaxBackoff:  time.Millisecond,
	}
}

func newBackend(t testing.TB, cfg Config) *Backend {
	t.Helper()
	b, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// fixture creates the conformance keys on a fake, each named in a different
// form (key id, key ARN, alias) so every form is exercised.
func fixture(tb testing.TB) (*awsfake.Fake, *backendtest.Fixture) {
	f := awsfake.New(tb)
	aes, aes2 := f.CreateKey(awsfake.SymmetricDefault), f.CreateKey(awsfake.SymmetricDefault)
	hmac, hmac2 := f.CreateKey(awsfake.HMAC256), f.CreateKey(awsfake.HMAC256)
	ecdsa := f.CreateKey(awsfake.ECCNISTP256)
	disabled := f.CreateKey(awsfake.SymmetricDefault)
	f.Disable(disabled)
	f.Alias("alias/conformance-hmac", hmac)
	var n atomic.Int64
	return f, &backendtest.Fixture{
		AES:      aes,
		AES2:     awsfake.ARN(aes2),
		HMAC:     "alias/conformance-hmac",
		HMAC2:    hmac2,
		ECDSA:    awsfake.ARN(ecdsa),
		Disabled: disabled,
		Unknown:  "6f1c2a4e-8d3b-4f5a-9e7c-0b1d2e3f4a5b",
		Caps: backends.Capabilities{
			MAC: true, Sign: true, DataKey: true, Create: true, Health: true,
			Creates: []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256},
		},
		NewName: func() string { return fmt.Sprintf("conformance-%d", n.Add(1)) },
	}
}

func TestConformance(t *testing.T) {
	f, keys := fixture(t)
	backendtest.Run(t, func(t *testing.T) *backendtest.Fixture {
		fx := *keys
		b, err := New(t.Context(), testConfig(f.URL()))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		fx.Backend = b
		return &fx
	})
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Region: "eu-west-1"}, true},
		{"everything", Config{Region: "us-gov-west-1", Endpoint: "https://kms.internal:8443", RateLimit: 10, Burst: 5, MaxAttempts: 1, MaxBackoff: time.Second}, true},
		{"unlimited", Config{Region: "eu-west-1", RateLimit: math.Inf(1)}, true},
		{"no region", Config{}, false},
		{"bad region", Config{Region: "EU-WEST-1"}, false},
		{"endpoint without scheme", Config{Region: "eu-west-1", Endpoint: "kms.internal:8443"}, false},
		{"endpoint with user", Config{Region: "eu-west-1", Endpoint: "https://u:p@kms.internal"}, false},
		{"negative rate", Config{Region: "eu-west-1", RateLimit: -1}, false},
		{"NaN rate", Config{Region: "eu-west-1", RateLimit: math.NaN()}, false},
		{"negative burst", Config{Region: "eu-west-1", Burst: -1}, false},
		{"too many attempts", Config{Region: "eu-west-1", MaxAttempts: 21}, false},
		{"negative backoff", Config{Region: "eu-west-1", MaxBackoff: -time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				_, err := New(t.Context(), tc.cfg)
				if !errors.Is(err, backends.ErrInvalidArgument) {
					t.Errorf("New() = %v, want ErrInvalidArgument", err)
				}
			}
		})
	}
}

// TestErrorMapping answers every request with one service error and checks
// the kind it maps to, with the SDK's error still reachable.
func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		typ    string
		status int
		kind   error
		as     func(error) bool // the SDK's modelled type, when there is one
	}{
		{"NotFoundException", 400, backends.ErrNotFound, isType[*types.NotFoundException]},
		{"DisabledException", 400, backends.ErrDisabled, isType[*types.DisabledException]},
		{"KMSInvalidStateException", 400, backends.ErrDisabled, isType[*types.KMSInvalidStateException]},
		{"InvalidCiphertextException", 400, backends.ErrDecryptionFailed, isType[*types.InvalidCiphertextException]},
		{"IncorrectKeyException", 400, backends.ErrDecryptionFailed, isType[*types.IncorrectKeyException]},
		{"KMSInvalidMacException", 400, backends.ErrDecryptionFailed, isType[*types.KMSInvalidMacException]},
		{"AccessDeniedException", 400, backends.ErrPermissionDenied, nil},
		{"UnrecognizedClientException", 400, backends.ErrPermissionDenied, nil},
		{"ExpiredTokenException", 400, backends.ErrPermissionDenied, nil},
		{"ThrottlingException", 400, backends.ErrThrottled, nil},
		{"LimitExceededException", 400, backends.ErrThrottled, isType[*types.LimitExceededException]},
		{"KMSInternalException", 500, backends.ErrUnavailable, isType[*types.KMSInternalException]},
		{"DependencyTimeoutException", 503, backends.ErrUnavailable, isType[*types.DependencyTimeoutException]},
		{"KeyUnavailableException", 500, backends.ErrUnavailable, isType[*types.KeyUnavailableException]},
		{"ServiceUnavailableException", 503, backends.ErrUnavailable, nil},
		{"SomethingNewException", 502, backends.ErrUnavailable, nil},
		{"XksProxyUriUnreachableException", 400, backends.ErrUnavailable, isType[*types.XksProxyUriUnreachableException]},
		{"ValidationException", 400, backends.ErrInvalidArgument, nil},
		{"InvalidKeyUsageException", 400, backends.ErrInvalidArgument, isType[*types.InvalidKeyUsageException]},
		{"UnsupportedOperationException", 400, backends.ErrInvalidArgument, isType[*types.UnsupportedOperationException]},
		{"AlreadyExistsException", 400, backends.ErrInvalidArgument, isType[*types.AlreadyExistsException]},
		{"SomethingElseException", 400, backends.ErrInvalidArgument, nil},
		{"SomethingForbidden", 403, backends.ErrPermissionDenied, nil},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, `{"__type":"%s","message":"injected"}`, tc.typ)
			}))
			defer srv.Close()
			cfg := testConfig(srv.URL)
			cfg.MaxAttempts = 1
			b := newBackend(t, cfg)
			_, err := b.Encrypt(t.Context(), "alias/k", []byte("x"), nil)
			var be *backends.Error
			if !errors.As(err, &be) || be.Op != "encrypt" || be.Key != "alias/k" || be.Backend != "awskms" {
				t.Fatalf("Encrypt error = %#v, want a *backends.Error naming awskms, encrypt and the key", err)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("Encrypt error = %v (code %s), want %v", err, backends.CodeOf(err), tc.kind)
			}
			apiErr, ok := errors.AsType[smithy.APIError](err)
			if !ok || apiErr.ErrorCode() != tc.typ {
				t.Errorf("errors.As(smithy.APIError) = %v, %v; want code %s", apiErr, ok, tc.typ)
			}
			if tc.as != nil && !tc.as(err) {
				t.Errorf("the SDK's %s type is not reachable from %v", tc.typ, err)
			}
		})
	}
}

func isType[E error](err error) bool {
	_, ok := errors.AsType[E](err)
	return ok
}

func TestTransportErrors(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		cfg := testConfig(url)
		cfg.MaxAttempts = 2
		_, err := newBackend(t, cfg).GenerateRandom(t.Context(), 8)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Errorf("GenerateRandom against a closed port: err = %v, want ErrUnavailable", err)
		}
	})
	t.Run("garbled answer", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte("<html>proxy error</html>"))
		}))
		defer srv.Close()
		_, err := newBackend(t, testConfig(srv.URL)).GenerateRandom(t.Context(), 8)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Errorf("GenerateRandom with a garbled answer: err = %v, want ErrUnavailable", err)
		}
	})
	t.Run("cancelled in flight", func(t *testing.T) {
		f := awsfake.New(t)
		f.SetFaults(awsfake.Faults{Latency: time.Hour})
		b := newBackend(t, testConfig(f.URL()))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := b.GenerateRandom(ctx, 8)
			done <- err
		}()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) || backends.CodeOf(err) != backends.CodeCanceled {
			t.Errorf("GenerateRandom cancelled: err = %v, want context.Canceled", err)
		}
	})
}

func TestOpen(t *testing.T) {
	f, keys := fixture(t)
	// Open takes credentials from the default chain: give it the
	// environment's, and keep it away from files and instance metadata.
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", dir+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", dir+"/credentials")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	uri := "awskms:key-id=" + keys.AES2 + ";endpoint=" + f.URL() + ";rate-limit=1000;burst=7"
	reg := backends.NewRegistry()
	if err := reg.Register("awskms", Open); err != nil {
		t.Fatal(err)
	}
	opened, err := reg.Open(t.Context(), uri, backends.Options{})
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	defer opened.Close()
	b := opened.(*Backend)
	if b.limiter.Limit() != 1000 || b.limiter.Burst() != 7 {
		t.Errorf("limiter = %v/s burst %d, want 1000/s burst 7 from the URI", b.limiter.Limit(), b.limiter.Burst())
	}
	ct, err := b.Encrypt(t.Context(), keys.AES2, []byte("via URI"), []byte("aad"))
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if pt, err := b.Decrypt(t.Context(), keys.AES2, ct, []byte("aad")); err != nil || string(pt.Reveal()) != "via URI" {
		t.Errorf("Decrypt = %v, %v", pt, err)
	}

	for _, bad := range []string{
		"awskms:endpoint=" + f.URL(), // no region
		"awskms:region=us-east-1;colour=blue",
		"softkms:/tmp/x",
	} {
		if _, err := Open(t.Context(), bad, backends.Options{}); !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

// TestRateLimit counts tokens: with a bucket of 3 and a rate too slow to
// refill within any test, exactly three attempts go out and the fourth call
// fails at once with the caller's deadline instead of waiting.
func TestRateLimit(t *testing.T) {
	f := awsfake.New(t)
	cfg := testConfig(f.URL())
	cfg.RateLimit, cfg.Burst = 1e-6, 3
	b := newBackend(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()

	f.SetFaults(awsfake.Faults{FailNext: 1}) // the first call takes a retry: two tokens
	for i := range 2 {
		if _, err := b.GenerateRandom(ctx, 4); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	_, err := b.GenerateRandom(ctx, 4)
	if !errors.Is(err, backends.ErrThrottled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("call beyond the burst: err = %v, want ErrThrottled with context.DeadlineExceeded", err)
	}
	if backends.Retryable(err) {
		t.Errorf("Retryable(%v) = true; a retry cannot beat the same deadline", err)
	}
	if got := f.Calls("GenerateRandom"); got != 3 {
		t.Errorf("fake saw %d requests, want 3 (the burst)", got)
	}

	// Without a deadline the call waits for a token until cancelled.
	cctx, ccancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := b.GenerateRandom(cctx, 4)
		done <- err
	}()
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("call waiting for a token, cancelled: err = %v, want context.Canceled", err)
	}
	if got := f.Calls("GenerateRandom"); got != 3 {
		t.Errorf("fake saw %d requests after the cancelled wait, want 3", got)
	}
}

// TestThrottlingRetried has the fake throttle half of all calls: every call
// still succeeds, and the fake's counters show the retries the metrics count.
func TestThrottlingRetried(t *testing.T) {
	f, keys := fixture(t)
	reg := prometheus.NewRegistry()
	cfg := testConfig(f.URL())
	cfg.MaxAttempts, cfg.Metrics = 10, reg
	b := newBackend(t, cfg)
	f.SetFaults(awsfake.Faults{ThrottleFraction: 0.5, Seed: 1})
	const n = 40
	for i := range n {
		if _, err := b.Encrypt(t.Context(), keys.AES, []byte("x"), nil); err != nil {
			t.Fatalf("Encrypt %d with half the calls throttled: %v", i, err)
		}
	}
	sent := f.Calls("Encrypt")
	if sent <= n {
		t.Errorf("fake saw %d Encrypt requests for %d calls: no retries happened", sent, n)
	}
	if got := counter(t, reg, "keybroker_awskms_retries_total", "op", "encrypt"); got != float64(sent-n) {
		t.Errorf("retries_total{op=encrypt} = %v, want %d", got, sent-n)
	}
	if got := counter(t, reg, "keybroker_awskms_calls_total", "op", "encrypt", "code", "ok"); got != n {
		t.Errorf("calls_total{op=encrypt,code=ok} = %v, want %d", got, n)
	}
	if got := histogramCount(t, reg, "keybroker_awskms_ratelimit_wait_seconds", "encrypt"); got != uint64(sent) {
		t.Errorf("ratelimit_wait_seconds{op=encrypt} count = %d, want one per attempt (%d)", got, sent)
	}

	f.SetFaults(awsfake.Faults{ThrottleFraction: 1})
	_, err := b.Encrypt(t.Context(), keys.AES, []byte("x"), nil)
	if !errors.Is(err, backends.ErrThrottled) || !isType[smithy.APIError](err) {
		t.Errorf("Encrypt with every call throttled: err = %v, want ErrThrottled with the API error", err)
	}
	if got := counter(t, reg, "keybroker_awskms_calls_total", "op", "encrypt", "code", "throttled"); got != 1 {
		t.Errorf("calls_total{op=encrypt,code=throttled} = %v, want 1", got)
	}
	assertNoKeyLabels(t, reg, keys)
}

func TestShortOutage(t *testing.T) {
	f, keys := fixture(t)
	t.Run("recovers within the attempts", func(t *testing.T) {
		cfg := testConfig(f.URL())
		cfg.MaxAttempts = 4
		b := newBackend(t, cfg)
		f.ResetCalls()
		f.SetFaults(awsfake.Faults{FailNext: 3})
		if _, err := b.MAC(t.Context(), keys.HMAC, []byte("m")); err != nil {
			t.Fatalf("MAC after a 3-call outage with 4 attempts: %v", err)
		}
		if got := f.Calls("GenerateMac"); got != 4 {
			t.Errorf("fake saw %d GenerateMac requests, want 4", got)
		}
	})
	t.Run("attempts exhausted", func(t *testing.T) {
		cfg := testConfig(f.URL())
		cfg.MaxAttempts = 3
		b := newBackend(t, cfg)
		f.ResetCalls()
		f.SetFaults(awsfake.Faults{FailNext: 5})
		_, err := b.MAC(t.Context(), keys.HMAC, []byte("m"))
		if !errors.Is(err, backends.ErrUnavailable) || !isType[*types.KMSInternalException](err) {
			t.Errorf("MAC with attempts exhausted: err = %v, want ErrUnavailable with KMSInternalException", err)
		}
		if got := f.Calls("GenerateMac"); got != 3 {
			t.Errorf("fake saw %d GenerateMac requests, want 3", got)
		}
	})
	f.SetFaults(awsfake.Faults{})
}

// TestOutageBoundedByDeadline runs calls into a full outage with more
// attempts than the deadline allows: they return with an unavailable error
// once the deadline passes, instead of hanging.
func TestOutageBoundedByDeadline(t *testing.T) {
	f, keys := fixture(t)
	cfg := testConfig(f.URL())
	cfg.MaxAttempts, cfg.MaxBackoff = 20, 20*time.Millisecond
	b := newBackend(t, cfg)
	for _, tc := range []struct {
		name   string
		faults awsfake.Faults
	}{
		{"503 answers", awsfake.Faults{Outage: true}},
		{"no answer", awsfake.Faults{Outage: true, Latency: time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.SetFaults(tc.faults)
			defer f.SetFaults(awsfake.Faults{})
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			_, err := b.Decrypt(ctx, keys.AES, make([]byte, 64), nil)
			if !errors.Is(err, backends.ErrUnavailable) {
				t.Errorf("Decrypt during an outage: err = %v (code %s), want ErrUnavailable", err, backends.CodeOf(err))
			}
			if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				// Only possible if all 20 attempts failed first; then the
				// service's error must be there.
				if !isType[smithy.APIError](err) {
					t.Errorf("Decrypt returned before the deadline without the service error: %v", err)
				}
			}
		})
	}
}

// raceAPI takes the alias on the fake just before CreateAlias runs, as
// another client would between CreateKey's check and its CreateAlias.
type raceAPI struct {
	kmsAPI
	f *awsfake.Fake
}

func (r raceAPI) CreateAlias(ctx context.Context, in *kms.CreateAliasInput, opts ...func(*kms.Options)) (*kms.CreateAliasOutput, error) {
	r.f.Alias(*in.AliasName, r.f.CreateKey(awsfake.SymmetricDefault))
	return r.kmsAPI.CreateAlias(ctx, in, opts...)
}

func TestCreateKey(t *testing.T) {
	f := awsfake.New(t)
	b := newBackend(t, testConfig(f.URL()))
	ctx := t.Context()

	info, err := b.CreateKey(ctx, "alias/root-1", backends.HMAC256)
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if !strings.HasPrefix(info.Key, awsfake.ARN("")) || info.Algorithm != backends.HMAC256 || !info.Enabled {
		t.Errorf("CreateKey = %+v, want an enabled hmac-256 key named by ARN", info)
	}
	if d, err := b.Describe(ctx, "alias/root-1"); err != nil || d.Key != info.Key {
		t.Errorf("Describe(alias/root-1) = %+v, %v; want key %s", d, err, info.Key)
	}
	keysBefore := len(f.Keys())
	_, err = b.CreateKey(ctx, "root-1", backends.AES256)
	if !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("CreateKey of an existing alias: err = %v, want ErrInvalidArgument", err)
	}
	if got := len(f.Keys()); got != keysBefore {
		t.Errorf("CreateKey of an existing alias created a key (%d keys, had %d)", got, keysBefore)
	}
	for _, name := range []string{"aws/reserved", "with space", strings.Repeat("x", 251), "alias/"} {
		if _, err := b.CreateKey(ctx, name, backends.AES256); !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("CreateKey(%q): err = %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := b.CreateKey(ctx, "ed", backends.Ed25519); !errors.Is(err, backends.ErrUnsupported) {
		t.Errorf("CreateKey(ed25519): err = %v, want ErrUnsupported", err)
	}
	unnamed, err := b.CreateKey(ctx, "", backends.ECDSAP256)
	if err != nil || unnamed.Algorithm != backends.ECDSAP256 {
		t.Errorf("CreateKey without a name = %+v, %v", unnamed, err)
	}

	t.Run("alias taken after the check", func(t *testing.T) {
		racy := newBackend(t, testConfig(f.URL()))
		racy.api = raceAPI{racy.api, f}
		before := f.Keys()
		_, err := racy.CreateKey(ctx, "contended", backends.AES256)
		if !errors.Is(err, backends.ErrInvalidArgument) || !isType[*types.AlreadyExistsException](err) {
			t.Fatalf("CreateKey losing the alias race: err = %v, want ErrInvalidArgument with AlreadyExistsException", err)
		}
		pending := 0
		for _, id := range f.Keys() {
			if f.KeyState(id) == "PendingDeletion" {
				pending++
			}
		}
		if got := len(f.Keys()); got != len(before)+2 || pending != 1 {
			t.Errorf("after the lost race: %d new keys, %d pending deletion; want 2 new (ours and the rival's), ours pending deletion", got-len(before), pending)
		}
	})
}

func TestServiceLimitsCheckedLocally(t *testing.T) {
	f, keys := fixture(t)
	b := newBackend(t, testConfig(f.URL()))
	ctx := t.Context()
	_, err := b.Encrypt(ctx, keys.AES, nil, []byte("aad"))
	wantInvalid(t, "Encrypt of an empty plaintext", err)
	_, err = b.MAC(ctx, keys.HMAC, nil)
	wantInvalid(t, "MAC of empty data", err)
	_, err = b.MAC(ctx, keys.HMAC, make([]byte, maxMessage+1))
	wantInvalid(t, "MAC of 4097 bytes", err)
	err = b.VerifyMAC(ctx, keys.HMAC, []byte("m"), nil)
	wantInvalid(t, "VerifyMAC of an empty tag", err)
	_, err = b.Sign(ctx, keys.ECDSA, make([]byte, 48))
	wantInvalid(t, "Sign of a 48-byte digest", err)
	if n := f.TotalCalls(); n != 0 {
		t.Errorf("the fake saw %d requests; arguments beyond the service's limits must not be sent", n)
	}
	if _, err := b.MAC(ctx, keys.HMAC, make([]byte, maxMessage)); err != nil {
		t.Errorf("MAC of 4096 bytes: %v", err)
	}
}

func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("%s: err = %v, want ErrInvalidArgument", what, err)
	}
}

func TestPublicKeyCache(t *testing.T) {
	f, keys := fixture(t)
	alias := "alias/signer"
	f.Alias(alias, strings.TrimPrefix(keys.ECDSA, awsfake.ARN("")))
	b := newBackend(t, testConfig(f.URL()))
	for range 3 {
		if _, err := b.PublicKey(t.Context(), keys.ECDSA); err != nil {
			t.Fatal(err)
		}
		if _, err := b.PublicKey(t.Context(), alias); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.Calls("GetPublicKey"); got != 4 {
		t.Errorf("GetPublicKey requests = %d, want 4 (one for the ARN, cached; every time for the alias)", got)
	}
}

func TestEncryptionContextCarriesAAD(t *testing.T) {
	f, keys := fixture(t)
	b := newBackend(t, testConfig(f.URL()))
	ct, err := b.Encrypt(t.Context(), keys.AES, []byte("material"), []byte{0, 1, 0xff})
	if err != nil {
		t.Fatal(err)
	}
	// The blob is a plain KMS ciphertext: the SDK opens it with the
	// documented encryption context.
	c := kms.New(kms.Options{Region: awsfake.Region, BaseEndpoint: aws.String(f.URL()), Credentials: staticCreds})
	out, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, EncryptionContext: map[string]string{"keybroker-aad": "AAH/"}})
	if err != nil || string(out.Plaintext) != "material" {
		t.Errorf("SDK Decrypt with {keybroker-aad: base64(aad)} = %v; want the plaintext", err)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	for _, m := range find(t, reg, name) {
		if hasLabels(m, labels...) {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name, op string) uint64 {
	t.Helper()
	for _, m := range find(t, reg, name) {
		if hasLabels(m, "op", op) {
			return m.GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func find(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func hasLabels(m *dto.Metric, kv ...string) bool {
	for i := 0; i < len(kv); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == kv[i] && lp.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func assertNoKeyLabels(t *testing.T, reg *prometheus.Registry, keys *backendtest.Fixture) {
	t.Helper()
	families, _ := reg.Gather()
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				for _, k := range []string{keys.AES, keys.AES2, keys.HMAC, keys.ECDSA} {
					if strings.Contains(lp.GetValue(), k) {
						t.Errorf("metric %s has key name %q in label %s", mf.GetName(), k, lp.GetName())
					}
				}
			}
		}
	}
}

func BenchmarkBackend(b *testing.B) {
	f, keys := fixture(b)
	cfg := testConfig(f.URL())
	be, err := New(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	keys.Backend = be
	defer be.Close()
	backendtest.Bench(b, keys)
}

// TestSustainedThrottlingKeepsRetrying: with half of all calls throttled
// for a long run, calls keep being retried. The SDK's own retry quota
// (500 tokens, 5 a retry, 1 back a success) would run dry after a few
// hundred calls and fail every throttled call from then on — about 170 of
// these 600; with retries going on, a call fails only when all five of its
// attempts are throttled (1 in 32).
func TestSustainedThrottlingKeepsRetrying(t *testing.T) {
	f, keys := fixture(t)
	b := newBackend(t, testConfig(f.URL()))
	f.SetFaults(awsfake.Faults{ThrottleFraction: 0.5, Seed: 7})
	failed := 0
	for range 600 {
		if _, err := b.Encrypt(t.Context(), keys.AES, []byte("x"), nil); err != nil {
			if !errors.Is(err, backends.ErrThrottled) {
				t.Fatalf("Encrypt: %v, want success or ErrThrottled", err)
			}
			failed++
		}
	}
	if failed > 60 {
		t.Errorf("%d of 600 calls failed with half the calls throttled; retries stopped", failed)
	}
}
