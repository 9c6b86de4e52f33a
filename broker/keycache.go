package broker

import (
	"sync/atomic"

	"github.com/keybroker/keybroker/managed"
)

// DefaultKeyCache is how many decoded keys a Registry keeps in memory
// unless told otherwise (SetCacheSize): a decoded key takes a few KB, so
// this is tens of MB whatever the number of keys in the store.
const DefaultKeyCache = 16_384

// keyCache holds at most capacity decoded keys, evicting with the CLOCK
// algorithm (second chance): a hit only sets the slot's reference bit,
// an atomic store under the registry's read lock, so that reads of warm
// keys never take the write lock; an insertion into a full cache sweeps
// the hand past recently used slots, clearing their bits, to the first
// slot not used since the hand last passed, and replaces it. It is
// guarded by Registry.mu: get under the read lock, the rest under the
// write lock.
type keyCache struct {
	capacity int
	slots    map[string]*keySlot
	ring     []*keySlot // the clock; slots in insertion order, holes refilled
	hand     int
}

type keySlot struct {
	key *managed.Key
	at  int // index in ring
	ref atomic.Bool
}

func newKeyCache(capacity int) *keyCache {
	return &keyCache{capacity: max(capacity, 1), slots: map[string]*keySlot{}}
}

// get returns the cached key id, or nil. Read lock.
func (c *keyCache) get(id string) *managed.Key {
	s := c.slots[id]
	if s == nil {
		return nil
	}
	if !s.ref.Load() {
		s.ref.Store(true)
	}
	return s.key
}

// peek returns the cached key id, or nil, without counting as a use (a
// listing walks every key). Read lock.
func (c *keyCache) peek(id string) *managed.Key {
	if s := c.slots[id]; s != nil {
		return s.key
	}
	return nil
}

// has says whether id is cached. Read lock.
func (c *keyCache) has(id string) bool { return c.slots[id] != nil }

// put caches k unless a newer revision of it is cached. Write lock.
func (c *keyCache) put(k *managed.Key) {
	if s := c.slots[k.ID]; s != nil {
		if s.key.Revision < k.Revision {
			s.key = k
		}
		s.ref.Store(true)
		return
	}
	s := &keySlot{key: k}
	if len(c.ring) < c.capacity {
		s.at = len(c.ring)
		c.ring = append(c.ring, s)
		c.slots[k.ID] = s
		return
	}
	for {
		old := c.ring[c.hand]
		if old.ref.Load() {
			old.ref.Store(false)
			c.hand = (c.hand + 1) % len(c.ring)
			continue
		}
		delete(c.slots, old.key.ID)
		s.at = c.hand
		c.ring[c.hand] = s
		c.slots[k.ID] = s
		c.hand = (c.hand + 1) % len(c.ring)
		return
	}
}

// drop forgets id. Write lock.
func (c *keyCache) drop(id string) {
	s := c.slots[id]
	if s == nil {
		return
	}
	delete(c.slots, id)
	last := len(c.ring) - 1
	if s.at != last {
		c.ring[s.at] = c.ring[last]
		c.ring[s.at].at = s.at
	}
	c.ring[last] = nil
	c.ring = c.ring[:last]
	if c.hand >= len(c.ring) {
		c.hand = 0
	}
}

// clear forgets every key. Write lock.
func (c *keyCache) clear() {
	clear(c.slots)
	clear(c.ring)
	c.ring, c.hand = c.ring[:0], 0
}

// len is the number of keys cached. Read lock.
func (c *keyCache) len() int { return len(c.slots) }
