package main

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/loadgen"
)

// bench --op create: grow the registry and measure how its cost changes
// with the number of keys present.

const (
	// defaultCreateCount is --count for --op create when not given.
	defaultCreateCount = 10000
	// maxCreateCount bounds --count for --op create (and --existing).
	maxCreateCount = 100_000_000
	// listPageSize is the page size create asks ListKeys for when it
	// counts the keys present.
	listPageSize = 1000
)

// decadeOf is the decade of n keys present: 0 for 0–999, 1 for
// 1,000–9,999, 2 for 10,000–99,999 and so on.
func decadeOf(n int) int {
	d := 0
	for bound := 1000; n >= bound && bound <= math.MaxInt/10; bound *= 10 {
		d++
	}
	return d
}

// decadeBounds are the keys present at the start and at the end of
// decade d: 0 and 1,000; 1,000 and 10,000; …
func decadeBounds(d int) (lo, hi int) {
	hi = 1000
	for range d {
		hi *= 10
	}
	if d > 0 {
		lo = hi / 10
	}
	return lo, hi
}

// countText writes a key count short: 0, 999, 1k, 10k, 1M, 2.5M.
func countText(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "M"
	case n >= 1_000_000:
		return strconv.FormatFloat(float64(n)/1e6, 'g', 4, 64) + "M"
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

func decadeName(d int) string {
	lo, hi := decadeBounds(d)
	return countText(lo) + "-" + countText(hi)
}

// metricsTarget is one entry of --metrics for --op create: a node's name
// and its ops /metrics URL.
type metricsTarget struct {
	Name string `json:"node"`
	URL  string `json:"metrics"`
}

// parseMetricsTargets reads --metrics for --op create: name=host:port
// (the node's operations port; /metrics over HTTPS is read), or
// name=URL. Without "name=" the address is the name.
func parseMetricsTargets(entries []string) ([]metricsTarget, error) {
	var out []metricsTarget
	seen := map[string]bool{}
	for _, e := range entries {
		name, addr, named := strings.Cut(e, "=")
		if !named {
			name, addr = e, e
		}
		if name == "" || addr == "" {
			return nil, fmt.Errorf("--metrics %q: want name=host:port (a node's operations port) or name=https://host:port/metrics", e)
		}
		u := addr
		if !strings.Contains(addr, "://") {
			if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
				return nil, fmt.Errorf("--metrics %q: %q is not host:port; want name=host:port (a node's operations port) or name=https://host:port/metrics", e, addr)
			}
			u = "https://" + addr + "/metrics"
		}
		if p, err := url.Parse(u); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return nil, fmt.Errorf("--metrics %q: %q is not an http(s) URL such as https://127.0.0.1:7710/metrics", e, addr)
		}
		if seen[name] {
			return nil, fmt.Errorf("--metrics: node %s is named twice", name)
		}
		seen[name] = true
		out = append(out, metricsTarget{Name: name, URL: u})
	}
	return out, nil
}

// createPlan is --op create's settings once checked.
type createPlan struct {
	prefix   string
	count    int
	existing int // -1: count them with ListKeys
	probe    string
	metrics  []metricsTarget
}

// checkCreate checks the flags of --op create: it runs alone, for a count
// of keys, with a prefix that makes valid key ids.
func (f *benchFlags) checkCreate(cmd *cobra.Command, ops []weightedOp) (createPlan, error) {
	var p createPlan
	if len(ops) > 1 {
		return p, usageErrorf("--op create runs alone, not in a mix")
	}
	for _, name := range []string{"duration", "warmup", "interval", "compare-noop", "rounds", "max-rss-growth", "size", "batch", "key", "context"} {
		if cmd.Flags().Changed(name) {
			return p, usageErrorf("--%s does not apply to --op create: it creates --count keys (default %d) and stops", name, defaultCreateCount)
		}
	}
	switch {
	case f.workers < 1 || f.workers > 10000:
		return p, usageErrorf("--concurrency must be 1 to 10000, not %d", f.workers)
	case f.conns < 1 || f.conns > f.workers:
		return p, usageErrorf("--connections must be 1 to --concurrency (%d), not %d", f.workers, f.conns)
	case f.count > maxCreateCount:
		return p, usageErrorf("--count must be at most %d for --op create, not %d", maxCreateCount, f.count)
	case f.existing < -1 || f.existing > maxCreateCount:
		return p, usageErrorf("--existing must be 0 to %d (or -1, the default, to count the keys with ListKeys), not %d", maxCreateCount, f.existing)
	}
	p.count, p.existing, p.probe, p.prefix = int(f.count), f.existing, f.probe, f.prefix
	if p.count == 0 {
		p.count = defaultCreateCount
	}
	if p.prefix == "" {
		p.prefix = "bench-" + time.Now().UTC().Format("20060102-150405") + "-"
	}
	first, last := p.prefix+"0", p.prefix+strconv.Itoa(p.count-1)
	if !envelope.ValidKeyID(first) || !envelope.ValidKeyID(last) {
		return p, invalidInputf("--prefix %q: the key ids %s … %s must be 1-%d of [A-Za-z0-9._:/-], starting with a letter or digit", p.prefix, first, last, envelope.MaxKeyID)
	}
	if p.probe != "" && !envelope.ValidKeyID(p.probe) {
		return p, invalidInputf("--probe %q is not a key id: 1-%d of [A-Za-z0-9._:/-], starting with a letter or digit", p.probe, envelope.MaxKeyID)
	}
	var err error
	if p.metrics, err = parseMetricsTargets(f.metrics); err != nil {
		return p, usageError(err)
	}
	return p, nil
}

