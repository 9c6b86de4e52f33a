package broker

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/managed"
)

// BenchmarkScale measures the central at many keys, on bbolt and on a
// one-member etcd (a real etcd process; the registry follows its feed as
// a central does): the live heap per key once N keys have been created
// through the Service and are at rest, and the time to list every key in
// pages of 100. Run it once per size:
//
//	go test ./broker -run '^$' -bench BenchmarkScale -benchtime 1x
func BenchmarkScale(b *testing.B) {
	sizes := map[string][]int{"bbolt": {10_000, 100_000}, "etcd": {10_000, 100_000}}
	for _, backing := range []string{"bbolt", "etcd"} {
		for _, n := range sizes[backing] {
			b.Run(backing+"/HeapPerKey/"+strconv.Itoa(n), func(b *testing.B) {
				for b.Loop() {
					e := scaleEnv(b, backing)
					before := liveHeap()
					createKeys(b, e, n)
					after := liveHeap()
					b.ReportMetric(float64(after-before)/float64(n), "B/key")
					runtime.KeepAlive(e)
				}
			})
		}
		b.Run(backing+"/ListKeysAll/10000", func(b *testing.B) {
			e := scaleEnv(b, backing)
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
}

// scaleEnv is newEnv on bbolt, or with its service on a fresh one-member
// etcd, following the feed.
func scaleEnv(b *testing.B, backing string) *env {
	e := newEnv(b)
	if backing == "bbolt" {
		return e
	}
	etcd := etcdtest.Start(b, 1)
	st, err := store.OpenEtcd(b.Context(), store.EtcdConfig{Endpoints: etcd.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	svc, err := NewService(ServiceConfig{
		Registry: NewRegistry(st, e.clock.Now), Roots: e.roots, Materials: NewMaterials(e.roots, 100, time.Hour, e.clock.Now),
		DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root", managed.ModeWrap: "softkms:aes-root"}, Now: e.clock.Now,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, stop := context.WithCancel(b.Context())
	done := make(chan struct{})
	go func() { defer close(done); svc.Registry().Follow(ctx) }()
	b.Cleanup(func() { stop(); <-done; st.Close() })
	e.svc = svc
	return e
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
