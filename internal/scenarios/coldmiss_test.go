package scenarios_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// BenchmarkColdMiss sends N concurrent cold requests (N = 1, 64, 1000) for
// one key's material to an edge that does not prefetch, and counts what
// they cost beyond the edge. One iteration is one burst: a key created
// just before (not timed), so the edge holds neither its material nor a
// data key; N goroutines released together, each making one call over
// the edge's one client connection; the burst ends when every call has
// answered. Per burst it reports:
//
//   - fetches: FetchMaterial calls the edge made (target: 1 whatever N);
//   - backend-calls: calls the central node made to its root of trust
//     meanwhile (the derivation behind the fetch, when the central tier
//     does not hold the material already);
//   - data-keys: data keys the edge created (Encrypt).
//
// Operations: Encrypt (material, then one data key in reuse), Decrypt of
// one ciphertext made at the central node and DecryptDataKey of one data
// key from GenerateDataKey at the central node (material, then one unwrap
// of the same data key). Making the ciphertext or data key puts the
// material in the central node's cache, so those bursts cost the central
// tier a fetch but its root of trust nothing.
//
//	go test -run '^$' -bench BenchmarkColdMiss -benchtime 20x -count 3 ./internal/scenarios/
func BenchmarkColdMiss(b *testing.B) {
	cl := startCluster(b, 1, false)
	edge := cl.c.Edges[0].Cache()
	for _, op := range []struct {
		name string
		// prepare runs before the burst, untimed, on the new key id.
		prepare func(ctx context.Context, id string) (call func(context.Context) error, err error)
	}{
		{"Encrypt", func(_ context.Context, id string) (func(context.Context) error, error) {
			return func(ctx context.Context) error {
				_, err := cl.edges[0].Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: plaintext})
				return err
			}, nil
		}},
		{"Decrypt", func(ctx context.Context, id string) (func(context.Context) error, error) {
			enc, err := cl.central.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: plaintext})
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				_, err := cl.edges[0].Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
				return err
			}, nil
		}},
		{"DecryptDataKey", func(ctx context.Context, id string) (func(context.Context) error, error) {
			dk, err := cl.central.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: id})
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				_, err := cl.edges[0].DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: id,
					KeyVersion: dk.GetKeyVersion(), WrappedDataKey: dk.GetWrappedDataKey()})
				return err
			}, nil
		}},
	} {
		for _, n := range []int{1, 64, 1000} {
			b.Run(fmt.Sprintf("%s/n=%d", op.name, n), func(b *testing.B) {
				ctx := b.Context()
				var fetches, backend, dataKeys uint64
				bursts := 0
				for b.Loop() {
					b.StopTimer()
					id := fmt.Sprintf("cold-%d", keySeq.Add(1))
					md, err := cl.createKey(ctx, id)
					if err != nil {
						b.Fatal(err)
					}
					call, err := op.prepare(ctx, id)
					if err == nil {
						err = cl.waitApplied(ctx, md.GetRevision(), nil)
					}
					if err != nil {
						b.Fatal(err)
					}
					st, calls := edge.Stats(), cl.backendCalls()
					b.StartTimer()
					if err := burst(ctx, n, call); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					after := edge.Stats()
					fetches += after.Fetches - st.Fetches
					backend += cl.backendCalls() - calls
					dataKeys += after.DataKeysCreated - st.DataKeysCreated
					bursts++
					b.StartTimer()
				}
				b.ReportMetric(float64(fetches)/float64(bursts), "fetches")
				b.ReportMetric(float64(backend)/float64(bursts), "backend-calls")
				b.ReportMetric(float64(dataKeys)/float64(bursts), "data-keys")
			})
		}
	}
}

// burst starts n goroutines, releases them together to make one call
// each, and waits for every answer.
func burst(ctx context.Context, n int, call func(context.Context) error) error {
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = call(ctx)
		})
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
