package awskms

import (
	"context"
	"crypto/sha256"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/keybroker/keybroker/backends/backendtest"
)

// The backend is measured against a ceiling: the AWS SDK's kms.Client
// calling the same in-process fake directly, with the same keys, inputs
// and client settings as the backend (static credentials behind a
// credentials cache, the same HTTP transport and connection pool, the same
// retryer), and nothing of keybroker's: no input checks, rate limiter,
// attempt counting, metrics or error classification. The raw requests are
// built once.
//
//	go test -run '^$' -bench 'BenchmarkBackend$|BenchmarkRawSDK|BenchmarkVsRawSDK' -benchtime 500ms -count 5 ./backends/awskms/

// BenchmarkRawSDK is the ceiling alone, with BenchmarkBackend's
// sub-benchmark names so the two line up.
func BenchmarkRawSDK(b *testing.B) {
	f, keys := fixture(b)
	for _, o := range rawOps(keys, rawClient(testConfig(f.URL()).withDefaults())) {
		b.Run(o.name, func(b *testing.B) {
			if o.name == "Encrypt32B" {
				b.SetBytes(32)
			}
			ctx := b.Context()
			for b.Loop() {
				if err := o.raw(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(o.name+"Parallel", func(b *testing.B) {
			ctx := b.Context()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := o.raw(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkVsRawSDK times the backend and the raw client call by call,
// alternately, each on its own fake (as BenchmarkBackend and
// BenchmarkRawSDK do), so that a change in the machine's load slows both
// alike. It reports each one's mean time per call (backend-us, raw-us)
// and the backend's op rate as a percentage of the raw client's (rate-%).
// The Parallel forms alternate in each of GOMAXPROCS goroutines.
func BenchmarkVsRawSDK(b *testing.B) {
	f, keys := fixture(b)
	be, err := New(b.Context(), testConfig(f.URL()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	rf, rkeys := fixture(b)
	raws := rawOps(rkeys, rawClient(testConfig(rf.URL()).withDefaults()))
	pt := make([]byte, 32)
	msg, digest := benchInputs()
	backendOps := map[string]func(context.Context) error{
		"Encrypt32B": func(ctx context.Context) error { _, err := be.Encrypt(ctx, keys.AES, pt, msg); return err },
		"MAC": func(ctx context.Context) error {
			tag, err := be.MAC(ctx, keys.HMAC, msg)
			tag.Destroy()
			return err
		},
		"Sign": func(ctx context.Context) error { _, err := be.Sign(ctx, keys.ECDSA, digest); return err },
	}
	for _, o := range raws {
		b.Run(o.name, func(b *testing.B) { pairedBench(b, false, backendOps[o.name], o.raw) })
		b.Run(o.name+"Parallel", func(b *testing.B) { pairedBench(b, true, backendOps[o.name], o.raw) })
	}
}

// benchInputs are backendtest.Bench's: the message (also the aad) and its
// SHA-256 digest.
func benchInputs() (msg, digest []byte) {
	msg = []byte("keybroker/v1/material\x00bench\x00\x00\x00\x01")
	d := sha256.Sum256(msg)
	return msg, d[:]
}

type rawOp struct {
	name string
	raw  func(context.Context) error
}

// rawOps are backendtest.Bench's operations made with api directly on
// keys: Encrypt of 32 bytes with the message as aad (carried as the
// backend carries it, in the encryption context), GenerateMac and Sign.
func rawOps(keys *backendtest.Fixture, api *kms.Client) []rawOp {
	msg, digest := benchInputs()
	enc := &kms.EncryptInput{KeyId: aws.String(keys.AES), Plaintext: make([]byte, 32), EncryptionContext: encryptionContext(msg),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault}
	mac := &kms.GenerateMacInput{KeyId: aws.String(keys.HMAC), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256}
	sign := &kms.SignInput{KeyId: aws.String(keys.ECDSA), Message: digest, MessageType: types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}
	return []rawOp{
		{"Encrypt32B", func(ctx context.Context) error { _, err := api.Encrypt(ctx, enc); return err }},
		{"MAC", func(ctx context.Context) error { _, err := api.GenerateMac(ctx, mac); return err }},
		{"Sign", func(ctx context.Context) error { _, err := api.Sign(ctx, sign); return err }},
	}
}

// rawClient builds the kms.Client New builds for cfg (cfg with its
// defaults), without the backend's middleware.
func rawClient(cfg Config) *kms.Client {
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(cfg.Burst, awshttp.DefaultHTTPTransportMaxIdleConnsPerHost)
		t.MaxIdleConns = max(cfg.Burst, awshttp.DefaultHTTPTransportMaxIdleConns)
	}).Freeze()
	return kms.New(kms.Options{
		Region:       cfg.Region,
		Credentials:  aws.NewCredentialsCache(cfg.Credentials),
		HTTPClient:   hc,
		Retryer:      newRetryer(cfg),
		BaseEndpoint: aws.String(cfg.Endpoint),
	})
}

// pairedBench calls backend and raw alternately (each first in every
// other round), timing each call, serially or in GOMAXPROCS goroutines.
func pairedBench(b *testing.B, parallel bool, backend, raw func(context.Context) error) {
	ctx := b.Context()
	var tb, tr, n atomic.Int64
	loop := func(next func() bool) {
		var sb, sr time.Duration
		var i int64
		for ; next(); i++ {
			first, second, df, ds := backend, raw, &sb, &sr
			if i%2 == 1 {
				first, second, df, ds = raw, backend, &sr, &sb
			}
			t0 := time.Now()
			if err := first(ctx); err != nil {
				b.Error(err)
				return
			}
			t1 := time.Now()
			if err := second(ctx); err != nil {
				b.Error(err)
				return
			}
			*df += t1.Sub(t0)
			*ds += time.Since(t1)
		}
		tb.Add(int64(sb))
		tr.Add(int64(sr))
		n.Add(i)
	}
	if parallel {
		b.RunParallel(func(pb *testing.PB) { loop(pb.Next) })
	} else {
		loop(b.Loop)
	}
	if n.Load() == 0 || tb.Load() == 0 {
		return
	}
	us := func(d int64) float64 { return float64(d) / float64(n.Load()) / 1e3 }
	b.ReportMetric(us(tb.Load()), "backend-us")
	b.ReportMetric(us(tr.Load()), "raw-us")
	b.ReportMetric(100*float64(tr.Load())/float64(tb.Load()), "rate-%")
}
