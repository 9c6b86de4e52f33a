package scenarios_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// scaleKeysEnv names the number of keys BenchmarkScale creates (default
// defaultScaleKeys); make bench-scale sets it to 1,000,000.
const (
	scaleKeysEnv     = "KEYBROKER_SCALE_KEYS"
	scaleEtcdKeysEnv = "KEYBROKER_SCALE_ETCD_KEYS" // for the etcd store, when it differs
	// scaleRotationsEnv sets how many keys each rotation run rotates
	// (scaleRotations by default).
	scaleRotationsEnv = "KEYBROKER_SCALE_ROTATIONS"
	defaultScaleKeys  = 10000
	scaleWorkers      = 8
	// scaleRotations is how many keys are rotated at the end of each
	// decade, for RotateKey's rate at that size.
	scaleRotations = 400
	// scaleHeapProfileEnv names a file prefix: with it, the benchmark
	// writes a heap profile of the live heap once every key is created
	// and applied (after a GC), to PREFIX.centrals=1-bbolt and so on.
	scaleHeapProfileEnv = "KEYBROKER_SCALE_HEAPPROFILE"
	// scaleCPUProfileEnv names a file prefix: with it, the benchmark
	// writes a CPU profile of the creation to PREFIX.centrals=1-bbolt.create
	// and one of the restart and the new edge's synchronisation to
	// PREFIX.centrals=1-bbolt.sync (go test -cpuprofile would mix them).
	scaleCPUProfileEnv = "KEYBROKER_SCALE_CPUPROFILE"
	// scaleDirEnv names a directory that keeps the cluster a run grew
	// (in DIR/centrals=1-bbolt and so on) instead of a temporary one. A
	// later run with the same key count finds it there (its scaleKeysFile
	// says how many keys it holds) and measures only the restart and a
	// new edge, so that growing to a million keys — most of an hour — is
	// done once while the restart's and the new edge's code change.
	scaleDirEnv   = "KEYBROKER_SCALE_DIR"
	scaleKeysFile = "scale-keys"
	// probeEvery paces the probe: a LookupKey and an Encrypt at the edge
	// every probeEvery, enough samples for a p99 per decade at a CPU cost
	// that stays small beside the creates'.
	probeEvery = 10 * time.Millisecond
)

// scaleDecades are the bounds of the decades of keys present the
// benchmark reports apart: 0–1k, 1k–10k, 10k–100k, 100k–1M.
var scaleDecades = []int{1000, 10000, 100000, 1000000}

// decadeName names the decade that ends at bound ("0-1k", "1k-10k", …).
func decadeName(i int) string {
	short := func(n int) string {
		switch {
		case n == 0:
			return "0"
		case n >= 1000000:
			return strconv.Itoa(n/1000000) + "M"
		case n >= 1000:
			return strconv.Itoa(n/1000) + "k"
		}
		return strconv.Itoa(n)
	}
	lo := 0
	if i > 0 {
		lo = scaleDecades[i-1]
	}
	return short(lo) + "-" + short(scaleDecades[i])
}

