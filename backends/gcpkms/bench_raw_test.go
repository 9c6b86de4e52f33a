package gcpkms

import (
	"context"
	"crypto/sha256"
	"sync/atomic"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
)

// The backend is measured against a ceiling: the Cloud KMS client
// library's KeyManagementClient calling the same in-process fake directly,
// built from the same client options, with the same keys and inputs and
// the same per-call options (the library's retries and timeout off, as the
// backend calls it), and nothing of keybroker's: no input checks, retry
// loop, response integrity checks or metrics. The raw requests, CRC32C
// checksums included, are built once.
//
//	go test -run '^$' -bench 'BenchmarkBackend$|BenchmarkRawSDK|BenchmarkVsRawSDK' -benchtime 500ms -count 5 ./backends/gcpkms/

// BenchmarkRawSDK is the ceiling alone, with BenchmarkBackend's
// sub-benchmark names so the two line up.
func BenchmarkRawSDK(b *testing.B) {
	e := newEnv(b)
	for _, o := range rawOps(e, rawClient(b, e)) {
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
	e := newEnv(b)
	be := e.open(b, e.config())
	re := newEnv(b)
	raws := rawOps(re, rawClient(b, re))
	pt := make([]byte, 32)
	msg, digest := benchInputs()
	backendOps := map[string]func(context.Context) error{
		"Encrypt32B": func(ctx context.Context) error { _, err := be.Encrypt(ctx, e.aes, pt, msg); return err },
		"MAC": func(ctx context.Context) error {
			tag, err := be.MAC(ctx, e.hmac, msg)
			tag.Destroy()
			return err
		},
		"Sign": func(ctx context.Context) error { _, err := be.Sign(ctx, e.ecdsa, digest); return err },
	}
	for _, o := range raws {
		b.Run(o.name, func(b *testing.B) { pairedBench(b, false, backendOps[o.name], o.raw) })
		b.Run(o.name+"Parallel", func(b *testing.B) { pairedBench(b, true, backendOps[o.name], o.raw) })
	}
}

// rawClient is a client of e's fake built as New builds the backend's.
func rawClient(b *testing.B, e *env) *kms.KeyManagementClient {
	api, err := kms.NewKeyManagementClient(b.Context(), e.config().ClientOptions...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = api.Close() })
	return api
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

// rawOps are backendtest.Bench's operations made with api directly on e's
// keys, with the request checksums the backend sends: Encrypt of 32 bytes
// with the message as aad, MacSign and AsymmetricSign.
func rawOps(e *env, api *kms.KeyManagementClient) []rawOp {
	msg, digest := benchInputs()
	pt := make([]byte, 32)
	enc := &kmspb.EncryptRequest{Name: e.aes, Plaintext: pt, AdditionalAuthenticatedData: msg,
		PlaintextCrc32C: crc32c(pt), AdditionalAuthenticatedDataCrc32C: crc32c(msg)}
	mac := &kmspb.MacSignRequest{Name: e.hmac, Data: msg, DataCrc32C: crc32c(msg)}
	sign := &kmspb.AsymmetricSignRequest{Name: e.ecdsa, Digest: &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest}},
		DigestCrc32C: crc32c(digest)}
	return []rawOp{
		{"Encrypt32B", func(ctx context.Context) error { _, err := api.Encrypt(ctx, enc, oneShot...); return err }},
		{"MAC", func(ctx context.Context) error { _, err := api.MacSign(ctx, mac, oneShot...); return err }},
		{"Sign", func(ctx context.Context) error { _, err := api.AsymmetricSign(ctx, sign, oneShot...); return err }},
	}
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
