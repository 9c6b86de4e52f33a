// Package ttlcache is the one bounded, expiring cache of secrets behind
// the data-key and material caches: an LRU of at most Capacity entries,
// each living at most TTL, whose concurrent misses of one key share one
// load, and which hands every entry it drops to an eviction hook so that
// the caller can zero it.
//
// # Users
//
// Three caches are built on it, and they differ on purpose:
//
//   - envelope.Cache keeps unwrapped data keys for decryption, keyed by
//     key id, version, incarnation and wrapped key. It hands out the
//     cached *DataKey itself and never zeroes one (a decryption may still
//     hold it); it forgets by the key id inside the value, and counts
//     every removal as an eviction.
//   - broker.Materials keeps the central tier's key-version material,
//     keyed by key id, version and incarnation. Get hands out the cached
//     secret itself and never zeroes it (the runtime cleanup on
//     secret.Bytes does once it is unreachable); it forgets by key id
//     prefix and exposes no counters.
//   - the edge's material cache (edgecache) keeps opened material, keyed
//     like its disk (key id, version, salt). It sets Copy so that every
//     caller gets its own copy, made under the lock, and zeroes an entry
//     in OnEvict the moment it leaves; it counts only expiries and
//     capacity evictions as evictions.
//
// # Keys
//
// Keys are strings because coalescing reuses internal/flight, whose
// singleflight groups by string, and every user's key is a byte encoding
// anyway. A key passed to Get, GetOrLoad or Forget need only be valid for
// the call: the cache stores its own copy (and so does Put). A caller may therefore look up
// with View of a buffer on its stack and allocate nothing on a hit.
//
// # Concurrency
//
// One mutex guards the map and the LRU list; Get takes it (a hit moves the
// entry to the front). GetOrLoad runs load once for all callers missing
// one key at the same time, with internal/flight's rules: each caller
// waits under its own ctx; the load runs under the first caller's; when
// that caller gives up, or the load fails with an error marked
// flight.Personal (that caller's budget is spent), a joined caller runs
// the load again under its own ctx instead of inheriting the failure. A
// failed load caches nothing.
//
// Forget, ForgetIf, Purge and Close also fence loads in flight: a value
// whose load began before one of them returned is handed to its callers
// but not kept, so that no lookup after Forget returns sees a value loaded
// from a state Forget was meant to discard.
//
// # Eviction
//
// OnEvict is called exactly once for every value that leaves the cache —
// expired (found expired by a lookup), pushed out by capacity, replaced,
// forgotten, purged — with the cache locked: it must be quick and must not
// call the cache. A value the cache never kept (loaded across a Forget, or
// loaded or Put after Close) is not passed to OnEvict: it belongs to its
// callers. After Close nothing is kept, so OnEvict is never called again.
package ttlcache

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/internal/flight"
)

// Reason says why an entry left the cache.
type Reason uint8

// The reasons an entry leaves the cache.
const (
	// Expired: a lookup found the entry past its TTL.
	Expired Reason = iota
	// Capacity: a newer entry pushed out the least recently used one.
	Capacity
	// Replaced: a load stored a new value under the entry's key.
	Replaced
	// Forgotten: Forget or ForgetIf dropped it.
	Forgotten
	// Purged: Purge or Close dropped it.
	Purged
	numReasons
)

func (r Reason) String() string {
	switch r {
	case Expired:
		return "expired"
	case Capacity:
		return "capacity"
	case Replaced:
		return "replaced"
	case Forgotten:
		return "forgotten"
	case Purged:
		return "purged"
	}
	return "unknown"
}

// Config configures a Cache.
type Config[K ~string, V any] struct {
	// Capacity is the most entries kept; below 1 means 1.
	Capacity int
	// TTL is how long an entry lives after it is stored.
	TTL time.Duration
	// Now is the clock; nil means time.Now, and expiry is then read from
	// the monotonic clock alone (time.Until), which costs half a time.Now.
	Now func() time.Time
	// OnEvict, when set, receives every value the cache drops, once,
	// with the cache locked (see # Eviction).
	OnEvict func(k K, v V, r Reason)
	// Copy, when set, makes what Get and GetOrLoad hand out: a copy made
	// under the cache's lock, so that OnEvict may destroy the cached value
	// without pulling it from under a caller.
	Copy func(V) V
	// Group, when set, names the group of each key: ForgetGroup then
	// drops a group's entries in time proportional to their number, not
	// to the cache's (ForgetIf visits every entry).
	Group func(K) string
}