// createJSON is the --output json result of --op create.
type createJSON struct {
	Target   string `json:"target"`
	Op       string `json:"op"`
	Prefix   string `json:"prefix"`
	Workers  int    `json:"workers"`
	Count    int    `json:"count"`
	Existing int    `json:"existing_keys"`
	// ExistingFrom says where Existing came from: "ListKeys" or
	// "--existing".
	ExistingFrom string `json:"existing_from"`
	Probe        string `json:"probe_key,omitempty"`
	// Result covers every create; Decades split it by keys present when
	// each call began.
	Result  loadgen.Stats      `json:"result"`
	Decades []createDecadeJSON `json:"decades"`
	Memory  []memoryAtJSON     `json:"memory,omitempty"`
	Calls   map[string]uint64  `json:"calls_by_op"`
}

// createDecadeJSON is one decade of keys present.
type createDecadeJSON struct {
	Keys    string         `json:"keys_present"` // "1k-10k"
	From    int            `json:"from"`
	To      int            `json:"to"`
	Create  loadgen.Stats  `json:"create"`
	Lookup  *loadgen.Stats `json:"lookup,omitempty"`
	Encrypt *loadgen.Stats `json:"encrypt,omitempty"`
}

// memoryAtJSON is one node's memory with KeysPresent keys.
type memoryAtJSON struct {
	Node        string  `json:"node"`
	KeysPresent int     `json:"keys_present"`
	Resident    float64 `json:"resident_bytes,omitempty"`
	HeapInuse   float64 `json:"heap_inuse_bytes,omitempty"`
	// ResidentPerKey and HeapInusePerKey divide by KeysPresent (absent
	// with no keys).
	ResidentPerKey  float64 `json:"resident_bytes_per_key,omitempty"`
	HeapInusePerKey float64 `json:"heap_inuse_bytes_per_key,omitempty"`
	Error           string  `json:"error,omitempty"`
}

// series is the calls of one kind (creates, or the probe's lookups or
// encrypts) in one decade.
type series struct {
	hist        *hdr.Histogram
	failed      map[string]uint64
	first, last time.Time
}

// decadeStats gathers the calls of every decade, by kind. One mutex: the
// calls it guards are RPCs, each far longer than the lock.
type decadeStats struct {
	mu    sync.Mutex
	kinds map[string]map[int]*series // kind → decade → series
}

func (s *decadeStats) record(kind string, decade int, start time.Time, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kinds == nil {
		s.kinds = map[string]map[int]*series{}
	}
	byDecade := s.kinds[kind]
	if byDecade == nil {
		byDecade = map[int]*series{}
		s.kinds[kind] = byDecade
	}
	sr := byDecade[decade]
	if sr == nil {
		sr = &series{hist: hdr.New(int64(time.Microsecond), int64(time.Hour), 3), failed: map[string]uint64{}, first: start}
		byDecade[decade] = sr
	}
	if start.Before(sr.first) {
		sr.first = start
	}
	if end := start.Add(d); end.After(sr.last) {
		sr.last = end
	}
	if err != nil {
		sr.failed[status.Code(err).String()]++
		return
	}
	_ = sr.hist.RecordValue(min(max(int64(d), int64(time.Microsecond)), int64(time.Hour)))
}

