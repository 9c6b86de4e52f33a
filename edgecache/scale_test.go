package edgecache

// Benchmarks of the replica at scale (issue: a million keys): the cost of
// one key change in a replica of N keys, the latency of lookups and list
// pages while changes apply, and the heap each replica key holds.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
)

// scaleKey is key i as Watch sends it: a derive-mode AES key with one
// version, labels, a salt, and (sealed > 0) that many bytes of material
// sealed to the edge — about what sealed.Seal makes of 32 bytes.
func scaleKey(i int, rev uint64, sealed int) *kbv1.EdgeKey {
	created := time.Unix(1_700_000_000, 0)
	k := &managed.Key{ID: fmt.Sprintf("key-%07d", i), Type: managed.AES256GCM, Mode: managed.ModeDerive,
		State: managed.StateEnabled, Primary: 1, Labels: map[string]string{"owner": "app", "team": fmt.Sprintf("t%d", i%50)},
		Salt: bytes.Repeat([]byte{byte(i)}, 32), Created: created, Updated: created, Revision: rev,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf", Created: created}}}
	ek := &kbv1.EdgeKey{Metadata: wire.KeyToProto(k), Salt: k.Salt, Versions: []*kbv1.EdgeKeyVersion{{Version: 1}}}
	if sealed > 0 {
		ek.Versions[0].SealedMaterial = bytes.Repeat([]byte{byte(i), 1}, sealed/2)
	}
	return ek
}

// scaleCache opens an edge whose replica holds n keys (one snapshot at
// revision 1) and a lease that lasts, with no central tier behind it.
// replica.db is not synced to disk on commit: the benchmarks measure the
// edge's own work, not the disk's.
func scaleCache(tb testing.TB, n, sealed int) *Cache {
	tb.Helper()
	ec, err := Open(Config{NodeID: "edge-1", TrustDomain: testTD, Address: "127.0.0.1:1", DataDir: tb.TempDir(),
		Central: newFakeConn(connectivity.Ready), MaxStaleness: time.Hour})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { ec.Close() })
	ec.disk.db.NoSync = true
	snap := &kbv1.EdgeSnapshot{}
	for i := range n {
		snap.Keys = append(snap.Keys, scaleKey(i, 1, sealed))
	}
	for _, ev := range []*kbv1.WatchEvent{
		{Revision: 1, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}},
		{Revision: 1, Event: &kbv1.WatchEvent_Heartbeat{Heartbeat: &kbv1.Heartbeat{LeaseExpires: timestamppb.New(time.Now().Add(24 * time.Hour))}}},
	} {
		if err := ec.apply(ev); err != nil {
			tb.Fatalf("apply: %v", err)
		}
	}
	return ec
}

// BenchmarkKeyChange applies key changes (updates of existing keys) to a
// replica of N keys while readers resolve keys (what every request and
// LookupKey does first) and list pages from random cursors. It reports
// ns per change and the p99 latency of each reader.
func BenchmarkKeyChange(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ec := scaleCache(b, n, 0)
			perf := &performer{c: ec}
			src := replicaSource{ec}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var get, list []time.Duration
			// Each reader issues one call every 200µs. A call that took
			// longer also counts the calls that would have been due while
			// it waited, each with the time it would have waited (the
			// correction HdrHistogram makes for coordinated omission):
			// otherwise one call held up behind a change counts once.
			reader := func(out *[]time.Duration, op func(r *rand.Rand)) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(1, 2))
				const every = 200 * time.Microsecond
				for {
					select {
					case <-stop:
						return
					default:
					}
					t0 := time.Now()
					op(r)
					took := time.Since(t0)
					for l := took; l > 0; l -= every {
						*out = append(*out, l)
					}
					time.Sleep(every - min(took, every))
				}
			}
			wg.Add(2)
			go reader(&get, func(r *rand.Rand) {
				if _, err := src.Get(b.Context(), fmt.Sprintf("key-%07d", r.IntN(n))); err != nil {
					b.Error(err)
				}
			})
			go reader(&list, func(r *rand.Rand) {
				if _, _, err := perf.ListKeys(b.Context(), nil, 100, fmt.Sprintf("key-%07d", r.IntN(n)), nil); err != nil {
					b.Error(err)
				}
			})
			b.ResetTimer()
			for i := range b.N {
				ev := &kbv1.WatchEvent{Revision: uint64(i + 2), Event: &kbv1.WatchEvent_Key{Key: scaleKey(i%n, uint64(i+2), 0)}}
				if err := ec.apply(ev); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			b.ReportMetric(float64(p99(get).Microseconds()), "get-p99-µs")
			b.ReportMetric(float64(p99(list).Microseconds()), "list-p99-µs")
		})
	}
}

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)*99/100]
}