// BenchmarkScale grows a cluster (one central node, one prefetching edge,
// softkms; the registry in bbolt, then in etcd) to N keys — N from
// KEYBROKER_SCALE_KEYS, default 10,000; KEYBROKER_SCALE_ETCD_KEYS for the
// etcd store when it differs — as a user would: 8 workers creating
// derive-mode AES-256-GCM keys through the SDK's admin client at the
// central node, each worker an admin of its own (so that the central
// node's budget of root-of-trust calls per principal, 500/s, does not
// bound the rate). For each decade of keys present (0–1k, 1k–10k, 10k–100k,
// 100k–1M; the last one cut at N) it reports:
//
//   - creates/s: keys created ÷ the time from the decade's first create to
//     its last answer; and the edge's lag: from that last answer until the
//     edge has applied every key (the central node answers CreateKey once
//     its store has the key; the edge follows);
//   - CPU µs per create: this process's user+system CPU (getrusage) from
//     the decade's first create until the edge has applied its last, ÷
//     keys created; with etcd, the etcd member's CPU apart
//     (etcd-cpu-µs/create);
//   - create p50/p99, and LookupKey and Encrypt p99 at the edge: one probe
//     caller calls LookupKey then Encrypt on a key of its own at the edge
//     every 10 ms while the workers create (paced, so that its own CPU
//     stays small in the CPU per create);
//   - heap per key: runtime.MemStats.HeapAlloc after a GC, once the edge
//     has applied every key, ÷ keys present. One process holds the
//     central node, the edge and the clients, so this is the live heap of
//     both nodes together (the etcd member is a process apart); RSS per
//     key likewise (this process's resident set, /proc/self/statm).
//
// Then: restart to ready (Shutdown, Start again on the same directory,
// until WaitSynced: the central node reopens its store and the edge its
// replica and catches up), and a new edge fully synchronised (Shutdown,
// Start on the same directory with a second, never-started edge, until
// that edge has applied the central node's revision: this includes the
// central node's restart, which the restart figure gives alone) — first
// an edge that fetches material on use (its snapshot is metadata), then
// one that prefetches. The prefetching one: each key's material is derived by a root-of-trust call
// charged to that edge's budget (backend_budget.edge_rate, 20,000/s past a
// burst of 20,000; it was the clients' 500/s before edges had one), and
// sealed on every core;
// the profile says what the CPU was. Last,
// the size of the registry (registry.db, or etcd's data directory) and
// of the edge's replica.db.
//
// Every figure is a b.ReportMetric (one metric per decade, e.g.
// creates/s@1k-10k) and the run prints a table per store. It runs the
// whole growth once per b.N: run it with -benchtime 1x.
//
//	KEYBROKER_SCALE_KEYS=100000 go test -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 2h ./internal/scenarios/
//
// KEYBROKER_SCALE_CPUPROFILE=PREFIX writes a CPU profile of the creation
// and one of the restart and new edge apart; KEYBROKER_SCALE_HEAPPROFILE=PREFIX
// a heap profile once every key is created (see the constants).
//
// Its own costs are kept off the figures as far as they can be: latency
// goes into fixed-size HDR histograms (one per worker and decade), key
// ids are formatted per call, nothing grows with N.
func BenchmarkScale(b *testing.B) {
	if os.Getenv(scaleHeapProfileEnv) != "" {
		// Sample every 16 KiB allocated rather than every 512 KiB: at
		// 10,000 keys the live heap is tens of MiB, too few samples at
		// the default rate to rank the sites that hold it.
		runtime.MemProfileRate = 16 << 10
	}
	n := scaleKeys(b, scaleKeysEnv, defaultScaleKeys)
	nEtcd := scaleKeys(b, scaleEtcdKeysEnv, n)
	for _, t := range []struct {
		tier tier
		keys int
	}{{oneBolt, n}, {oneEtcd, nEtcd}} {
		b.Run(fmt.Sprintf("%s/keys=%d", t.tier, t.keys), func(b *testing.B) {
			if t.tier.etcd {
				etcdtest.SkipIfMissing(b)
			}
			for range b.N {
				growToScale(b, t.tier, t.keys)
			}
		})
	}
}

func scaleKeys(b *testing.B, env string, def int) int {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 10000000 {
		b.Fatalf("%s=%q: want a number of keys from 1 to 10,000,000", env, s)
	}
	return n
}

// decadeFigures are what one decade measured.
type decadeFigures struct {
	name            string
	keysAtEnd       int
	created         int
	createElapsed   time.Duration
	edgeLag         time.Duration // from the last create's answer until the edge has applied it
	cpu, etcdCPU    time.Duration
	creates         *hdr.Histogram
	rotated         int
	rotateElapsed   time.Duration
	rotates         *hdr.Histogram
	lookups, encs   *hdr.Histogram
	heapAlloc, rssB uint64
}

func newLatencyHistogram() *hdr.Histogram { return hdr.New(1, int64(time.Hour/time.Microsecond), 3) }

