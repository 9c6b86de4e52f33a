package broker

import (
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/managed"
)

// BenchmarkScale measures the central at many keys: the live heap per key
// once N keys have been created through the Service and are at rest, and
// the time to list every key in pages of 100. Run it once per size:
//
//	go test ./broker -run '^$' -bench BenchmarkScale -benchtime 1x
func BenchmarkScale(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run("HeapPerKey/"+strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				e := newEnv(b)
				before := liveHeap()
				createKeys(b, e, n)
				after := liveHeap()
				b.ReportMetric(float64(after-before)/float64(n), "B/key")
				runtime.KeepAlive(e)
			}
		})
	}
	b.Run("ListKeysAll/10000", func(b *testing.B) {
		e := newEnv(b)
		createKeys(b, e, 10_000)
		b.ResetTimer()
		for b.Loop() {
			seen, token := 0, ""
			for {
				keys, next, err := e.svc.ListKeys(b.Context(), nil, 100, token, nil)
				if err != nil {
					b.Fatal(err)
				}
				seen += len(keys)
				if token = next; token == "" {
					break
				}
			}
			if seen != 10_000 {
				b.Fatalf("listed %d keys, want 10000", seen)
			}
		}
	})
}

// createKeys creates n derive-mode keys with 8 workers.
func createKeys(b testing.TB, e *env, n int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				_, err := e.svc.CreateKey(b.Context(), CreateParams{ID: fmt.Sprintf("tenant-%07d", i), Type: managed.AES256GCM, Mode: managed.ModeDerive,
					Labels: map[string]string{"app": "scale"}})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
