package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/keybroker/keybroker/client"
)

// startCluster starts the example's in-process cluster: central and one
// edge fetching material on first use.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	c, err := startDevCluster(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Errorf("closing the cluster: %v", err)
		}
	})
	return c
}

func newService(t *testing.T, c *cluster, reuse time.Duration, now func() time.Time) *Service {
	t.Helper()
	svc, err := NewService(ServiceConfig{DB: filepath.Join(t.TempDir(), "queues.db"), Client: c.Client, Admin: c.Admin, Reuse: reuse, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

func readTiers(t *testing.T, c *cluster) tierCalls {
	t.Helper()
	tc, err := c.Metrics.Read(t.Context())
	if err != nil || !tc.HaveCentral || !tc.HaveEdges {
		t.Fatalf("reading the nodes' metrics: %+v, %v", tc, err)
	}
	return tc
}

// recorder keeps what a workload put and got, and checks order as
// messages arrive.
type recorder struct {
	mu   sync.Mutex
	sent map[string]map[uint64]Message // queue → seq → message
	got  map[string]map[uint64][]Message
	last map[string]uint64 // consumer/queue → last seq got
	errs []string
}

func newRecorder(w *Workload) *recorder {
	r := &recorder{sent: map[string]map[uint64]Message{}, got: map[string]map[uint64][]Message{}, last: map[string]uint64{}}
	w.Sent = func(queue string, seq uint64, m Message) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.sent[queue] == nil {
			r.sent[queue] = map[uint64]Message{}
		}
		r.sent[queue][seq] = Message{ID: m.ID, Body: bytes.Clone(m.Body)}
	}
	w.Got = func(consumer int, d Delivery) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.got[d.Queue] == nil {
			r.got[d.Queue] = map[uint64][]Message{}
		}
		r.got[d.Queue][d.Seq] = append(r.got[d.Queue][d.Seq], d.Message)
		k := fmt.Sprintf("consumer %d, queue %s", consumer, d.Queue)
		if d.Seq <= r.last[k] {
			r.errs = append(r.errs, fmt.Sprintf("%s: got message %d after %d", k, d.Seq, r.last[k]))
		}
		r.last[k] = d.Seq
	}
	return r
}

// check asserts that every message put was got exactly once, as it was
// put; that consumers got each queue's messages in order; and that each
// producer's messages are in a queue in the order it put them.
func (r *recorder) check(t *testing.T) (put int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		t.Error(e)
	}
	for queue, sent := range r.sent {
		for seq, m := range sent {
			put++
			got := r.got[queue][seq]
			switch {
			case len(got) != 1:
				t.Errorf("queue %s message %d (%s) got %d times, want once", queue, seq, m.ID, len(got))
			case got[0].ID != m.ID || !bytes.Equal(got[0].Body, m.Body):
				t.Errorf("queue %s message %d: got %s %x, put %s %x", queue, seq, got[0].ID, got[0].Body, m.ID, m.Body)
			}
		}
		// A producer's messages, in sequence order, are in the order it
		// put them (ids p<producer>-<n>, n increasing).
		last := map[string]int{}
		for _, seq := range slices.Sorted(maps.Keys(sent)) {
			var p string
			var n int
			if _, err := fmt.Sscanf(strings.Replace(sent[seq].ID, "-", " ", 1), "%s %d", &p, &n); err != nil {
				t.Fatalf("message id %q: %v", sent[seq].ID, err)
			}
			if prev, ok := last[p]; ok && n <= prev {
				t.Errorf("queue %s: producer %s's message %d is after its message %d", queue, p, n, prev)
			}
			last[p] = n
		}
	}
	for queue, got := range r.got {
		for seq := range got {
			if _, ok := r.sent[queue][seq]; !ok {
				t.Errorf("queue %s: got message %d, which was never put", queue, seq)
			}
		}
	}
	return put
}

func checkEmpty(t *testing.T, svc *Service, w *Workload) {
	t.Helper()
	for _, q := range w.QueueNames() {
		if n, err := svc.Len(t.Context(), q); err != nil || n != 0 {
			t.Errorf("queue %s holds %d messages after the run (%v), want 0", q, n, err)
		}
	}
}

