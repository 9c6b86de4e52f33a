package managed

import (
	"strconv"
	"sync"
	"sync/atomic"
)

// DefaultMaxDataKeysPerVersion is how many data keys one node wraps under
// one key version before it refuses more: 2^28.
//
// Data keys are wrapped with AES-256-GCM and a random 96-bit nonce under the
// version's key-encryption key (its material, or for derived keys the
// per-context key derived from it; backend-mode keys wrap in the root of
// trust). NIST SP 800-38D bounds random-nonce invocations under one key at
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

// wrapCounter counts the data keys this node has wrapped per key version.
// It is consulted when a data key is made — a reuse miss or a
// GenerateDataKey — never per message, so the warm Encrypt path does not
// touch it. The counts live in memory: a restarted node counts from zero,
// which the package's bound leaves room for only if restarts are rare
// next to rotation (see DefaultMaxDataKeysPerVersion).
type wrapCounter struct {
	max     uint64
	mu      sync.Mutex
	n       map[string]uint64 // id "\x00" version
	refused atomic.Uint64
}

func newWrapCounter(max uint64) *wrapCounter {
	if max == 0 {
		max = DefaultMaxDataKeysPerVersion
	}
	return &wrapCounter{max: max, n: map[string]uint64{}}
}

// take counts one more data key under version v of id, or refuses it when
// the version has reached the bound.
func (w *wrapCounter) take(id string, v uint32) error {
	key := id + "\x00" + strconv.FormatUint(uint64(v), 10)
	w.mu.Lock()
	n := w.n[key]
	if n >= w.max {
		w.mu.Unlock()
		w.refused.Add(1)
		return Errorf(ErrFailedPrecondition, "key %q version %d has wrapped %d data keys at this node, the safe bound for one "+
			"key-encryption key (AES-GCM with random nonces): rotate the key to make new data keys", id, v, n)
	}
	w.n[key] = n + 1
	w.mu.Unlock()
	return nil
}

// count is how many data keys version v of id has wrapped here.
func (w *wrapCounter) count(id string, v uint32) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[id+"\x00"+strconv.FormatUint(uint64(v), 10)]
}