func ms(h *hdr.Histogram, q float64) float64 {
	if h.TotalCount() == 0 {
		return 0
	}
	return float64(h.ValueAtQuantile(q)) / 1000
}

// growToScale runs BenchmarkScale once on tier t up to n keys.
func growToScale(b *testing.B, t tier, n int) {
	ctx := b.Context()
	dir, grown := scaleDir(b, t, n)
	opts := devcluster.Options{Dir: dir, Centrals: 1,
		Edges: []devcluster.EdgeSpec{{Name: "edge-00", Region: "r0", Prefetch: true}}}
	if t.etcd {
		opts.Etcd = &devcluster.EtcdOptions{}
	}
	c, err := devcluster.Start(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	running := c
	b.Cleanup(func() {
		if running != nil {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = running.Shutdown(sctx)
		}
	})
	shutdown := func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		if err := running.Shutdown(sctx); err != nil {
			b.Fatal(err)
		}
		running = nil
	}
	waitSynced := func(c *devcluster.Cluster) {
		wctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		if err := c.WaitSynced(wctx); err != nil {
			b.Fatal(err)
		}
	}
	waitSynced(c)

	// One SDK client, and admin identity, per worker: a central node
	// bounds each principal's calls to the roots of trust (500/s by
	// default, and a derive-mode CreateKey makes one), and one admin
	// creating faster than that measures the budget, not the key count.
	admins := adminsOf(b, c)
	edgeApp := kbv1.NewKeyBrokerClient(dial(b, c, c.Edges[0].Addr(), identity.Client, devcluster.AppName))
	rotate := func(ctx context.Context, w int, id string) error {
		_, err := admins[w].RotateKey(ctx, &kbv1.KeyRequest{KeyId: id})
		return err
	}
	create := func(ctx context.Context, w int, id string) error {
		_, err := admins[w].CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
		return err
	}
	// The probe's key: created first and not counted among the n.
	if !grown {
		if err := create(ctx, 0, "scale-probe"); err != nil {
			b.Fatal(err)
		}
		waitSynced(c)
	}

	var etcdPid int
	if m := c.EtcdMember(); m != nil {
		etcdPid = m.Pid()
	}
	var out []decadeFigures
	present := 0
	if grown {
		present = n
		fmt.Fprintf(os.Stderr, "BenchmarkScale %s: %s holds %d keys already: measuring the restart and a new edge only\n", t, dir, n)
	}
	stopProfile := startCPUProfile(b, t, "create")
	b.ResetTimer()
	for i, bound := range scaleDecades {
		if present >= n {
			break
		}
		end := min(bound, n)
		d := decadeFigures{name: decadeName(i), keysAtEnd: end, created: end - present,
			lookups: newLatencyHistogram(), encs: newLatencyHistogram(), creates: newLatencyHistogram()}
		fmt.Fprintf(os.Stderr, "BenchmarkScale %s: creating keys %d to %d\n", t, present, end)

		stop := make(chan struct{})
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			probe(ctx, edgeApp, stop, d.lookups, d.encs)
		}()
		cpu0, etcd0 := selfCPU(), procCPU(etcdPid)
		start := time.Now()
		var next atomic.Int64
		next.Store(int64(present))
		done := make(chan struct{})
		go progress(t, &next, n, done)
		hists := make([]*hdr.Histogram, scaleWorkers)
		errs := make([]error, scaleWorkers)
		var wg sync.WaitGroup
		for w := range scaleWorkers {
			hists[w] = newLatencyHistogram()
			wg.Go(func() {
				for {
					k := next.Add(1) - 1
					if k >= int64(end) {
						return
					}
					t0 := time.Now()
					if err := create(ctx, w, "scale-"+strconv.FormatInt(k, 10)); err != nil {
						errs[w] = err
						return
					}
					_ = hists[w].RecordValue(min(time.Since(t0).Microseconds(), hists[w].HighestTrackableValue()))
				}
			})
		}
		wg.Wait()
		d.createElapsed = time.Since(start)
		close(done)
		for w := range scaleWorkers {
			if errs[w] != nil {
				close(stop)
				b.Fatalf("creating keys: %v", errs[w])
			}
			d.creates.Merge(hists[w])
		}
		fmt.Fprintf(os.Stderr, "BenchmarkScale %s: %s created: %.0f creates/s, p50 %.1f ms, p99 %.1f ms; waiting for the edge\n",
			t, d.name, float64(d.created)/d.createElapsed.Seconds(), ms(d.creates, 50), ms(d.creates, 99))
		synced := time.Now()
		lagDone := make(chan struct{})
		go edgeProgress(t, c, lagDone)
		waitSynced(c)
		close(lagDone)
		d.edgeLag = time.Since(synced)
		close(stop)
		<-probed
		d.cpu, d.etcdCPU = selfCPU()-cpu0, procCPU(etcdPid)-etcd0
		present = end
		b.StopTimer()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		d.heapAlloc, d.rssB = m.HeapAlloc, selfRSS()
		if path := os.Getenv(scaleHeapProfileEnv); path != "" && present == n {
			writeHeapProfile(b, fmt.Sprintf("%s.%s", path, t))
		}
		b.StartTimer()

		// RotateKey at this size: scaleRotations keys spread over those
		// present, by the same workers, once the edge has caught up.
		d.rotated, d.rotateElapsed, d.rotates = rotations(b, present, rotate)
		waitSynced(c)
		out = append(out, d)
		fmt.Fprintf(os.Stderr, "BenchmarkScale %s: %s: %.0f creates/s, edge lag %.2fs, %.0f CPU µs/create, LookupKey p99 %.2f ms, Encrypt p99 %.2f ms, heap %.0f B/key, %.0f rotates/s (p99 %.1f ms)\n",
			t, d.name, float64(d.created)/d.createElapsed.Seconds(), d.edgeLag.Seconds(), float64(d.cpu)/float64(time.Microsecond)/float64(d.created),
			ms(d.lookups, 99), ms(d.encs, 99), float64(d.heapAlloc)/float64(end), float64(d.rotated)/d.rotateElapsed.Seconds(), ms(d.rotates, 99))
	}
	b.StopTimer()
	stopProfile()
	if !grown && os.Getenv(scaleDirEnv) != "" {
		if err := os.WriteFile(filepath.Join(dir, scaleKeysFile), []byte(strconv.Itoa(n)), 0o600); err != nil {
			b.Fatal(err)
		}
	}

	// Restart to ready.
	stopProfile = startCPUProfile(b, t, "sync")
	shutdown()
	t0 := time.Now()
	if running, err = devcluster.Start(ctx, opts); err != nil {
		b.Fatal(err)
	}
	waitSynced(running)
	restart := time.Since(t0)
	// RotateKey once more at n keys, on the cluster just restarted (its
	// registry cache cold): in a kept directory, the rate at n on a
	// machine that the growth no longer loads. First the work a start
	// leaves running after ready is let finish — the audit chain's
	// verification, the first sweep's scan of every key (a minute or two
	// of CPU at a million keys): the rate wanted is the steady one.
	if m := running.EtcdMember(); m != nil {
		quiesce(b, m.Pid())
	} else {
		quiesce(b, 0)
	}
	rotateAdmins := adminsOf(b, running) // the central listens afresh
	rotatedAfter, rotateAfter, rotatesAfter := rotations(b, n, func(ctx context.Context, w int, id string) error {
		_, err := rotateAdmins[w].RotateKey(ctx, &kbv1.KeyRequest{KeyId: id})
		return err
	})
	waitSynced(running)
	fmt.Fprintf(os.Stderr, "BenchmarkScale %s: after the restart, at %d keys: %.0f rotates/s (p99 %.1f ms)\n",
		t, n, float64(rotatedAfter)/rotateAfter.Seconds(), ms(rotatesAfter, 99))
	b.ReportMetric(float64(rotatedAfter)/rotateAfter.Seconds(), "rotates/s-after-restart")
	b.ReportMetric(ms(rotatesAfter, 99), "rotate-p99-ms-after-restart")

	// A new edge fully synchronised: one that fetches material on use
	// (metadata only), then one that prefetches every key's material.
	newEdgeSync := func(prefetch bool) time.Duration {
		shutdown()
		// Named afresh on each run, so that it is new in a kept directory too.
		name := fmt.Sprintf("edge-new-%d-%t", time.Now().Unix(), prefetch)
		opts.Edges = append(opts.Edges, devcluster.EdgeSpec{Name: name, Region: "r1", Prefetch: prefetch})
		t0 := time.Now()
		var err error
		if running, err = devcluster.Start(ctx, opts); err != nil {
			b.Fatal(err)
		}
		rev := running.Central.Service().Registry().Store().Revision()
		fresh := running.Edges[len(running.Edges)-1].Cache()
		for !fresh.Connected() || fresh.LeaseExpires().IsZero() || fresh.Revision() < rev {
			select {
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
			if time.Since(t0) > time.Hour {
				b.Fatalf("the new edge has not applied revision %d in an hour (at %d)", rev, fresh.Revision())
			}
		}
		d := time.Since(t0)
		fmt.Fprintf(os.Stderr, "BenchmarkScale %s: new edge (prefetch %t) synchronised in %.2fs\n", t, prefetch, d.Seconds())
		return d
	}
	lazyEdge := newEdgeSync(false)
	newEdge := newEdgeSync(true)
	stopProfile()
	registry, replica := storeSizes(opts.Dir)

	reportScale(b, t, n, out, restart, lazyEdge, newEdge, registry, replica, etcdPid != 0)
}