// TestWorkload runs producers and consumers on two queues through the
// in-process cluster: every message arrives once, in order, as it was
// put, and the cost is per queue, not per message — one data key each way
// per queue, a handful of SDK calls, one material fetch at the edge and
// two derivations at the root of trust (one when the key is created, one
// when its material is first fetched).
func TestWorkload(t *testing.T) {
	c := startCluster(t)
	svc := newService(t, c, 5*time.Minute, nil)
	w := &Workload{Queues: 2, Producers: 3, Consumers: 3, Messages: 4000, Size: 64, Batch: 50}
	rec := newRecorder(w)
	before := readTiers(t, c)

	var p Progress
	if err := w.Run(t.Context(), svc, nil, &p); err != nil {
		t.Fatal(err)
	}
	if put := rec.check(t); put != w.Messages {
		t.Errorf("%d messages put, want %d", put, w.Messages)
	}
	if p.Put.Load() != uint64(w.Messages) || p.Got.Load() != uint64(w.Messages) {
		t.Errorf("progress: put %d, got %d; want %d each", p.Put.Load(), p.Got.Load(), w.Messages)
	}
	checkEmpty(t, svc, w)

	st := svc.Stats()
	queues := uint64(w.Queues)
	if st.Encryptor.DataKeys != queues || st.Encryptor.Messages != uint64(w.Messages) {
		t.Errorf("Encryptors: %+v; want %d data keys for %d messages", st.Encryptor, queues, w.Messages)
	}
	if st.Decryptor.DataKeys != queues || st.Decryptor.Messages != uint64(w.Messages) {
		t.Errorf("Decryptor: %+v; want %d data keys fetched for %d messages", st.Decryptor, queues, w.Messages)
	}
	// Per queue: a lookup and GenerateDataKey, a lookup and DecryptDataKey.
	if n := total(st.Calls); n > 4*queues {
		t.Errorf("the SDK made %d calls (%v), want at most %d", n, st.Calls, 4*queues)
	}
	tiers := readTiers(t, c).Sub(before)
	if tiers.Fetches != queues || tiers.Forwards != 0 {
		t.Errorf("the edge made %d material fetches and %d forwards, want %d and 0", tiers.Fetches, tiers.Forwards, queues)
	}
	if diff := cmp.Diff(map[string]uint64{"derive": 2 * queues}, tiers.Backend); diff != "" {
		t.Errorf("backend calls at the central tier (-want +got):\n%s", diff)
	}
}

// clock is a settable clock for the SDK's reuse periods and caches.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// TestReusePeriods runs the workload in three reuse periods of the SDK's
// clock: each period costs one more data key per queue each way, and
// nothing more behind the edge, whose material cache serves them all.
func TestReusePeriods(t *testing.T) {
	c := startCluster(t)
	clk := newClock()
	const reuse = time.Minute
	svc := newService(t, c, reuse, clk.now)
	w := &Workload{Queues: 2, Producers: 2, Consumers: 2, Messages: 600, Size: 32, Batch: 25}
	queues := uint64(w.Queues)
	before := readTiers(t, c)
	var afterFirst tierCalls
	for period := uint64(1); period <= 3; period++ {
		if period > 1 {
			clk.advance(reuse + time.Second)
		}
		rec := newRecorder(w)
		var p Progress
		if err := w.Run(t.Context(), svc, nil, &p); err != nil {
			t.Fatalf("period %d: %v", period, err)
		}
		rec.check(t)
		st := svc.Stats()
		if st.Encryptor.DataKeys != period*queues || st.Decryptor.DataKeys != period*queues {
			t.Errorf("after period %d: %d data keys generated, %d fetched; want %d each", period, st.Encryptor.DataKeys, st.Decryptor.DataKeys, period*queues)
		}
		// The routes stay cached (their lifetime runs on the real clock):
		// each further period adds a GenerateDataKey and a DecryptDataKey
		// per queue.
		if n, want := total(st.Calls), 4*queues+2*queues*(period-1); n > want {
			t.Errorf("after period %d: %d SDK calls, want at most %d", period, n, want)
		}
		tiers := readTiers(t, c)
		if period == 1 {
			afterFirst = tiers
			continue
		}
		if d := tiers.Sub(afterFirst); d.CentralCalls() != 0 || d.BackendCalls() != 0 {
			t.Errorf("period %d cost %d central-tier and %d backend calls beyond the first period's, want 0", period, d.CentralCalls(), d.BackendCalls())
		}
	}
	if d := afterFirst.Sub(before); d.Fetches != queues {
		t.Errorf("first period: %d material fetches, want %d", d.Fetches, queues)
	}
}

