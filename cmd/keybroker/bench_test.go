package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

func TestBenchUsage(t *testing.T) {
	env := map[string]string{envAddr: "127.0.0.1:1", envCA: "ca", envCert: "c", envKey: "k"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--op", "encrypt"}, exitUsage, "--op encrypt needs --key"},
		{[]string{"--op", "frobnicate", "--key", "k"}, exitUsage, `"frobnicate" is not an operation`},
		{[]string{"--op", "encrypt:0", "--key", "k"}, exitUsage, "weight of encrypt"},
		{[]string{"--op", "encrypt,encrypt", "--key", "k"}, exitUsage, "given twice"},
		{[]string{"--key", "k", "-c", "0"}, exitUsage, "--concurrency"},
		{[]string{"--key", "k", "-c", "2", "--connections", "3"}, exitUsage, "--connections"},
		{[]string{"--key", "k", "--duration", "0"}, exitUsage, "needs --count"},
		{[]string{"--key", "k", "--batch", "101", "--op", "batch-encrypt"}, exitUsage, "--batch"},
		{[]string{"--key", "k", "--metrics", "https://x/metrics"}, exitUsage, "need --interval"},
		{[]string{"--key", "k", "--interval", "1s", "--metrics", "x:1/metrics"}, exitUsage, "not an http(s) URL"},
		{[]string{"--key", "k", "--size", "5MiB"}, exitInvalid, "encrypt takes at most 4 MiB"},
		{[]string{"--op", "mac", "--key", "k", "--size", "65KiB"}, exitInvalid, "at most 64 KiB"},
		{[]string{"--op", "batch-encrypt", "--key", "k", "--size", "1MiB", "--batch", "5"}, exitInvalid, "over a request's 4 MiB"},
		{[]string{"--key", "k", "--size", "12parsecs"}, exitUsage, "unit must be"},
		{[]string{"--key", "k", "--size", "-1"}, exitUsage, "not a size"},
		{[]string{"--key", "k", "--compare-noop", "--rounds", "0"}, exitUsage, "--rounds"},
	} {
		r := runCLI(t, env, nil, append([]string{"bench"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("bench %s: exit %d %q; want %d and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.msg)
		}
	}
}

func TestSizeValue(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "64": 64, "64B": 64, "1KiB": 1024, "1k": 1024, "4MiB": 4 << 20, "2m": 2 << 20} {
		var v sizeValue
		if err := v.Set(in); err != nil || int(v) != want {
			t.Errorf("size %q = %d, %v; want %d", in, v, err, want)
		}
	}
}

// LookupKey answers for any key the fake holds: bench --probe calls it.
func (f *fakeBroker) LookupKey(ctx context.Context, r *kbv1.LookupKeyRequest) (*kbv1.LookupKeyResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	if _, err := f.key(r.KeyId); err != nil {
		return nil, err
	}
	return &kbv1.LookupKeyResponse{Nodes: []*kbv1.LookupNode{{NodeId: "central-1"}}}, nil
}

func TestBenchCreateUsage(t *testing.T) {
	env := map[string]string{envAddr: "127.0.0.1:1", envCA: "ca", envCert: "c", envKey: "k"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--op", "create,encrypt", "--key", "k"}, exitUsage, "runs alone"},
		{[]string{"--op", "create", "--duration", "5s"}, exitUsage, "--duration does not apply to --op create"},
		{[]string{"--op", "create", "--key", "k"}, exitUsage, "--key does not apply"},
		{[]string{"--op", "create", "--count", "100000001"}, exitUsage, "--count must be at most"},
		{[]string{"--op", "create", "--existing", "-2"}, exitUsage, "--existing must be"},
		{[]string{"--op", "create", "-c", "0"}, exitUsage, "--concurrency"},
		{[]string{"--op", "create", "--prefix", "-x"}, exitInvalid, `--prefix "-x"`},
		{[]string{"--op", "create", "--prefix", strings.Repeat("k", 127), "--count", "100"}, exitInvalid, "--prefix"},
		{[]string{"--op", "create", "--probe", "no spaces"}, exitInvalid, "--probe"},
		{[]string{"--op", "create", "--metrics", "central="}, exitUsage, "want name=host:port"},
		{[]string{"--op", "create", "--metrics", "central=nohost"}, exitUsage, "is not host:port"},
		{[]string{"--op", "create", "--metrics", "central=ftp://h:1/metrics"}, exitUsage, "not an http(s) URL"},
		{[]string{"--op", "create", "--metrics", "a=h:1,a=h:2"}, exitUsage, "named twice"},
	} {
		r := runCLI(t, env, nil, append([]string{"bench"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("bench %s: exit %d %q; want %d and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.msg)
		}
	}
}

func TestParseMetricsTargets(t *testing.T) {
	got, err := parseMetricsTargets([]string{"central=127.0.0.1:7710", "edge=http://[::1]:7711/metrics", "10.0.0.1:7712"})
	if err != nil {
		t.Fatal(err)
	}
	want := []metricsTarget{
		{"central", "https://127.0.0.1:7710/metrics"},
		{"edge", "http://[::1]:7711/metrics"},
		{"10.0.0.1:7712", "https://10.0.0.1:7712/metrics"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseMetricsTargets = %v, want %v", got, want)
	}
}

func TestDecades(t *testing.T) {
	for _, tc := range []struct {
		present  int
		decade   int
		name     string
		boundary bool
	}{
		{0, 0, "0-1k", false},
		{999, 0, "0-1k", false},
		{1000, 1, "1k-10k", true},
		{9999, 1, "1k-10k", false},
		{10000, 2, "10k-100k", true},
		{20000, 2, "10k-100k", false},
		{100000, 3, "100k-1M", true},
		{1000000, 4, "1M-10M", true},
		{1500000, 4, "1M-10M", false},
	} {
		d := decadeOf(tc.present)
		if d != tc.decade || decadeName(d) != tc.name || isDecadeBoundary(tc.present) != tc.boundary {
			t.Errorf("%d keys: decade %d %q, boundary %v; want %d %q, %v", tc.present, d, decadeName(d),
				isDecadeBoundary(tc.present), tc.decade, tc.name, tc.boundary)
		}
	}
}

// createReport is what the tests read of bench --op create --output json.
type createReport struct {
	Prefix       string `json:"prefix"`
	Existing     int    `json:"existing_keys"`
	ExistingFrom string `json:"existing_from"`
	Result       struct {
		Ops    uint64 `json:"ops"`
		Failed uint64 `json:"failed"`
	} `json:"result"`
	Decades []struct {
		Keys   string `json:"keys_present"`
		Create struct {
			Ops       uint64             `json:"ops"`
			Rate      float64            `json:"ops_per_s"`
			LatencyUS map[string]float64 `json:"latency_us"`
		} `json:"create"`
		Lookup *struct {
			Ops    uint64 `json:"ops"`
			Failed uint64 `json:"failed"`
		} `json:"lookup"`
	} `json:"decades"`
	Memory []memoryAtJSON    `json:"memory"`
	Calls  map[string]uint64 `json:"calls_by_op"`
}

// TestBenchCreate grows the fake broker's registry by 1,200 keys from the
// one it holds, with a probe, and checks what was created and how the
// report splits it by decade of keys present.
func TestBenchCreate(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	r := b.run(t, nil, "bench", "--op", "create", "--count", "1200", "-c", "4", "--connections", "2", "--prefix", "t-",
		"--probe", "payments", "--output", "json")
	wantCode(t, r, exitOK)
	var out createReport
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	ids := map[string]int{}
	listed := 0
	for _, c := range b.fake.recorded() {
		switch req := c.req.(type) {
		case *kbv1.CreateKeyRequest:
			ids[req.KeyId]++
			if req.Type != kbv1.KeyType_KEY_TYPE_AES_256_GCM || req.Mode != kbv1.KeyMode_KEY_MODE_DERIVE {
				t.Errorf("CreateKey %s: %v %v, want a derive-mode AES-256-GCM key", req.KeyId, req.Type, req.Mode)
			}
		case *kbv1.ListKeysRequest:
			listed++
		}
	}
	for i := range 1200 {
		if id := fmt.Sprintf("t-%d", i); ids[id] != 1 {
			t.Errorf("CreateKey %s called %d times, want once", id, ids[id])
		}
	}
	if len(ids) != 1200 || listed != 1 {
		t.Errorf("%d keys created and ListKeys called %d times; want 1200 and once", len(ids), listed)
	}
	if out.Existing != 1 || out.ExistingFrom != "ListKeys" || out.Result.Ops != 1200 || out.Result.Failed != 0 {
		t.Errorf("existing %d from %q, %d created, %d failed; want 1 from ListKeys, 1200, 0", out.Existing, out.ExistingFrom, out.Result.Ops, out.Result.Failed)
	}
	// The 1 key present and creates begun with 1 to 999 present are in
	// the first decade; each of the 4 workers may begin one more before
	// the count it sees reaches 1,000.
	if len(out.Decades) != 2 || out.Decades[0].Keys != "0-1k" || out.Decades[1].Keys != "1k-10k" {
		t.Fatalf("decades %+v, want 0-1k and 1k-10k", out.Decades)
	}
	first, second := out.Decades[0].Create.Ops, out.Decades[1].Create.Ops
	if first < 999 || first > 999+4 || first+second != 1200 {
		t.Errorf("creates per decade %d and %d; want 999 to 1003 in the first, 1200 in all", first, second)
	}
	for _, d := range out.Decades {
		if d.Create.Rate <= 0 || d.Create.LatencyUS["p99"] <= 0 || d.Create.LatencyUS["p50"] > d.Create.LatencyUS["p99"] {
			t.Errorf("decade %s: %.0f creates/s, latency %v; want a rate and p50 ≤ p99", d.Keys, d.Create.Rate, d.Create.LatencyUS)
		}
	}
	if out.Calls["lookup"] == 0 || out.Calls["encrypt"] == 0 {
		t.Errorf("probe calls %v, want lookups and encrypts", out.Calls)
	}
	for _, d := range out.Decades {
		if d.Lookup != nil && d.Lookup.Failed > 0 {
			t.Errorf("decade %s: %d lookups failed", d.Keys, d.Lookup.Failed)
		}
	}
}

// TestBenchCreateMemory reads a node's /metrics over mutual TLS at each
// decade's boundary and divides by the keys present.
func TestBenchCreateMemory(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	srvTLS, err := identity.TLSFiles{CA: b.tls.CA, Cert: filepath.Join(b.dir, "central-1.crt"), Key: filepath.Join(b.dir, "central-1.key")}.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	var scrapes atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		scrapes.Add(1)
		fmt.Fprint(w, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1e+08\n"+
			"# TYPE go_memstats_heap_inuse_bytes gauge\ngo_memstats_heap_inuse_bytes 5e+07\n")
	}))
	srv.TLS = srvTLS
	srv.StartTLS()
	t.Cleanup(srv.Close)

	r := b.run(t, nil, "bench", "--op", "create", "--count", "1000", "--existing", "0", "-c", "4", "--prefix", "m-",
		"--metrics", "central="+srv.Listener.Addr().String(), "--output", "json")
	wantCode(t, r, exitOK)
	var out createReport
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	for _, c := range b.fake.recorded() {
		if _, ok := c.req.(*kbv1.ListKeysRequest); ok {
			t.Errorf("ListKeys called with --existing given")
		}
	}
	want := []memoryAtJSON{
		{Node: "central", KeysPresent: 0, Resident: 1e8, HeapInuse: 5e7},
		{Node: "central", KeysPresent: 1000, Resident: 1e8, HeapInuse: 5e7, ResidentPerKey: 1e5, HeapInusePerKey: 5e4},
	}
	if !slices.Equal(out.Memory, want) || scrapes.Load() != 2 {
		t.Errorf("memory %+v after %d scrapes; want %+v after 2", out.Memory, scrapes.Load(), want)
	}

	// The text report has the same table.
	r = b.run(t, nil, "bench", "--op", "create", "--count", "10", "--existing", "995", "-c", "2", "--prefix", "n-",
		"--metrics", "central="+srv.Listener.Addr().String(), "--probe", "payments")
	wantCode(t, r, exitOK)
	for _, want := range []string{"995 keys present before (--existing)", "keys present  created", "0-1k", "1k-10k", "LookupKey p50",
		"memory at each decade's boundary:", "1000          central  95.4 MiB  47.7 MiB     100000 B      50000 B"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("bench create's report lacks %q:\n%s", want, r.stdout)
		}
	}
}
