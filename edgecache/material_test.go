package edgecache

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/keybroker/keybroker/managed"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/secret"
)

// entry makes a 32-byte secret and returns it with its backing array, to
// see it zeroed after the cache lets it go.
func entry(b byte) (*secret.Bytes, []byte) {
	raw := bytes.Repeat([]byte{b}, 32)
	return secret.New(raw), raw
}

func zeroed(b []byte) bool { return bytes.Equal(b, make([]byte, len(b))) }

func TestPlainCacheLRU(t *testing.T) {
	clk := newClock()
	c := newPlainCache(2, time.Hour, clk.Now)
	ma, rawA := entry(1)
	mb, rawB := entry(2)
	mc, rawC := entry(3)
	c.put(versionID(&managed.Key{ID: "a"}, 1), ma)
	c.put(versionID(&managed.Key{ID: "b"}, 1), mb)

	// get returns a copy: destroying it leaves the cached entry whole.
	got := c.get(versionID(&managed.Key{ID: "a"}, 1)) // a is now the most recent
	if got == nil || !bytes.Equal(got.Reveal(), bytes.Repeat([]byte{1}, 32)) {
		t.Fatalf("get(a) = %v, want a's material", got)
	}
	got.Destroy()
	if zeroed(rawA) {
		t.Fatal("destroying a copy zeroed the cached material")
	}

	c.put(versionID(&managed.Key{ID: "c"}, 1), mc) // over capacity: b, the least recent, goes
	if n := c.len(); n != 2 {
		t.Errorf("len = %d after 3 puts into a cache of 2, want 2", n)
	}
	if !zeroed(rawB) {
		t.Errorf("evicted material = %x, want zeros", rawB)
	}
	if c.get(versionID(&managed.Key{ID: "b"}, 1)) != nil {
		t.Error("get(b) after eviction returned material")
	}
	if zeroed(rawA) || zeroed(rawC) || c.get(versionID(&managed.Key{ID: "a"}, 1)) == nil || c.get(versionID(&managed.Key{ID: "c"}, 1)) == nil {
		t.Error("the recent entries were evicted or zeroed")
	}
	if c.evictions() != 1 {
		t.Errorf("evictions = %d, want 1", c.evictions())
	}

	// Replacing an entry zeroes the old material.
	ma2, rawA2 := entry(4)
	c.put(versionID(&managed.Key{ID: "a"}, 1), ma2)
	if !zeroed(rawA) || zeroed(rawA2) {
		t.Errorf("after replacing a: old %x (want zeros), new zeroed=%v", rawA, zeroed(rawA2))
	}
	if n := c.len(); n != 2 {
		t.Errorf("len after replacing = %d, want 2", n)
	}

	c.purge()
	if c.len() != 0 || !zeroed(rawA2) || !zeroed(rawC) {
		t.Errorf("after purge: len %d, a zeroed %v, c zeroed %v", c.len(), zeroed(rawA2), zeroed(rawC))
	}
}

func TestPlainCacheTTL(t *testing.T) {
	clk := newClock()
	c := newPlainCache(10, time.Minute, clk.Now)
	m, raw := entry(7)
	c.put(versionID(&managed.Key{ID: "k"}, 1), m)
	clk.Add(time.Minute - time.Nanosecond)
	if got := c.get(versionID(&managed.Key{ID: "k"}, 1)); got == nil {
		t.Fatal("entry gone before its lifetime ended")
	}
	misses, evictions := c.misses(), c.evictions()
	clk.Add(time.Nanosecond)
	if got := c.get(versionID(&managed.Key{ID: "k"}, 1)); got != nil {
		t.Error("get returned an expired entry")
	}
	if !zeroed(raw) || c.len() != 0 {
		t.Errorf("expired entry: zeroed %v, len %d; want zeroed and gone", zeroed(raw), c.len())
	}
	if c.misses() != misses+1 || c.evictions() != evictions+1 {
		t.Errorf("an expiry counted %d misses and %d evictions, want 1 and 1", c.misses()-misses, c.evictions()-evictions)
	}
}

func TestPlainCacheForget(t *testing.T) {
	c := newPlainCache(10, time.Hour, time.Now)
	var raws [][]byte
	for _, id := range []struct {
		key string
		v   uint32
	}{{"k", 1}, {"k", 2}, {"k2", 1}, {"kk", 1}} {
		m, raw := entry(byte(len(raws) + 1))
		raws = append(raws, raw)
		c.put(versionID(&managed.Key{ID: id.key}, id.v), m)
	}
	c.forget("k")
	if !zeroed(raws[0]) || !zeroed(raws[1]) {
		t.Error("forget(k) left k's material")
	}
	if zeroed(raws[2]) || zeroed(raws[3]) || c.len() != 2 {
		t.Errorf("forget(k) touched other keys whose ids start with k: len %d", c.len())
	}
}