// TestStopDrains closes stop while producers run, as the first Ctrl-C
// does: they put no more, and consumers get everything that was put.
func TestStopDrains(t *testing.T) {
	c := startCluster(t)
	svc := newService(t, c, 0, nil)
	w := &Workload{Queues: 2, Producers: 2, Consumers: 2, Messages: 100000, Size: 16, Batch: 20}
	rec := newRecorder(w)
	stop := make(chan struct{})
	var once sync.Once
	var sent atomic.Int64
	record := w.Sent
	w.Sent = func(queue string, seq uint64, m Message) {
		record(queue, seq, m)
		if sent.Add(1) == 500 {
			once.Do(func() { close(stop) })
		}
	}
	var p Progress
	if err := w.Run(t.Context(), svc, stop, &p); err != nil {
		t.Fatal(err)
	}
	put := rec.check(t)
	if put < 500 || put >= w.Messages || p.Got.Load() != uint64(put) {
		t.Errorf("stopped after 500: %d put, %d got; want every one put got, and fewer than %d", put, p.Got.Load(), w.Messages)
	}
	checkEmpty(t, svc, w)
}

// TestTamperedRecords changes the database under the service: a
// ciphertext moved to another record of its queue, or to another queue,
// does not open as that message.
func TestTamperedRecords(t *testing.T) {
	c := startCluster(t)
	svc := newService(t, c, 0, nil)
	ctx := t.Context()
	put := func(queue string, ids ...string) {
		t.Helper()
		var msgs []Message
		for _, id := range ids {
			msgs = append(msgs, Message{ID: id, Body: []byte("body of " + id)})
		}
		if _, err := svc.Put(ctx, queue, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	// edit rewrites record seq of queue with f(record).
	edit := func(queue string, seq uint64, f func(tx *bolt.Tx, rec []byte) []byte) {
		t.Helper()
		err := svc.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte(queue))
			return b.Put(seqKey(seq), f(tx, bytes.Clone(b.Get(seqKey(seq)))))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ciphertext := func(tx *bolt.Tx, queue string, seq uint64) []byte {
		_, ct, err := unframe(tx.Bucket([]byte(queue)).Get(seqKey(seq)))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(ct)
	}

	for _, tc := range []struct {
		name, queue string
		tamper      func()
		want        string
		is          error
	}{
		{"another message's ciphertext", "swap", func() {
			put("swap", "a", "b")
			edit("swap", 1, func(tx *bolt.Tx, rec []byte) []byte { return frame("a", ciphertext(tx, "swap", 2)) })
		}, `stored as "a" but was sealed as "b"`, nil},
		{"another queue's ciphertext", "here", func() {
			put("here", "a")
			put("there", "b")
			edit("here", 1, func(tx *bolt.Tx, rec []byte) []byte { return frame("a", ciphertext(tx, "there", 1)) })
		}, "opening message 1", client.ErrInvalidArgument},
		{"a flipped ciphertext byte", "flip", func() {
			put("flip", "a")
			edit("flip", 1, func(_ *bolt.Tx, rec []byte) []byte { rec[len(rec)-1] ^= 1; return rec })
		}, "opening message 1", client.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.tamper()
			ds, err := svc.Receive(ctx, tc.queue, 10)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("Receive = %v, %v; want an error saying %q", ds, err, tc.want)
			}
		})
	}
}

// TestRun runs the program's own path, flags to report, on a small
// workload.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	cfg, err := parseFlags([]string{"--queues", "2", "--messages", "500", "--report", "0",
		"--dev-dir", filepath.Join(dir, "cluster"), "--db", filepath.Join(dir, "q.db")}, func(string) string { return "" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(t.Context(), cfg, nil, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"got        500 messages",
		"data keys  2 generated by the Encryptors for 500 messages; 2 fetched by the Decryptor",
		"edge       2 calls to the central tier: 2 material fetches, 0 forwarded calls",
		"central    4 calls to the root of trust: derive 4",
		"500 messages → 2 data keys → 8 SDK calls → 2 central-tier calls → 4 backend calls",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report has no %q:\n%s", want, out.String())
		}
	}
}

