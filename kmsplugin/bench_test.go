package kmsplugin_test

import (
	"slices"
	"testing"
	"time"

	kmsv2 "k8s.io/kms/apis/v2"

	"github.com/keybroker/keybroker/keybrokertest"
	"github.com/keybroker/keybroker/kmsplugin"
)

// BenchmarkPlugin measures Encrypt and Decrypt of a 32-byte seed through
// the plugin's unix socket (a real gRPC client, as the apiserver dials
// it), the plugin pinned to a prefetching edge that holds the key's
// material: the apiserver's calls on a warm key. It reports p50 and p99
// per call beside the mean.
//
//	go test -run '^$' -bench BenchmarkPlugin -benchtime 2000x ./kmsplugin/
func BenchmarkPlugin(b *testing.B) {
	kb := keybrokertest.Start(b, keybrokertest.WithKeys("k8s"), keybrokertest.WithRegions("us"))
	sdk := kb.Client(b, keybrokertest.At(kb.EdgeAddr("us")))
	p := startPlugin(b, sdk, kmsplugin.Config{Key: "k8s"})
	ctx := b.Context()
	pt := make([]byte, 32)
	warm, err := p.kms.Encrypt(ctx, &kmsv2.EncryptRequest{Plaintext: pt, Uid: "warm"})
	if err != nil {
		b.Fatal(err)
	}
	report := func(b *testing.B, d []time.Duration) {
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
	}
	b.Run("Encrypt", func(b *testing.B) {
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := p.kms.Encrypt(ctx, &kmsv2.EncryptRequest{Plaintext: pt, Uid: "bench"}); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		report(b, d)
	})
	b.Run("Decrypt", func(b *testing.B) {
		req := &kmsv2.DecryptRequest{Ciphertext: warm.Ciphertext, KeyId: warm.KeyId, Annotations: warm.Annotations, Uid: "bench"}
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := p.kms.Decrypt(ctx, req); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		report(b, d)
	})
	// The same Decrypt straight from the SDK to the edge: what the
	// plugin's socket and checks add is the difference.
	b.Run("SDKDecrypt", func(b *testing.B) {
		ectx := map[string]string{kmsplugin.ContextKey: kmsplugin.DefaultCluster}
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := sdk.Decrypt(ctx, warm.Ciphertext, ectx); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		report(b, d)
	})
	b.Run("Status", func(b *testing.B) {
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := p.kms.Status(ctx, &kmsv2.StatusRequest{}); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		report(b, d)
	})
}