// quiesce waits, at most ten minutes, until this process (the cluster
// and its clients) and the etcd member etcdPid, if any, use under a fifth
// of a core together over two seconds.
func quiesce(b *testing.B, etcdPid int) {
	busy := func() time.Duration { return selfCPU() + procCPU(etcdPid) }
	for deadline := time.Now().Add(10 * time.Minute); time.Now().Before(deadline); {
		c0 := busy()
		select {
		case <-b.Context().Done():
			return
		case <-time.After(2 * time.Second):
		}
		if busy()-c0 < 400*time.Millisecond {
			return
		}
	}
}

// adminsOf is one SDK admin client, with an identity of its own, per
// worker, at c's central node.
func adminsOf(b *testing.B, c *devcluster.Cluster) []kbv1.KeyAdminClient {
	admins := make([]kbv1.KeyAdminClient, scaleWorkers)
	for w := range admins {
		files, err := c.IssueFiles(identity.Admin, fmt.Sprintf("scale-admin-%d", w), b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		sdk, err := client.New(b.Context(), client.Config{Addrs: []string{c.Central.Addr()}, Direct: true,
			CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, Getenv: func(string) string { return "" }})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sdk.Close() })
		if admins[w], err = sdk.Admin(); err != nil {
			b.Fatal(err)
		}
	}
	return admins
}