func TestCapacityFloor(t *testing.T) {
	c := newPlainCache(0, time.Hour, time.Now)
	m1, raw1 := entry(1)
	m2, _ := entry(2)
	c.put(versionID(&managed.Key{ID: "a"}, 1), m1)
	c.put(versionID(&managed.Key{ID: "b"}, 1), m2)
	if c.len() != 1 || !zeroed(raw1) {
		t.Errorf("a cache of capacity 0 holds %d entries (first zeroed %v), want 1", c.len(), zeroed(raw1))
	}
}

// TestMaterialBoundsAtTheEdge runs the bounds through a real edge: a
// one-entry cache evicts as keys alternate, and an expired entry is opened
// again from the sealed form on disk, not fetched again.
func TestMaterialBoundsAtTheEdge(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "tags-a", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "tags-b", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
	)
	clk := newClock()
	cfg := edgeConfig(t, c, "edge-eu-1", t.TempDir())
	cfg.MaterialEntries, cfg.MaterialTTL, cfg.Now = 1, time.Minute, clk.Now
	ec := open(t, cfg)
	startRun(t, ec)
	synced(t, c, ec)
	ctx := asApp(t.Context())
	mac := func(key string) []byte {
		t.Helper()
		tag, _, err := opsByID(ec).GenerateMac(ctx, key, []byte("m"))
		must(t, "GenerateMac "+key, err)
		return bytes.Clone(tag) // see TestGenerateMacSurvivesGC

	}
	wantA, wantB := mac("tags-a"), mac("tags-b")
	base := ec.Stats()
	if base.Fetches != 2 || base.MaterialEntries != 1 || base.MaterialEvictions != 1 {
		t.Fatalf("after two keys in a one-entry cache: %+v, want 2 fetches, 1 entry, 1 eviction", base)
	}
	for range 3 {
		if !bytes.Equal(mac("tags-a"), wantA) || !bytes.Equal(mac("tags-b"), wantB) {
			t.Fatal("a MAC changed across evictions")
		}
	}
	s := ec.Stats()
	if s.MaterialEntries != 1 || s.MaterialEvictions != base.MaterialEvictions+6 || s.Fetches != 2 {
		t.Errorf("after alternating 6 times: %d entries, %d more evictions, %d fetches; want 1, 6, 2 (reopened from disk)",
			s.MaterialEntries, s.MaterialEvictions-base.MaterialEvictions, s.Fetches)
	}

	// A hit, then the same call after the lifetime: a miss and an expiry.
	mac("tags-b")
	hits := ec.Stats().MaterialHits
	if hits != s.MaterialHits+1 {
		t.Errorf("a repeated use counted %d hits, want 1", hits-s.MaterialHits)
	}
	clk.Add(time.Minute)
	before := ec.Stats()
	if !bytes.Equal(mac("tags-b"), wantB) {
		t.Error("MAC after expiry differs")
	}
	after := ec.Stats()
	if after.MaterialHits != before.MaterialHits || after.MaterialEvictions != before.MaterialEvictions+1 || after.Fetches != 2 {
		t.Errorf("use after the lifetime: %d hits, %d evictions, %d fetches; want 0 hits, 1 eviction, still 2 fetches",
			after.MaterialHits-before.MaterialHits, after.MaterialEvictions-before.MaterialEvictions, after.Fetches)
	}
}

// TestGenerateMacSurvivesGC keeps a MAC the edge returned across garbage
// collections: secret.New registers a cleanup that zeroes its bytes when
// the secret is collected, so a tag handed out as secret.Reveal() of a
// dropped secret would turn to zeros at the next GC (it once did, in
// managed.Ops.GenerateMac, at both tiers).
func TestGenerateMacSurvivesGC(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"})
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir()))
	startRun(t, ec)
	synced(t, c, ec)
	tag, _, err := opsByID(ec).GenerateMac(asApp(t.Context()), "tags", []byte("m"))
	must(t, "GenerateMac", err)
	want := bytes.Clone(tag)
	// Cleanups run on their own goroutine after a GC: give them a few.
	for i := 0; i < 20 && bytes.Equal(tag, want); i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(tag, want) {
		t.Errorf("the MAC returned by GenerateMac changed after GC: %x, was %x", tag, want)
	}
}

// TestOneRequestOneMiss: material_misses_total counts requests not in
// memory, so one cold request is one miss and a warm one is one hit (the
// hand-written cache counted a cold request twice: once before the shared
// fetch and again inside it).
func TestOneRequestOneMiss(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"})
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir()))
	startRun(t, ec)
	synced(t, c, ec)
	ctx := asApp(t.Context())
	for i, want := range []struct{ hits, misses uint64 }{{0, 1}, {1, 0}} {
		before := ec.Stats()
		if _, _, err := opsByID(ec).GenerateMac(ctx, "tags", []byte("m")); err != nil {
			t.Fatalf("GenerateMac %d: %v", i, err)
		}
		after := ec.Stats()
		if hits, misses := after.MaterialHits-before.MaterialHits, after.MaterialMisses-before.MaterialMisses; hits != want.hits || misses != want.misses {
			t.Errorf("request %d counted %d hits and %d misses, want %d and %d", i, hits, misses, want.hits, want.misses)
		}
	}
}