// stats turns a series into loadgen's figures: the rate is over the time
// from the first call's start to the last call's end.
func (sr *series) stats() loadgen.Stats {
	st := loadgen.Stats{Start: sr.first, Elapsed: sr.last.Sub(sr.first), Ops: uint64(sr.hist.TotalCount())}
	for c, n := range sr.failed {
		if st.Errors == nil {
			st.Errors = map[string]uint64{}
		}
		st.Errors[c] += n
		st.Failed += n
	}
	if st.Ops > 0 {
		at := func(q float64) time.Duration { return time.Duration(sr.hist.ValueAtPercentile(q)) }
		st.Latency = loadgen.Latency{P50: at(50), P90: at(90), P99: at(99), P999: at(99.9),
			Max: time.Duration(sr.hist.Max()), Mean: time.Duration(sr.hist.Mean())}
	}
	return st
}

// merged is every decade's series of kind together.
func (s *decadeStats) merged(kind string) loadgen.Stats {
	all := &series{hist: hdr.New(int64(time.Microsecond), int64(time.Hour), 3), failed: map[string]uint64{}}
	for _, sr := range s.kinds[kind] {
		all.hist.Merge(sr.hist)
		for c, n := range sr.failed {
			all.failed[c] += n
		}
		if all.first.IsZero() || sr.first.Before(all.first) {
			all.first = sr.first
		}
		if sr.last.After(all.last) {
			all.last = sr.last
		}
	}
	return all.stats()
}

// benchCreate runs --op create.
func (a *app) benchCreate(cmd *cobra.Command, f *benchFlags, ops []weightedOp) error {
	p, err := f.checkCreate(cmd, ops)
	if err != nil {
		return err
	}
	s, err := a.connect(cmd)
	if err != nil {
		return err
	}
	defer s.close()
	ctx := cmd.Context()
	out := createJSON{Target: s.addr, Op: "create", Prefix: p.prefix, Workers: f.workers, Count: p.count,
		Existing: p.existing, ExistingFrom: "--existing", Probe: p.probe}
	if p.existing < 0 {
		n, err := countKeys(ctx, s)
		if err != nil {
			return err
		}
		out.Existing, out.ExistingFrom = n, "ListKeys"
	}
	conns, closeConns, err := benchConns(s, f.conns)
	if err != nil {
		return err
	}
	defer closeConns()
	admins := make([]kbv1.KeyAdminClient, len(conns))
	for i, c := range conns {
		admins[i] = kbv1.NewKeyAdminClient(c)
	}
	if !a.jsonOutput() {
		fmt.Fprintf(a.env.stdout, "bench create at %s: %d keys %s0 … %s%d, %d workers on %d connection(s); %d keys present before (%s)\n",
			s.addr, p.count, p.prefix, p.prefix, p.count-1, f.workers, f.conns, out.Existing, out.ExistingFrom)
	}

	scraper := &metricsReader{client: &http.Client{Transport: &http.Transport{TLSClientConfig: s.tls}, Timeout: 10 * time.Second}}
	var memMu sync.Mutex
	scrape := func(present int) {
		for _, m := range p.metrics {
			r := scraper.read(ctx, m.URL)
			at := memoryAtJSON{Node: m.Name, KeysPresent: present, Resident: r.rss, HeapInuse: r.heapInuse}
			if r.err != nil {
				at = memoryAtJSON{Node: m.Name, KeysPresent: present, Error: r.err.Error()}
			} else if present > 0 {
				at.ResidentPerKey, at.HeapInusePerKey = r.rss/float64(present), r.heapInuse/float64(present)
			}
			memMu.Lock()
			out.Memory = append(out.Memory, at)
			memMu.Unlock()
		}
	}
	// Readings are taken in order by one goroutine, so that a slow
	// /metrics holds up no worker.
	boundaries := make(chan int, 64)
	var scraping sync.WaitGroup
	if len(p.metrics) > 0 {
		scraping.Go(func() {
			for present := range boundaries {
				scrape(present)
			}
		})
	}
	boundary := func(present int) {
		if len(p.metrics) > 0 {
			boundaries <- present
		}
	}
	boundary(out.Existing)

	var stats decadeStats
	var created atomic.Int64 // keys created by this run so far
	var next atomic.Int64
	calls := func(ctx context.Context) (context.Context, context.CancelFunc) {
		if s.timeout > 0 {
			return context.WithTimeout(ctx, s.timeout)
		}
		return context.WithCancel(ctx)
	}
	progress := a.createProgress(p.count)
	var workers sync.WaitGroup
	for w := range f.workers {
		admin := admins[w%len(admins)]
		workers.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(p.count) {
					return
				}
				present := out.Existing + int(created.Load())
				req := &kbv1.CreateKeyRequest{KeyId: p.prefix + strconv.FormatInt(i, 10),
					Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}
				cctx, cancel := calls(ctx)
				start := time.Now()
				_, err := admin.CreateKey(cctx, req)
				d := time.Since(start)
				cancel()
				if ctx.Err() != nil {
					return // cut short by an interrupt: not counted
				}
				stats.record("create", decadeOf(present), start, d, err)
				if err == nil {
					n := out.Existing + int(created.Add(1))
					if isDecadeBoundary(n) {
						boundary(n)
					}
					progress(int(created.Load()))
				}
			}
		})
	}
	stop := make(chan struct{})
	var probing sync.WaitGroup
	if p.probe != "" {
		probing.Go(func() {
			runProbe(ctx, s.kb, p.probe, stop, calls, &stats, func() int { return out.Existing + int(created.Load()) })
		})
	}
	workers.Wait()
	close(stop)
	probing.Wait()
	if final := out.Existing + int(created.Load()); created.Load() > 0 && !isDecadeBoundary(final) {
		boundary(final)
	}
	close(boundaries)
	scraping.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}

	out.Result = stats.merged("create")
	out.Calls = map[string]uint64{}
	for _, kind := range []string{"create", "lookup", "encrypt"} {
		for _, sr := range stats.kinds[kind] {
			out.Calls[kind] += uint64(sr.hist.TotalCount())
			for _, n := range sr.failed {
				out.Calls[kind] += n
			}
		}
	}
	for _, d := range slices.Sorted(maps.Keys(stats.kinds["create"])) {
		lo, hi := decadeBounds(d)
		dj := createDecadeJSON{Keys: decadeName(d), From: lo, To: hi, Create: stats.kinds["create"][d].stats()}
		if sr := stats.kinds["lookup"][d]; sr != nil {
			st := sr.stats()
			dj.Lookup = &st
		}
		if sr := stats.kinds["encrypt"][d]; sr != nil {
			st := sr.stats()
			dj.Encrypt = &st
		}
		out.Decades = append(out.Decades, dj)
	}
	slices.SortStableFunc(out.Memory, func(x, y memoryAtJSON) int { return x.KeysPresent - y.KeysPresent })
	if a.jsonOutput() {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		a.printCreate(out)
	}
	return createVerdict(out)
}

