package envelope

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/secret"
)

func material(b byte) *secret.Bytes { return secret.Copy(bytes.Repeat([]byte{b}, 32)) }

func TestSealOpen(t *testing.T) {
	for _, derived := range []bool{false, true} {
		ctx := map[string]string{"tenant": "42", "purpose": "invoice"}
		kek, err := KEK(material(1), derived, ctx)
		if err != nil {
			t.Fatal(err)
		}
		dk, err := GenerateDataKey(kek, "payments", 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("abc"), 10000)} {
			ct, err := dk.Seal(pt, ctx)
			if err != nil {
				t.Fatal(err)
			}
			h, body, err := ParseHeader(ct)
			if err != nil {
				t.Fatalf("ParseHeader: %v", err)
			}
			if h.KeyID != "payments" || h.Version != 3 {
				t.Errorf("header = %q v%d, want payments v3", h.KeyID, h.Version)
			}
			kek2, _ := KEK(material(1), derived, ctx)
			dk2, err := UnwrapDataKey(kek2, h.KeyID, h.Version, h.WrappedDEK)
			if err != nil {
				t.Fatalf("UnwrapDataKey: %v", err)
			}
			got, err := dk2.Open(h, body, ctx)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Open = %d bytes, %v; want the %d-byte plaintext", len(got), err, len(pt))
			}
			if _, err := dk2.Open(h, body, map[string]string{"tenant": "43", "purpose": "invoice"}); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Open with the wrong context: err = %v, want ErrDecrypt", err)
			}
			if _, err := dk2.Open(h, body, nil); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Open without the context: err = %v, want ErrDecrypt", err)
			}
		}
		// For derived keys the context also changes the KEK, so unwrapping
		// under another context's KEK fails.
		if derived {
			other, _ := KEK(material(1), true, map[string]string{"tenant": "43"})
			if _, err := UnwrapDataKey(other, "payments", 3, dk.Wrapped); !errors.Is(err, ErrDecrypt) {
				t.Errorf("unwrap under another context's KEK: err = %v, want ErrDecrypt", err)
			}
		}
	}
}

func TestUnwrapBindsKeyAndVersion(t *testing.T) {
	dk, _ := GenerateDataKey(material(1), "payments", 3)
	for _, tc := range []struct {
		name, id string
		v        uint32
		kek      *secret.Bytes
	}{
		{"other key id", "refunds", 3, material(1)},
		{"other version", "payments", 4, material(1)},
		{"other material", "payments", 3, material(2)},
	} {
		if _, err := UnwrapDataKey(tc.kek, tc.id, tc.v, dk.Wrapped); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: err = %v, want ErrDecrypt", tc.name, err)
		}
	}
}

func TestTamperAnyByte(t *testing.T) {
	dk, _ := GenerateDataKey(material(1), "k", 1)
	ct, _ := dk.Seal([]byte("attack at dawn"), map[string]string{"a": "b"})
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x80
		h, body, err := ParseHeader(bad)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("byte %d: ParseHeader err = %v, want ErrMalformed", i, err)
			}
			continue
		}
		if _, err := dk.Open(h, body, map[string]string{"a": "b"}); !errors.Is(err, ErrDecrypt) {
			t.Errorf("byte %d flipped: Open err = %v, want ErrDecrypt", i, err)
		}
	}
	for n := range len(ct) {
		if h, body, err := ParseHeader(ct[:n]); err == nil {
			if _, err := dk.Open(h, body, map[string]string{"a": "b"}); err == nil {
				t.Errorf("truncated to %d bytes: opened", n)
			}
		}
	}
}

