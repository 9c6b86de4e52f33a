package broker

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// Failed-unwrap memory defaults.
const (
	// DefaultFailedUnwrapTTL is how long a data key that did not unwrap is
	// refused from memory.
	DefaultFailedUnwrapTTL = time.Minute
	// DefaultFailedUnwrapEntries bounds the failures remembered.
	DefaultFailedUnwrapEntries = 100_000
)

// failedUnwraps remembers, for a short time, the wrapped data keys a root
// of trust refused to unwrap (per key, version and wrapped bytes), so that
// the same forged data key sent again — a thousand times in one batch — is
// refused without another backend call. Only definite refusals (the
// backend's decryption failed) are remembered, never throttling or
// outages. An entry is a 32-byte digest and a time; when the memory is
// full the oldest entry goes (every entry lives as long, so the oldest is
// the first to expire).
type failedUnwraps struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	m     map[[32]byte]*list.Element // → element holding failure
	order *list.List                 // oldest first
}

type failure struct {
	id [32]byte
	at time.Time
}

func newFailedUnwraps(ttl time.Duration, max int, now func() time.Time) *failedUnwraps {
	if ttl <= 0 {
		ttl = DefaultFailedUnwrapTTL
	}
	if max <= 0 {
		max = DefaultFailedUnwrapEntries
	}
	return &failedUnwraps{ttl: ttl, max: max, now: now, m: map[[32]byte]*list.Element{}, order: list.New()}
}

func failureID(keyID string, v uint32, wrapped []byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(keyID)))
	h.Write(n[:])
	h.Write([]byte(keyID))
	binary.BigEndian.PutUint32(n[:4], v)
	h.Write(n[:4])
	h.Write(wrapped)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// failed reports whether this data key failed to unwrap within the TTL.
func (f *failedUnwraps) failed(keyID string, v uint32, wrapped []byte) bool {
	id := failureID(keyID, v, wrapped)
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	el, ok := f.m[id]
	if !ok {
		return false
	}
	if now.Sub(el.Value.(*failure).at) >= f.ttl {
		f.order.Remove(el)
		delete(f.m, id)
		return false
	}
	return true
}

// remember notes that this data key failed to unwrap.
func (f *failedUnwraps) remember(keyID string, v uint32, wrapped []byte) {
	id := failureID(keyID, v, wrapped)
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if el, ok := f.m[id]; ok {
		f.order.Remove(el)
	}
	for f.order.Len() >= f.max {
		old := f.order.Front()
		f.order.Remove(old)
		delete(f.m, old.Value.(*failure).id)
	}
	f.m[id] = f.order.PushBack(&failure{id: id, at: now})
}