// rotations rotates scaleRotations keys spread over the present ones
// (scale-0 … scale-present-1) with scaleWorkers workers, and returns how
// many, how long it took and the latencies.
func rotations(b *testing.B, present int, rotate func(context.Context, int, string) error) (int, time.Duration, *hdr.Histogram) {
	rotated := min(scaleRotations, present)
	if v, err := strconv.Atoi(os.Getenv(scaleRotationsEnv)); err == nil && v > 0 {
		rotated = min(v, present) // a longer run, to profile
	}
	out := newLatencyHistogram()
	var next atomic.Int64
	var mu sync.Mutex
	errs := make([]error, scaleWorkers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range scaleWorkers {
		wg.Go(func() {
			h := newLatencyHistogram()
			defer func() { mu.Lock(); out.Merge(h); mu.Unlock() }()
			for {
				k := next.Add(1) - 1
				if k >= int64(rotated) {
					return
				}
				t0 := time.Now()
				if err := rotate(b.Context(), w, "scale-"+strconv.FormatInt(k*int64(present)/int64(rotated), 10)); err != nil {
					errs[w] = err
					return
				}
				_ = h.RecordValue(min(time.Since(t0).Microseconds(), h.HighestTrackableValue()))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			b.Fatalf("rotating keys: %v", err)
		}
	}
	return rotated, elapsed, out
}

// scaleDir is where tier t's cluster lives: a temporary directory, or
// under KEYBROKER_SCALE_DIR, kept; grown says that a kept one already holds
// n keys.
func scaleDir(b *testing.B, t tier, n int) (dir string, grown bool) {
	root := os.Getenv(scaleDirEnv)
	if root == "" {
		return b.TempDir(), false
	}
	dir = filepath.Join(root, t.String())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, scaleKeysFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			b.Fatalf("%s holds a cluster that was not grown to the end (no %s): remove it", dir, scaleKeysFile)
		}
		return dir, false
	case err != nil:
		b.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(n) {
		b.Fatalf("%s holds %s keys, not %d: remove it or ask for that many", dir, got, n)
	}
	return dir, true
}

// progress prints, every 30 seconds until done is closed, how many keys
// have been handed to the workers: a run to a million keys takes tens of
// minutes. It goes to standard error, which go test passes through as the
// benchmark runs.
func progress(t tier, next *atomic.Int64, n int, done <-chan struct{}) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			fmt.Fprintf(os.Stderr, "BenchmarkScale %s: %d of %d keys at %s\n", t, min(next.Load(), int64(n)), n, time.Now().Format(time.TimeOnly))
		}
	}
}