// gc collects twice: pages bbolt keeps in a sync.Pool after a large
// transaction survive one collection.
func gc() {
	runtime.GC()
	runtime.GC()
}

// BenchmarkReplicaMemory reports the heap a replica of N keys holds per
// key after a collection (run with -benchtime=1x), with material sealed
// to the edge (prefetch) and without.
func BenchmarkReplicaMemory(b *testing.B) {
	for _, sealed := range []int{0, 120} {
		for _, n := range []int{10_000, 100_000} {
			b.Run(fmt.Sprintf("keys=%d/sealed=%d", n, sealed), func(b *testing.B) {
				for range b.N {
					var before, after runtime.MemStats
					gc()
					runtime.ReadMemStats(&before)
					ec := scaleCache(b, n, sealed)
					gc()
					runtime.ReadMemStats(&after)
					b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n), "heap-B/key")
					runtime.KeepAlive(ec)
				}
			})
		}
	}
}

// BenchmarkApplyChanges follows a fake central tier that sends key
// changes (updates of existing keys, each with 120 bytes of material
// sealed to the edge, as for a prefetching edge) faster than the edge
// applies them, to a replica of N keys, with replica.db synced on every
// commit as in production (not NoSync). One op is one change applied;
// it reports changes applied per second and commits per change. Run it
// with a fixed count: -benchtime=5000x (the replica of N keys is built
// again for every run).
func BenchmarkApplyChanges(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			changes := make([]*kbv1.WatchEvent, b.N)
			for i := range changes {
				rev := uint64(i + 2)
				changes[i] = &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Key{Key: scaleKey((i*7919)%n, rev, 120)}}
			}
			f := &fakeSync{sessions: make(chan fakeSession, 2)}
			got, release := make(chan *kbv1.WatchRequest, 1), make(chan struct{})
			f.sessions <- fakeSession{events: append(chunks(1, 0, n, 1000), heartbeat(1)), end: status.Error(codes.Unavailable, "snapshot sent")}
			f.sessions <- fakeSession{got: got, release: release, events: changes}
			ec := startFakeSync(b, f)
			<-got
			waitFor(b, "the snapshot to apply", func() bool { return ec.Revision() == 1 })
			commits := ec.Stats().ReplicaCommits
			b.ResetTimer()
			t0 := time.Now()
			close(release)
			want := uint64(b.N + 1)
			deadline := t0.Add(10 * time.Minute)
			for ec.Revision() < want {
				if time.Now().After(deadline) {
					b.Fatalf("revision %d after 10 minutes, want %d", ec.Revision(), want)
				}
				time.Sleep(time.Millisecond)
			}
			took := time.Since(t0)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/took.Seconds(), "changes/s")
			b.ReportMetric(float64(ec.Stats().ReplicaCommits-commits)/float64(b.N), "commits/change")
		})
	}
}

// BenchmarkRestore opens a replica of N keys again, as an edge does when
// it restarts: the state, every key decoded and indexed. It reports the
// time to open per key (run with -benchtime=3x: each open reads the
// whole replica).
func BenchmarkRestore(b *testing.B) {
	for _, n := range []int{100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ec := scaleCache(b, n, 0)
			cfg := ec.cfg
			if err := ec.Close(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				ec, err := Open(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if len(ec.keys) != n {
					b.Fatalf("restored %d keys, want %d", len(ec.keys), n)
				}
				b.StopTimer()
				ec.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
		})
	}
}
