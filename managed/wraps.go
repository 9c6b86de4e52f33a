package managed

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/keybroker/keybroker/envelope"
)

// DefaultMaxDataKeysPerVersion is how many data keys one node wraps under
// one key version before it refuses more: 2^28.
//
// Data keys are wrapped with AES-256-GCM and a random 96-bit nonce under the
// version's key-encryption key (its material, or for derived keys the
// per-context key derived from it; backend-mode keys wrap in the root of
// trust). The bound applies per key-encryption key: a derived key's
// version allows it to each encryption context. NIST SP 800-38D bounds random-nonce invocations under one key at
// 2^32, where the chance of a repeated nonce — which would reveal the
// authentication key and the XOR of two wrapped data keys — is about
// 2^-33. Every node counts for itself, so the cluster-wide worst case is
// nodes × bound: with the default, 16 nodes (central and edges) stay
// within 2^32; a larger cluster should lower the bound so that
// nodes × bound ≤ 2^32. Rotating the key starts a new version, and a new
// count.
const DefaultMaxDataKeysPerVersion = 1 << 28

// MaxMaxDataKeysPerVersion is the largest bound accepted: 2^32.
const MaxMaxDataKeysPerVersion = 1 << 32

// wrapCounter counts the data keys this node has wrapped per
// key-encryption key. It is consulted when a data key is made — a reuse
// miss or a GenerateDataKey — never per message, so the warm Encrypt path
// does not touch it. The counts live in memory: a restarted node counts
// from zero, which the package's bound leaves room for only if restarts
// are rare next to rotation (see DefaultMaxDataKeysPerVersion).
//
// Every count is keyed by the key's incarnation (its salt) as well as its
// id and version, so a key created again under a deleted id starts from
// zero. A non-derived version has one key-encryption key and an exact
// count. A derived version has one per encryption context, each with its
// own bound, so that a caller encrypting under many fresh contexts cannot
// spend the bound of everyone else's: those are counted in a count-min
// sketch per version, which has fixed memory however many contexts there
// are and can only overcount. Its hashes take a seed chosen at start, so a
// caller cannot aim contexts at one context's counters; collisions begin to
// matter only after about sketchWidth × bound data keys under one version.
type wrapCounter struct {
	max     uint64
	seeds   [sketchDepth]maphash.Seed
	mu      sync.Mutex
	n       map[wrapKey]*wrapCount
	refused atomic.Uint64
}

// wrapKey names one key incarnation's version.
type wrapKey struct {
	id, incarnation string
	v               uint32
}

// wrapCount is one version's counts: total for the metric and the exact
// bound of non-derived keys, sketch (derived keys only) per context.
type wrapCount struct {
	total  uint64
	sketch *[sketchDepth][sketchWidth]uint64
}

const (
	sketchDepth = 4
	sketchWidth = 256 // 8 KiB per derived key version
)

func newWrapCounter(max uint64) *wrapCounter {
	if max == 0 {
		max = DefaultMaxDataKeysPerVersion
	}
	w := &wrapCounter{max: max, n: map[wrapKey]*wrapCount{}}
	for i := range w.seeds {
		w.seeds[i] = maphash.MakeSeed()
	}
	return w
}

// take counts one more data key under version v of k — under the
// key-encryption key of context ectx for derived keys — or refuses it when
// that key-encryption key has reached the bound.
func (w *wrapCounter) take(k *Key, v uint32, ectx map[string]string) error {
	var slots [sketchDepth]int
	if k.Derived {
		c, err := envelope.CanonicalContext(ectx)
		if err != nil {
			return Errorf(ErrInvalidArgument, "%w", err)
		}
		for i, seed := range w.seeds {
			slots[i] = int(maphash.Bytes(seed, c) % sketchWidth)
		}
	}
	key := wrapKey{id: k.ID, incarnation: k.Incarnation(), v: v}
	w.mu.Lock()
	c := w.n[key]
	if c == nil {
		c = &wrapCount{}
		if k.Derived {
			c.sketch = new([sketchDepth][sketchWidth]uint64)
		}
		w.n[key] = c
	}
	n := c.total
	if c.sketch != nil {
		n = c.estimate(slots)
	}
	if n >= w.max {
		w.mu.Unlock()
		w.refused.Add(1)
		what := "key"
		if k.Derived {
			what = "key and encryption context"
		}
		return Errorf(ErrFailedPrecondition, "%s %q version %d has wrapped %d data keys at this node, the safe bound for one "+
			"key-encryption key (AES-GCM with random nonces): rotate the key to make new data keys", what, k.ID, v, n)
	}
	c.total++
	if c.sketch != nil {
		// Conservative update: raise only the counters at the minimum,
		// which keeps the estimate an upper bound with less overcount.
		for i, s := range slots {
			if c.sketch[i][s] == n {
				c.sketch[i][s] = n + 1
			}
		}
	}
	w.mu.Unlock()
	return nil
}

// estimate is the sketch's count for the context hashed to slots: never
// less than the true count.
func (c *wrapCount) estimate(slots [sketchDepth]int) uint64 {
	n := c.sketch[0][slots[0]]
	for i := 1; i < sketchDepth; i++ {
		n = min(n, c.sketch[i][slots[i]])
	}
	return n
}

// count is how many data keys version v of k has wrapped here, over all
// encryption contexts for derived keys.
func (w *wrapCounter) count(k *Key, v uint32) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.n[wrapKey{id: k.ID, incarnation: k.Incarnation(), v: v}]; c != nil {
		return c.total
	}
	return 0
}