// edgeProgress prints, every 30 seconds until done is closed, the
// revision the edge has applied against the central node's.
func edgeProgress(t tier, c *devcluster.Cluster, done <-chan struct{}) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			fmt.Fprintf(os.Stderr, "BenchmarkScale %s: the edge has applied revision %d of %d at %s\n", t,
				c.Edges[0].Cache().Revision(), c.Central.Service().Registry().Store().Revision(), time.Now().Format(time.TimeOnly))
		}
	}
}

// startCPUProfile starts a CPU profile of phase when
// KEYBROKER_SCALE_CPUPROFILE is set, and returns what stops it.
func startCPUProfile(b *testing.B, t tier, phase string) (stop func()) {
	prefix := os.Getenv(scaleCPUProfileEnv)
	if prefix == "" {
		return func() {}
	}
	path := fmt.Sprintf("%s.%s.%s", prefix, t, phase)
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				b.Error(err)
			}
			b.Logf("CPU profile in %s", path)
		})
	}
	b.Cleanup(stop) // when the benchmark fails before it stops it
	return stop
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
	b.Logf("heap profile in %s", path)
}

// probe calls LookupKey then Encrypt at the edge, every probeEvery, until
// stop is closed, recording each call's latency. A failed call is not
// recorded; it shows as fewer calls.
func probe(ctx context.Context, kb kbv1.KeyBrokerClient, stop <-chan struct{}, lookups, encs *hdr.Histogram) {
	lreq := &kbv1.LookupKeyRequest{KeyId: "scale-probe", Operation: kbv1.Operation_OPERATION_ENCRYPT}
	ereq := &kbv1.EncryptRequest{KeyId: "scale-probe", Plaintext: plaintext}
	record := func(h *hdr.Histogram, t0 time.Time, err error) {
		if err == nil {
			_ = h.RecordValue(min(time.Since(t0).Microseconds(), h.HighestTrackableValue()))
		}
	}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t0 := time.Now()
		_, err := kb.LookupKey(ctx, lreq)
		record(lookups, t0, err)
		t0 = time.Now()
		_, err = kb.Encrypt(ctx, ereq)
		record(encs, t0, err)
	}
}

// selfRSS is this process's resident set in bytes (0 when unknown).
func selfRSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// storeSizes are the bytes of the registry (the central node's
// registry.db, or the etcd member's backend file member/snap/db, what its
// quota bounds; not its write-ahead log) and of the first edge's
// replica.db.
func storeSizes(dir string) (registry, replica int64) {
	size := func(path string) int64 {
		info, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return info.Size()
	}
	registry = size(filepath.Join(dir, devcluster.CentralName(0), "registry.db"))
	if dbs, _ := filepath.Glob(filepath.Join(dir, "etcd", "*", "member", "snap", "db")); len(dbs) > 0 {
		registry = size(dbs[0])
	}
	return registry, size(filepath.Join(dir, "edge-00", "replica.db"))
}