func TestParseHeaderErrors(t *testing.T) {
	dk, _ := GenerateDataKey(material(1), "k", 1)
	ct, _ := dk.Seal([]byte("x"), nil)
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"format", append([]byte{0x02}, ct[1:]...), "unknown format"},
		{"key id", append([]byte{1, 1, '%'}, ct[3:]...), "invalid key id"},
		{"zero id length", []byte{1, 0}, "invalid key id"},
		{"version", append(append([]byte{1, 1, 'k'}, 0, 0, 0, 0), ct[7:]...), "version 0"},
		{"short", ct[:5], "truncated"},
		{"no tag", ct[:len(ct)-16], "truncated in authentication tag"},
	} {
		_, _, err := ParseHeader(tc.in)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrMalformed containing %q", tc.name, err, tc.want)
		}
	}
}

func TestCanonicalContext(t *testing.T) {
	a, _ := CanonicalContext(map[string]string{"b": "2", "a": "1"})
	want := []byte{0, 2, 0, 1, 'a', 0, 1, '1', 0, 1, 'b', 0, 1, '2'}
	if !bytes.Equal(a, want) {
		t.Errorf("CanonicalContext = %x, want %x", a, want)
	}
	// Length prefixes keep ("ab","c") and ("a","bc") apart.
	x, _ := CanonicalContext(map[string]string{"ab": "c"})
	y, _ := CanonicalContext(map[string]string{"a": "bc"})
	if bytes.Equal(x, y) {
		t.Error("contexts with shifted boundaries encode the same")
	}
	empty, _ := CanonicalContext(nil)
	if !bytes.Equal(empty, []byte{0, 0}) {
		t.Errorf("empty context = %x", empty)
	}
	big := map[string]string{}
	for i := range 65 {
		big[strings.Repeat("k", i+1)] = ""
	}
	for name, c := range map[string]map[string]string{
		"empty key":  {"": "v"},
		"long key":   {strings.Repeat("k", 257): "v"},
		"long value": {"k": strings.Repeat("v", 1025)},
		"not utf8":   {"k": "\xff"},
		"too many":   big,
	} {
		if _, err := CanonicalContext(c); !errors.Is(err, ErrContext) {
			t.Errorf("%s: err = %v, want ErrContext", name, err)
		}
	}
}