func TestFlags(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	none := env()
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		want   func(c *config) bool
		err    string
	}{
		{"defaults", nil, none, func(c *config) bool {
			return c.Queues == 3 && c.Producers == 4 && c.Consumers == 4 && c.Messages == 100000 && c.Size == 256 &&
				c.Reuse == 5*time.Minute && len(c.Addrs) == 0
		}, ""},
		{"every workload flag", []string{"--queues", "3", "--producers", "4", "--consumers", "4", "--messages", "100000", "--size", "256", "--reuse", "5m"}, none,
			func(c *config) bool { return c.Messages == 100000 && c.Reuse == 5*time.Minute }, ""},
		{"KEYBROKER_ADDR selects a running cluster", nil, env(client.EnvAddr, "127.0.0.1:7001, 127.0.0.1:7000"),
			func(c *config) bool { return slices.Equal(c.Addrs, []string{"127.0.0.1:7001", "127.0.0.1:7000"}) }, ""},
		{"--dev-dir wins over KEYBROKER_ADDR", []string{"--dev-dir", "d"}, env(client.EnvAddr, "127.0.0.1:7001"),
			func(c *config) bool { return len(c.Addrs) == 0 && c.DevDir == "d" }, ""},
		{"metrics URLs", []string{"--addr", "h:1", "--central-metrics", "https://h:11/metrics", "--edge-metrics", "https://h:12/metrics,https://h:13/metrics"}, none,
			func(c *config) bool { return c.CentralMetrics == "https://h:11/metrics" && len(c.EdgeMetrics) == 2 }, ""},
		{"zero queues", []string{"--queues", "0"}, none, nil, "--queues 0 is outside 1..1000"},
		{"negative producers", []string{"--producers", "-1"}, none, nil, "--producers -1 is outside"},
		{"huge bodies", []string{"--size", "1000000"}, none, nil, "--size 1000000 is outside 0..262144"},
		{"short reuse", []string{"--reuse", "1s"}, none, nil, "--reuse 1s is outside 1m0s..24h0m0s"},
		{"not a duration", []string{"--reuse", "soon"}, none, nil, `invalid value "soon" for flag -reuse`},
		{"unknown flag", []string{"--queue", "3"}, none, nil, "flag provided but not defined: -queue"},
		{"argument", []string{"extra"}, none, nil, `unexpected argument "extra"`},
		{"negative report", []string{"--report", "-1s"}, none, nil, "--report -1s is negative"},
		{"--addr and --dev-dir", []string{"--addr", "h:1", "--dev-dir", "d"}, none, nil, "give one of them"},
		{"empty --addr", []string{"--addr", " , "}, none, nil, "--addr is empty"},
		{"metrics without a running cluster", []string{"--central-metrics", "https://h:1/metrics"}, none, nil, "are for a running cluster"},
		{"http metrics", []string{"--addr", "h:1", "--edge-metrics", "http://h:1/metrics"}, none, nil, "is not https://host:port/metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(tc.args, tc.getenv, nil)
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("parseFlags(%q) = %v, want an error with %q", tc.args, err, tc.err)
				}
			case err != nil:
				t.Errorf("parseFlags(%q) = %v", tc.args, err)
			case !tc.want(c):
				t.Errorf("parseFlags(%q) = %+v", tc.args, c)
			}
		})
	}
}

// FuzzUnframe: any record either is refused or carries an id of 1..maxIDLen
// bytes and reframes to itself.
func FuzzUnframe(f *testing.F) {
	f.Add(frame("p0-1", []byte("ciphertext")))
	f.Add([]byte{0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add(frame(strings.Repeat("i", maxIDLen), nil))
	f.Add(frame(strings.Repeat("i", maxIDLen+1), []byte("x")))
	f.Add([]byte{0x84, 0x00, 'p', '0', '-', '1'}) // a non-minimal length
	f.Fuzz(func(t *testing.T, rec []byte) {
		id, rest, err := unframe(rec)
		if err != nil {
			return
		}
		if id == "" || len(id) > maxIDLen {
			t.Fatalf("unframe(%x) accepted an id of %d bytes", rec, len(id))
		}
		if again := frame(id, rest); !bytes.Equal(again, rec) {
			t.Errorf("frame(unframe(%x)) = %x", rec, again)
		}
	})
}