func reportScale(b *testing.B, t tier, n int, out []decadeFigures, restart, lazyEdge, newEdge time.Duration, registry, replica int64, etcd bool) {
	perCreate := func(d time.Duration, k int) float64 { return float64(d) / float64(time.Microsecond) / float64(k) }
	var sb strings.Builder
	fmt.Fprintf(&sb, "BenchmarkScale %s, %d keys, %d workers (heap and RSS: one process holds the central node, the edge and the clients)\n", t, n, scaleWorkers)
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "keys present\tcreates/s\tedge lag s\tcreate p50 ms\tcreate p99 ms\tCPU µs/create\t"
	if etcd {
		head += "etcd CPU µs/create\t"
	}
	fmt.Fprintln(tw, head+"LookupKey p99 ms\tEncrypt p99 ms\tprobe calls\theap B/key\tRSS B/key\trotates/s\trotate p99 ms\t")
	for _, d := range out {
		rate := float64(d.created) / d.createElapsed.Seconds()
		at := "@" + d.name
		b.ReportMetric(rate, "creates/s"+at)
		b.ReportMetric(ms(d.creates, 50), "create-p50-ms"+at)
		b.ReportMetric(ms(d.creates, 99), "create-p99-ms"+at)
		b.ReportMetric(perCreate(d.cpu, d.created), "cpu-µs/create"+at)
		b.ReportMetric(ms(d.lookups, 99), "lookup-p99-ms"+at)
		b.ReportMetric(ms(d.encs, 99), "encrypt-p99-ms"+at)
		b.ReportMetric(float64(d.heapAlloc)/float64(d.keysAtEnd), "heap-B/key"+at)
		b.ReportMetric(d.edgeLag.Seconds(), "edge-lag-s"+at)
		row := fmt.Sprintf("%s\t%.0f\t%.2f\t%.1f\t%.1f\t%.0f\t", d.name, rate, d.edgeLag.Seconds(), ms(d.creates, 50), ms(d.creates, 99), perCreate(d.cpu, d.created))
		if etcd {
			b.ReportMetric(perCreate(d.etcdCPU, d.created), "etcd-cpu-µs/create"+at)
			row += fmt.Sprintf("%.0f\t", perCreate(d.etcdCPU, d.created))
		}
		rot := float64(d.rotated) / d.rotateElapsed.Seconds()
		b.ReportMetric(rot, "rotates/s"+at)
		b.ReportMetric(ms(d.rotates, 99), "rotate-p99-ms"+at)
		row += fmt.Sprintf("%.2f\t%.2f\t%d\t%.0f\t%.0f\t%.0f\t%.1f\t", ms(d.lookups, 99), ms(d.encs, 99), d.lookups.TotalCount(),
			float64(d.heapAlloc)/float64(d.keysAtEnd), float64(d.rssB)/float64(d.keysAtEnd), rot, ms(d.rotates, 99))
		fmt.Fprintln(tw, row)
	}
	_ = tw.Flush()
	b.ReportMetric(restart.Seconds(), "restart-s")
	b.ReportMetric(newEdge.Seconds(), "new-edge-sync-s")
	b.ReportMetric(lazyEdge.Seconds(), "new-lazy-edge-sync-s")
	b.ReportMetric(float64(registry), "registry-B")
	b.ReportMetric(float64(replica), "replica-B")
	fmt.Fprintf(&sb, "restart to ready %.2fs; a new edge synchronised after Start (the central node's restart included): %.2fs fetching material on use, %.2fs prefetching; registry %.1f MiB, the edge's replica.db %.1f MiB\n",
		restart.Seconds(), lazyEdge.Seconds(), newEdge.Seconds(), float64(registry)/(1<<20), float64(replica)/(1<<20))
	fmt.Print(sb.String())
}