// Stats counts lookups and removals.
type Stats struct {
	// Hits and Misses count Get and GetOrLoad calls, one per caller.
	Hits, Misses uint64
	// Evicted counts removals by Reason.
	Evicted [numReasons]uint64
}

// Evictions is the number of removals for any of reasons (all when none
// is given).
func (s Stats) Evictions(reasons ...Reason) uint64 {
	var n uint64
	if len(reasons) == 0 {
		for _, c := range s.Evicted {
			n += c
		}
		return n
	}
	for _, r := range reasons {
		n += s.Evicted[r]
	}
	return n
}

// Cache is a bounded TTL-LRU cache with coalesced loading. It is safe for
// concurrent use.
type Cache[K ~string, V any] struct {
	cfg  Config[K, V]
	mono bool
	sf   singleflight.Group

	mu sync.Mutex
	m  map[K]*entry[K, V]
	// groups indexes the entries by Config.Group, when it is set.
	groups map[string]map[*entry[K, V]]struct{}
	// root is the sentinel of the LRU ring: root.next is the most
	// recently used entry, root.prev the least.
	root entry[K, V]
	// gen moves on every Forget, ForgetIf, Purge and Close: a load that
	// began under another gen is not kept.
	gen    uint64
	closed bool

	hits, misses atomic.Uint64
	evicted      [numReasons]atomic.Uint64
}

type entry[K ~string, V any] struct {
	key        K
	val        V
	expires    time.Time
	prev, next *entry[K, V]
}

// New returns an empty cache.
func New[K ~string, V any](c Config[K, V]) *Cache[K, V] {
	c.Capacity = max(c.Capacity, 1)
	mono := c.Now == nil
	if mono {
		c.Now = time.Now
	}
	cc := &Cache[K, V]{cfg: c, mono: mono, m: make(map[K]*entry[K, V]), groups: map[string]map[*entry[K, V]]struct{}{}}
	cc.root.next, cc.root.prev = &cc.root, &cc.root
	return cc
}

// View is b as a key without copying it, for a lookup: b must not change
// until the call it is passed to returns. The cache copies a key it keeps.
func View[K ~string](b []byte) K {
	return K(unsafe.String(unsafe.SliceData(b), len(b)))
}

// Get returns the live value stored under k (a copy when Config.Copy is
// set), counting a hit or a miss.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	v, ok := c.lookupLocked(k)
	if ok && c.cfg.Copy != nil {
		v = c.cfg.Copy(v)
	}
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return v, ok
}

// lookupLocked finds k's live entry and marks it most recently used,
// dropping it when expired.
func (c *Cache[K, V]) lookupLocked(k K) (V, bool) {
	var zero V
	e, ok := c.m[k]
	if !ok {
		return zero, false
	}
	if !c.live(e) {
		c.removeLocked(e, Expired)
		return zero, false
	}
	if c.root.next != e {
		c.unlink(e)
		c.pushFront(e)
	}
	return e.val, true
}

func (c *Cache[K, V]) live(e *entry[K, V]) bool {
	if c.mono {
		return time.Until(e.expires) > 0
	}
	return c.cfg.Now().Before(e.expires)
}

// GetOrLoad returns the value stored under k, calling load on a miss —
// once for all callers missing k together — and keeping what it returns.
// A load error is returned and not kept. See # Concurrency for how
// callers share a load.
func (c *Cache[K, V]) GetOrLoad(ctx context.Context, k K, load func(context.Context) (V, error)) (V, error) {
	if v, ok := c.Get(k); ok {
		return v, nil
	}
	// k may be a View: the flight and the map keep their own copy.
	key := strings.Clone(string(k))
	res, err := flight.Do(ctx, &c.sf, key, func(ctx context.Context) (any, error) {
		c.mu.Lock()
		if v, ok := c.lookupLocked(K(key)); ok {
			if c.cfg.Copy != nil {
				v = c.cfg.Copy(v)
			}
			c.mu.Unlock()
			return v, nil
		}
		gen := c.gen
		c.mu.Unlock()
		v, err := load(ctx)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed || c.gen != gen {
			// Not kept: the value is the callers', who copy it below.
			return v, nil
		}
		c.insertLocked(K(key), v)
		if c.cfg.Copy != nil {
			// The callers copy this copy, which no eviction can destroy.
			return c.cfg.Copy(v), nil
		}
		return v, nil
	})
	if err != nil {
		var zero V
		return zero, err
	}
	v := res.(V)
	if c.cfg.Copy != nil {
		v = c.cfg.Copy(v)
	}
	return v, nil
}