// isDecadeBoundary says whether n keys present is a decade's boundary:
// 1,000, 10,000, 100,000, ….
func isDecadeBoundary(n int) bool {
	if n < 1000 {
		return false
	}
	for n%10 == 0 {
		n /= 10
	}
	return n == 1
}

// createProgress returns a function that prints, on standard error, how
// far the run has come at each tenth of count (only for runs of 10,000
// keys or more, which take minutes, and never with --output json).
func (a *app) createProgress(count int) func(created int) {
	if count < 10000 || a.jsonOutput() {
		return func(int) {}
	}
	start := time.Now()
	step := count / 10
	return func(created int) {
		if created%step == 0 {
			fmt.Fprintf(a.env.stderr, "bench create: %d of %d keys created in %s\n", created, count, time.Since(start).Round(time.Second))
		}
	}
}

// probeEvery paces --probe: a LookupKey and an Encrypt every 10 ms, enough
// for a p99 per decade. Unpaced, the probe's own load on a one-process dev
// cluster took most of the CPU the creates were to be measured with.
const probeEvery = 10 * time.Millisecond

// runProbe calls LookupKey then Encrypt on key every probeEvery until stop
// is closed, recording each under the decade of the keys present when it
// began.
func runProbe(ctx context.Context, kb kbv1.KeyBrokerClient, key string, stop <-chan struct{},
	calls func(context.Context) (context.Context, context.CancelFunc), stats *decadeStats, present func() int) {
	lreq := &kbv1.LookupKeyRequest{KeyId: key, Operation: kbv1.Operation_OPERATION_ENCRYPT}
	ereq := &kbv1.EncryptRequest{KeyId: key, Plaintext: []byte("keybroker bench probe")}
	call := func(kind string, rpc func(context.Context) error) {
		decade := decadeOf(present())
		cctx, cancel := calls(ctx)
		start := time.Now()
		err := rpc(cctx)
		d := time.Since(start)
		cancel()
		if ctx.Err() == nil {
			stats.record(kind, decade, start, d, err)
		}
	}
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		// A pair first, then the pause: every run probes at least once.
		call("lookup", func(ctx context.Context) error { _, err := kb.LookupKey(ctx, lreq); return err })
		call("encrypt", func(ctx context.Context) error { _, err := kb.Encrypt(ctx, ereq); return err })
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// countKeys counts the keys present by paging through ListKeys.
func countKeys(ctx context.Context, s *session) (int, error) {
	n := 0
	token := ""
	seen := map[string]bool{}
	for {
		cctx, cancel := s.context()
		resp, err := s.kb.ListKeys(cctx, &kbv1.ListKeysRequest{PageSize: listPageSize, PageToken: token})
		if err != nil {
			err = s.fail(cctx, "bench: counting the keys present (ListKeys; or give --existing)", err)
			cancel()
			return 0, err
		}
		cancel()
		n += len(resp.GetKeys())
		token = resp.GetNextPageToken()
		if token == "" || ctx.Err() != nil {
			return n, ctx.Err()
		}
		if seen[token] {
			return 0, fmt.Errorf("bench: counting the keys present: the broker returned page token %q twice", token)
		}
		seen[token] = true
	}
}

// createVerdict fails a run in which calls failed.
func createVerdict(out createJSON) error {
	var problems []string
	for _, kind := range []string{"create", "lookup", "encrypt"} {
		var failed uint64
		errs := map[string]uint64{}
		for _, d := range out.Decades {
			st := map[string]*loadgen.Stats{"create": &d.Create, "lookup": d.Lookup, "encrypt": d.Encrypt}[kind]
			if st == nil {
				continue
			}
			failed += st.Failed
			for c, n := range st.Errors {
				errs[c] += n
			}
		}
		if failed > 0 {
			problems = append(problems, fmt.Sprintf("%d of %d %s calls failed (%s)", failed, out.Calls[kind], kind, errorsText(errs)))
		}
	}
	if len(problems) > 0 {
		return &exitError{exitFailure, fmt.Errorf("bench: %s", strings.Join(problems, "; "))}
	}
	return nil
}

func (a *app) printCreate(out createJSON) {
	tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
	head := "keys present\tcreated\tcreates/s\tp50\tp99\terrors"
	if out.Probe != "" {
		head += "\tLookupKey p50\tp99\tEncrypt p50\tp99"
	}
	fmt.Fprintln(tw, head)
	probe := func(st *loadgen.Stats) string {
		if st == nil {
			return "\t-\t-"
		}
		return fmt.Sprintf("\t%s\t%s", durText(st.Latency.P50), durText(st.Latency.P99))
	}
	row := func(name string, st loadgen.Stats, lookup, encrypt *loadgen.Stats) {
		line := fmt.Sprintf("%s\t%d\t%.0f\t%s\t%s\t%s", name, st.Ops, st.Rate(), durText(st.Latency.P50), durText(st.Latency.P99), errorsText(st.Errors))
		if out.Probe != "" {
			line += probe(lookup) + probe(encrypt)
		}
		fmt.Fprintln(tw, line)
	}
	for _, d := range out.Decades {
		row(d.Keys, d.Create, d.Lookup, d.Encrypt)
	}
	if len(out.Decades) > 1 {
		row("all", out.Result, nil, nil)
	}
	_ = tw.Flush()
	if len(out.Memory) == 0 {
		return
	}
	fmt.Fprintln(a.env.stdout, "memory at each decade's boundary:")
	tw = tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "keys present\tnode\tresident\theap in use\tresident/key\theap in use/key")
	for _, m := range out.Memory {
		if m.Error != "" {
			fmt.Fprintf(tw, "%d\t%s\t%s\t\t\t\n", m.KeysPresent, m.Node, m.Error)
			continue
		}
		perKey := func(v float64) string {
			if m.KeysPresent == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f B", v)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.1f MiB\t%.1f MiB\t%s\t%s\n", m.KeysPresent, m.Node, m.Resident/(1<<20), m.HeapInuse/(1<<20),
			perKey(m.ResidentPerKey), perKey(m.HeapInusePerKey))
	}
	_ = tw.Flush()
}
