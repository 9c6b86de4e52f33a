package edgecache

import (
	"container/list"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// plainCache holds opened material in memory: a bounded LRU whose entries
// live at most ttl, zeroed when evicted, expired or purged. Callers get
// copies, so zeroing an entry never pulls material from under a call.
type plainCache struct {
	cap int
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	ll *list.List
	m  map[string]*list.Element

	hits, misses, evictions atomic.Uint64
}

type plainEntry struct {
	id      string
	m       *secret.Bytes
	expires time.Time
}

func newPlainCache(capacity int, ttl time.Duration, now func() time.Time) *plainCache {
	return &plainCache{cap: max(capacity, 1), ttl: ttl, now: now, ll: list.New(), m: map[string]*list.Element{}}
}

// versionID names a version of one incarnation of a key (materialID).
func versionID(k *managed.Key, v uint32) string { return string(materialID(k, v)) }

// get returns a copy of the cached material, or nil.
func (c *plainCache) get(id string) *secret.Bytes {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[id]
	if !ok {
		c.misses.Add(1)
		return nil
	}
	e := el.Value.(*plainEntry)
	if !c.now().Before(e.expires) {
		c.removeLocked(el)
		c.evictions.Add(1)
		c.misses.Add(1)
		return nil
	}
	c.ll.MoveToFront(el)
	c.hits.Add(1)
	return e.m.Clone()
}

// put caches m (taking ownership).
func (c *plainCache) put(id string, m *secret.Bytes) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[id]; ok {
		c.removeLocked(el)
	}
	c.m[id] = c.ll.PushFront(&plainEntry{id: id, m: m, expires: c.now().Add(c.ttl)})
	for c.ll.Len() > c.cap {
		c.removeLocked(c.ll.Back())
		c.evictions.Add(1)
	}
}

func (c *plainCache) removeLocked(el *list.Element) {
	e := c.ll.Remove(el).(*plainEntry)
	delete(c.m, e.id)
	e.m.Destroy()
}

// forget zeroes every cached version of a key.
func (c *plainCache) forget(keyID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prefix := keyID + "\x00"
	for el := c.ll.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*plainEntry); strings.HasPrefix(e.id, prefix) && len(e.id) >= len(prefix)+4 {
			c.removeLocked(el)
		}
		el = next
	}
}

// purge zeroes everything (the edge went stale).
func (c *plainCache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.ll.Len() > 0 {
		c.removeLocked(c.ll.Back())
	}
}

func (c *plainCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