// Put stores v under k, replacing (and evicting) what was there, and
// reports whether it did: after Close nothing is kept, and v stays the
// caller's. k may be a View.
func (c *Cache[K, V]) Put(k K, v V) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.insertLocked(K(strings.Clone(string(k))), v)
	return true
}

func (c *Cache[K, V]) insertLocked(k K, v V) {
	if old, ok := c.m[k]; ok {
		c.removeLocked(old, Replaced)
	}
	e := &entry[K, V]{key: k, val: v, expires: c.cfg.Now().Add(c.cfg.TTL)}
	c.m[k] = e
	c.pushFront(e)
	if c.cfg.Group != nil {
		g := c.cfg.Group(k)
		if c.groups[g] == nil {
			c.groups[g] = map[*entry[K, V]]struct{}{}
		}
		c.groups[g][e] = struct{}{}
	}
	for len(c.m) > c.cfg.Capacity {
		c.removeLocked(c.root.prev, Capacity)
	}
}

// Forget drops k's entry, if any.
func (c *Cache[K, V]) Forget(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if e, ok := c.m[k]; ok {
		c.removeLocked(e, Forgotten)
	}
}

// ForgetIf drops every entry for which match is true, most recently used
// first. match runs with the cache locked.
func (c *Cache[K, V]) ForgetIf(match func(K, V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for e := c.root.next; e != &c.root; {
		next := e.next
		if match(e.key, e.val) {
			c.removeLocked(e, Forgotten)
		}
		e = next
	}
}

// UpToNUL is a Config.Group for keys that begin with their group and a
// NUL byte (a key id, then 0, then the rest): the key up to its first NUL.
func UpToNUL[K ~string](k K) string {
	if i := strings.IndexByte(string(k), 0); i >= 0 {
		return string(k[:i])
	}
	return string(k)
}

// ForgetGroup drops every entry of group g (Config.Group), in time
// proportional to their number.
func (c *Cache[K, V]) ForgetGroup(g string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for e := range c.groups[g] {
		c.removeLocked(e, Forgotten)
	}
}

// Purge drops every entry, least recently used first.
func (c *Cache[K, V]) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purgeLocked()
}

func (c *Cache[K, V]) purgeLocked() {
	c.gen++
	for c.root.prev != &c.root {
		c.removeLocked(c.root.prev, Purged)
	}
}

// Close purges the cache and keeps nothing from then on: loads still run
// for their callers, and what they load is the callers'.
func (c *Cache[K, V]) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purgeLocked()
	c.closed = true
}

// Len reports the number of entries, expired ones not yet found included.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Stats reports the counts so far.
func (c *Cache[K, V]) Stats() Stats {
	s := Stats{Hits: c.hits.Load(), Misses: c.misses.Load()}
	for i := range s.Evicted {
		s.Evicted[i] = c.evicted[i].Load()
	}
	return s
}

func (c *Cache[K, V]) removeLocked(e *entry[K, V], r Reason) {
	c.unlink(e)
	delete(c.m, e.key)
	if c.cfg.Group != nil {
		g := c.cfg.Group(e.key)
		if delete(c.groups[g], e); len(c.groups[g]) == 0 {
			delete(c.groups, g)
		}
	}
	c.evicted[r].Add(1)
	if c.cfg.OnEvict != nil {
		c.cfg.OnEvict(e.key, e.val, r)
	}
	var zero V
	e.val = zero
}

func (c *Cache[K, V]) unlink(e *entry[K, V]) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (c *Cache[K, V]) pushFront(e *entry[K, V]) {
	e.prev = &c.root
	e.next = c.root.next
	c.root.next.prev = e
	c.root.next = e
}