// vector is one known-answer test vector, as published in docs/ciphertext.md.
type vector struct {
	Name       string            `json:"name"`
	Material   string            `json:"material"`
	Derived    bool              `json:"derived"`
	KeyID      string            `json:"key_id"`
	Version    uint32            `json:"version"`
	Salt       string            `json:"salt"`
	DEK        string            `json:"dek"`
	WrapNonce  string            `json:"wrap_nonce"`
	Nonce      string            `json:"nonce"`
	Context    map[string]string `json:"context"`
	Plaintext  string            `json:"plaintext"`
	Ciphertext string            `json:"ciphertext"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// TestKnownAnswers checks the vectors published in docs/ciphertext.md: the
// implementation must produce them byte for byte and open them.
func TestKnownAnswers(t *testing.T) {
	doc, err := os.ReadFile("../docs/ciphertext.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```json\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/ciphertext.md has no ```json block of vectors")
	}
	var vs []vector
	if err := json.Unmarshal(m[1], &vs); err != nil {
		t.Fatalf("vectors: %v", err)
	}
	if len(vs) < 4 {
		t.Fatalf("only %d vectors", len(vs))
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			kek, err := KEK(secret.New(unhex(t, v.Material)), v.Derived, v.Context)
			if err != nil {
				t.Fatal(err)
			}
			salt := unhex(t, v.Salt)
			dk, err := generateSalted(kek, v.KeyID, v.Version, salt, secret.New(unhex(t, v.DEK)), unhex(t, v.WrapNonce))
			if err != nil {
				t.Fatal(err)
			}
			ct, err := dk.seal([]byte(v.Plaintext), v.Context, unhex(t, v.Nonce))
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(ct); got != v.Ciphertext {
				t.Errorf("ciphertext = %s\nwant         %s", got, v.Ciphertext)
			}
			h, body, err := ParseHeader(unhex(t, v.Ciphertext))
			if err != nil {
				t.Fatal(err)
			}
			dk2, err := UnwrapDataKeyWithSalt(kek, h.KeyID, h.Version, salt, h.WrappedDEK)
			if err != nil {
				t.Fatal(err)
			}
			if len(salt) > 0 {
				// The salt is bound: without it, or with another, the data key does not open.
				for _, other := range [][]byte{nil, bytes.Repeat([]byte{1}, 32)} {
					if _, err := UnwrapDataKeyWithSalt(kek, h.KeyID, h.Version, other, h.WrappedDEK); !errors.Is(err, ErrDecrypt) {
						t.Errorf("UnwrapDataKeyWithSalt(salt %x) = %v, want ErrDecrypt", other, err)
					}
				}
			}
			pt, err := dk2.Open(h, body, v.Context)
			if err != nil || string(pt) != v.Plaintext {
				t.Errorf("Open = %q, %v; want %q", pt, err, v.Plaintext)
			}
		})
	}
}

// fakeClock is an injected clock; tests move it by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestReuserPolicy(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r, err := NewReuser(ReusePolicy{Period: time.Minute, MaxMessages: 3, MaxBytes: 100}, 10, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	var created atomic.Int32
	create := func(context.Context) (*DataKey, error) {
		created.Add(1)
		return GenerateDataKey(material(1), "k", 1)
	}
	get := func(n int) *DataKey {
		dk, err := r.Get(t.Context(), "k/1/", n, create)
		if err != nil {
			t.Fatal(err)
		}
		return dk
	}
	a := get(10)
	for range 2 {
		if get(10) != a {
			t.Fatal("data key not reused within the message limit")
		}
	}
	b := get(10) // fourth message: MaxMessages=3 spent
	if b == a || created.Load() != 2 {
		t.Errorf("after 3 messages: created %d keys, want 2 and a new key", created.Load())
	}
	get(80) // 90 bytes so far on b
	c := get(20)
	if c == b {
		t.Error("byte limit not enforced")
	}
	clock.Advance(59 * time.Second)
	if get(1) != c {
		t.Error("key replaced before its period ended")
	}
	clock.Advance(time.Second)
	if get(1) == c {
		t.Error("key reused after its period ended")
	}
	if r.Created() != 4 || created.Load() != 4 {
		t.Errorf("Created() = %d (calls %d), want 4", r.Created(), created.Load())
	}
	if _, err := r.Get(t.Context(), "k/1/", 101, create); !errors.Is(err, ErrTooLarge) {
		t.Errorf("message larger than the byte limit: err = %v", err)
	}
	r.Forget(func(p string) bool { return strings.HasPrefix(p, "k/") })
	get(1)
	if created.Load() != 5 {
		t.Errorf("after Forget: created %d, want 5", created.Load())
	}
}

func TestReusePolicyValidate(t *testing.T) {
	for _, p := range []ReusePolicy{
		{Period: 59 * time.Second}, {Period: 25 * time.Hour}, {MaxMessages: 1 << 33},
	} {
		if err := p.WithDefaults().Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", p)
		}
	}
	if err := (ReusePolicy{}).WithDefaults().Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

func TestReuserCoalesces(t *testing.T) {
	r, _ := NewReuser(ReusePolicy{}, 10, nil)
	var calls atomic.Int32
	gate := make(chan struct{})
	create := func(context.Context) (*DataKey, error) {
		calls.Add(1)
		<-gate
		return GenerateDataKey(material(1), "k", 1)
	}
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range 200 {
		started.Add(1)
		wg.Go(func() {
			started.Done()
			if _, err := r.Get(t.Context(), "p", 1, create); err != nil {
				t.Error(err)
			}
		})
	}
	started.Wait()
	close(gate)
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("200 concurrent misses made %d create calls, want 1", calls.Load())
	}
}

func TestCache(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	c := NewCache(2, time.Minute, clock.Now)
	var unwraps atomic.Int32
	mk := func(id string) (*Header, func(context.Context) (*DataKey, error)) {
		dk, _ := GenerateDataKey(material(1), id, 1)
		ct, _ := dk.Seal([]byte("x"), nil)
		h, _, _ := ParseHeader(ct)
		return h, func(context.Context) (*DataKey, error) {
			unwraps.Add(1)
			return UnwrapDataKey(material(1), h.KeyID, h.Version, h.WrappedDEK)
		}
	}
	ha, ua := mk("a")
	hb, ub := mk("b")
	hc, uc := mk("c")
	get := func(h *Header, u func(context.Context) (*DataKey, error)) {
		if _, err := c.Get(t.Context(), h, u); err != nil {
			t.Fatal(err)
		}
	}
	get(ha, ua)
	get(ha, ua)
	get(hb, ub)
	if unwraps.Load() != 2 {
		t.Fatalf("unwraps = %d, want 2", unwraps.Load())
	}
	get(ha, ua) // a most recent; c evicts b
	get(hc, uc)
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}
	get(ha, ua)
	if unwraps.Load() != 3 {
		t.Errorf("LRU kept the wrong entry: unwraps = %d, want 3", unwraps.Load())
	}
	clock.Advance(time.Minute)
	get(ha, ua)
	if unwraps.Load() != 4 {
		t.Errorf("expired entry served: unwraps = %d, want 4", unwraps.Load())
	}
	c.Purge("a")
	get(ha, ua)
	if unwraps.Load() != 5 {
		t.Errorf("purged entry served: unwraps = %d, want 5", unwraps.Load())
	}
	hits, misses, ev := c.Stats()
	if hits != 3 || misses != 5 || ev < 3 {
		t.Errorf("Stats = %d hits, %d misses, %d evictions; want 3, 5, ≥3", hits, misses, ev)
	}
	c.PurgeAll()
	if c.Len() != 0 {
		t.Errorf("Len after PurgeAll = %d", c.Len())
	}
	get(ha, ua)
	if unwraps.Load() != 6 {
		t.Errorf("entry served after PurgeAll: unwraps = %d, want 6", unwraps.Load())
	}
	// An unwrap failure is returned and not cached.
	hd, _ := mk("d")
	boom := errors.New("boom")
	if _, err := c.Get(t.Context(), hd, func(context.Context) (*DataKey, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("err = %v, want boom", err)
	}
}

func TestCacheCoalescesAndHonoursCallerContext(t *testing.T) {
	c := NewCache(10, time.Hour, nil)
	dk, _ := GenerateDataKey(material(1), "k", 1)
	ct, _ := dk.Seal(nil, nil)
	h, _, _ := ParseHeader(ct)
	gate := make(chan struct{})
	var calls atomic.Int32
	unwrap := func(ctx context.Context) (*DataKey, error) {
		calls.Add(1)
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return UnwrapDataKey(material(1), h.KeyID, h.Version, h.WrappedDEK)
	}
	// A caller that has given up gets its own context error and costs
	// no unwrap.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := NewCache(1, time.Hour, nil).Get(ctx, h, unwrap); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: err = %v", err)
	}
	if calls.Load() != 0 {
		t.Errorf("a cancelled caller made %d unwrap calls, want 0", calls.Load())
	}
	var wg, started sync.WaitGroup
	for range 1000 {
		started.Add(1)
		wg.Go(func() {
			started.Done()
			if _, err := c.Get(t.Context(), h, unwrap); err != nil {
				t.Error(err)
			}
		})
	}
	started.Wait()
	close(gate)
	wg.Wait()
	if calls.Load() != 1 {
		t.Errorf("1000 concurrent cold misses made %d unwrap calls, want 1", calls.Load())
	}
}

// FuzzParseHeader checks what holds for any input: ParseHeader does not
// panic and refuses with ErrMalformed; a header it accepts is valid, says
// what NewDataKeyHeader accepts, and encodes back to the same bytes; and
// only the one ciphertext sealed under the data key opens with it.
func FuzzParseHeader(f *testing.F) {
	// A fixed data key and nonce: the seed opens in every worker and run.
	dk, err := generate(material(1), "payments", 7, secret.New(bytes.Repeat([]byte{7}, DEKSize)), bytes.Repeat([]byte{8}, NonceSize))
	if err != nil {
		f.Fatal(err)
	}
	ct, err := dk.seal([]byte("seed"), map[string]string{"a": "b"}, bytes.Repeat([]byte{9}, NonceSize))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ct)
	f.Add([]byte{1})
	f.Add([]byte{1, 3, 'a', 'b', 'c', 0, 0, 0, 1, 0, 60})
	f.Fuzz(func(t *testing.T, in []byte) {
		h, body, err := ParseHeader(in)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if !ValidKeyID(h.KeyID) || h.Version == 0 || len(h.WrappedDEK) < WrappedDEKLen || len(h.WrappedDEK) > MaxWrappedDEK || len(h.Nonce) != NonceSize || len(body) < TagSize {
			t.Fatalf("accepted an invalid header: %+v", h)
		}
		if _, err := NewDataKeyHeader(h.KeyID, h.Version, h.WrappedDEK); err != nil {
			t.Fatalf("ParseHeader accepted key %q version %d and a %d-byte wrapped key; NewDataKeyHeader refuses them: %v", h.KeyID, h.Version, len(h.WrappedDEK), err)
		}
		if again := append(appendHeader(nil, h.KeyID, h.Version, h.WrappedDEK, h.Nonce), body...); !bytes.Equal(again, in) {
			t.Fatalf("header encodes back to %x, want %x", again, in)
		}
		// Opening garbage must fail cleanly, never panic.
		if _, err := dk.Open(h, body, map[string]string{"a": "b"}); err == nil && !bytes.Equal(in, ct) {
			t.Fatalf("opened a ciphertext that was not sealed")
		}
	})
}

func TestOpenOwn(t *testing.T) {
	dk, _ := GenerateDataKey(material(1), "payments", 3)
	other, _ := GenerateDataKey(material(1), "payments", 3)
	ectx := map[string]string{"tenant": "42"}
	canon, _ := CanonicalContext(ectx)
	ct, err := dk.Seal([]byte("hello"), ectx)
	if err != nil {
		t.Fatal(err)
	}
	if pt, own, err := dk.OpenOwn(ct, canon); !own || err != nil || string(pt) != "hello" {
		t.Errorf("OpenOwn(own ciphertext) = %q, %v, %v", pt, own, err)
	}
	if _, own, err := other.OpenOwn(ct, canon); own || err != nil {
		t.Errorf("OpenOwn(another data key's ciphertext) = %v, %v; want not own", own, err)
	}
	wrong, _ := CanonicalContext(map[string]string{"tenant": "43"})
	if _, own, err := dk.OpenOwn(ct, wrong); !own || !errors.Is(err, ErrDecrypt) {
		t.Errorf("OpenOwn with the wrong context = %v, %v; want own and ErrDecrypt", own, err)
	}
	for _, i := range []int{len(ct) - 20, len(ct) - 1} {
		bad := bytes.Clone(ct)
		bad[i] ^= 1
		if _, own, err := dk.OpenOwn(bad, canon); !own || !errors.Is(err, ErrDecrypt) {
			t.Errorf("OpenOwn with byte %d flipped = %v, %v; want own and ErrDecrypt", i, own, err)
		}
	}
	if _, own, _ := dk.OpenOwn(ct[:len(ct)-TagSize-1], canon); own {
		t.Error("OpenOwn of a ciphertext shorter than header and tag claimed it")
	}
	// A header that differs from the key's in any byte is not its own.
	for i := range len(dk.prefix) {
		bad := bytes.Clone(ct)
		bad[i] ^= 1
		if _, own, _ := dk.OpenOwn(bad, canon); own {
			t.Errorf("OpenOwn with header byte %d flipped claimed the ciphertext", i)
		}
	}
}
