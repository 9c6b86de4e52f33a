package envelope

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/internal/flight"
	"github.com/keybroker/keybroker/internal/ttlcache"
)

// ReusePolicy bounds how long one data key seals messages.
type ReusePolicy struct {
	// Period is the longest a data key is used, 60 s to 24 h.
	Period time.Duration
	// MaxMessages is the most messages sealed under one data key; far below
	// AES-GCM's 2^32 limit for random nonces.
	MaxMessages uint64
	// MaxBytes is the most plaintext bytes sealed under one data key.
	MaxBytes uint64
}

// Reuse-policy defaults and bounds.
const (
	DefaultReusePeriod = 5 * time.Minute
	MinReusePeriod     = time.Minute
	MaxReusePeriod     = 24 * time.Hour
	DefaultMaxMessages = 1 << 28
	MaxMaxMessages     = 1 << 32
	DefaultMaxBytes    = 64 << 30
)

// WithDefaults fills zero fields with the defaults.
func (p ReusePolicy) WithDefaults() ReusePolicy {
	if p.Period == 0 {
		p.Period = DefaultReusePeriod
	}
	if p.MaxMessages == 0 {
		p.MaxMessages = DefaultMaxMessages
	}
	if p.MaxBytes == 0 {
		p.MaxBytes = DefaultMaxBytes
	}
	return p
}

// Validate checks the bounds (after WithDefaults).
func (p ReusePolicy) Validate() error {
	switch {
	case p.Period < MinReusePeriod || p.Period > MaxReusePeriod:
		return fmt.Errorf("envelope: reuse period %s out of %s..%s", p.Period, MinReusePeriod, MaxReusePeriod)
	case p.MaxMessages < 1 || p.MaxMessages > MaxMaxMessages:
		return fmt.Errorf("envelope: reuse max messages %d out of 1..%d", p.MaxMessages, uint64(MaxMaxMessages))
	case p.MaxBytes < 1:
		return errors.New("envelope: reuse max bytes must be positive")
	}
	return nil
}

// Reuser hands out data keys for sealing, one per partition (the caller's
// key of key id, version and context partition), replacing each when its
// policy runs out.
//
// Handing out a data key takes no lock in the common case: each entry
// counts its messages and bytes with atomics, and a small table of recently
// used entries, indexed by a hash of the partition, is read without the
// lock. The map of entries stays the authority; the table is written only
// under the lock, when an entry is found in the map, installed, evicted or
// forgotten, so that a forgotten entry never comes back into it.
type Reuser struct {
	policy ReusePolicy
	max    int
	now    func() time.Time
	// mono is set when now is time.Now: an entry's expiry, read from
	// time.Now when it was installed, is then checked against the
	// monotonic clock alone (time.Until), the same comparison for half
	// the cost of a time.Now.
	mono bool
	seed maphash.Seed
	hot  [hotSlots]atomic.Pointer[reuseEntry]

	mu      sync.Mutex
	entries map[string]*reuseEntry
	sf      singleflight.Group
	created atomic.Uint64
}

// hotSlots is the size of a Reuser's lock-free table: a power of two well
// above the number of contexts one sealer usually alternates between. A
// partition whose slot another holds takes the lock, as every partition
// did before the table.
const hotSlots = 64

type reuseEntry struct {
	partition string
	dk        *DataKey
	expires   time.Time
	// msgs and bytes count the messages and bytes handed out. A refused
	// message may leave either past the policy's limit: that only retires
	// the entry, which the refusal replaces anyway.
	msgs  atomic.Uint64
	bytes atomic.Uint64
}

// NewReuser returns a Reuser holding at most maxEntries partitions. now is
// the clock (time.Now when nil).
func NewReuser(p ReusePolicy, maxEntries int, now func() time.Time) (*Reuser, error) {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if maxEntries < 1 {
		return nil, errors.New("envelope: reuser needs room for at least one entry")
	}
	mono := now == nil
	if mono {
		now = time.Now
	}
	return &Reuser{policy: p, max: maxEntries, now: now, mono: mono, seed: maphash.MakeSeed(), entries: map[string]*reuseEntry{}}, nil
}

// Created reports how many data keys the Reuser has had created.
func (r *Reuser) Created() uint64 { return r.created.Load() }

// live reports whether e's period has not ended.
func (r *Reuser) live(e *reuseEntry) bool {
	if r.mono {
		return time.Until(e.expires) > 0
	}
	return r.now().Before(e.expires)
}

// room reports whether e can seal one more message of n bytes, without
// counting it.
func (r *Reuser) room(e *reuseEntry, n int) bool {
	return e != nil && r.live(e) && e.msgs.Load() < r.policy.MaxMessages && uint64(n) <= r.policy.MaxBytes-e.bytes.Load()
}

// reserve counts one message of n bytes against e if its period, message
// count and byte count allow it. The counts are exact among concurrent
// callers: no more than MaxMessages messages and MaxBytes bytes are ever
// handed out. A message refused for its bytes has used up a message: that
// can only retire e early.
func (r *Reuser) reserve(e *reuseEntry, n int) bool {
	if !r.live(e) || e.msgs.Add(1) > r.policy.MaxMessages {
		return false
	}
	for {
		// bytes never exceeds MaxBytes, so the subtraction cannot wrap.
		b := e.bytes.Load()
		if uint64(n) > r.policy.MaxBytes-b {
			return false
		}
		if n == 0 || e.bytes.CompareAndSwap(b, b+uint64(n)) {
			return true
		}
	}
}

func (r *Reuser) slot(partition string) *atomic.Pointer[reuseEntry] {
	return &r.hot[maphash.String(r.seed, partition)%hotSlots]
}

// Take counts one message of n bytes against the partition's current data
// key and returns it, or returns nil when there is none or it has no room
// left. It never creates a data key (Get does), so a caller can try it
// before building what Get needs to create one. partition is not retained.
func (r *Reuser) Take(partition string, n int) *DataKey {
	if e := r.slot(partition).Load(); e != nil && e.partition == partition && r.reserve(e, n) {
		return e.dk
	}
	// Not in the table, or spent: the map may hold a newer entry.
	return r.take(partition, n)
}

// take is Take under the lock, from the map, publishing the entry in the
// table.
func (r *Reuser) take(partition string, n int) *DataKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[partition]
	if e == nil || !r.reserve(e, n) {
		return nil
	}
	r.slot(partition).Store(e)
	return e.dk
}

// Get returns the data key to seal one message of n bytes in partition,
// calling create (once, however many callers miss together) when there is
// none or the current one is spent.
func (r *Reuser) Get(ctx context.Context, partition string, n int, create func(context.Context) (*DataKey, error)) (*DataKey, error) {
	if uint64(n) > r.policy.MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes exceeds the reuse byte limit", ErrTooLarge, n)
	}
	for {
		if dk := r.Take(partition, n); dk != nil {
			return dk, nil
		}
		_, err := flight.Do(ctx, &r.sf, partition, func(ctx context.Context) (any, error) {
			// Another flight may have installed a fresh key meanwhile.
			r.mu.Lock()
			fresh := r.room(r.entries[partition], n)
			r.mu.Unlock()
			if fresh {
				return nil, nil
			}
			dk, err := create(ctx)
			if err != nil {
				return nil, err
			}
			r.created.Add(1)
			r.install(partition, dk)
			return nil, nil
		})
		if err != nil {
			return nil, err
		}
	}
}

func (r *Reuser) install(partition string, dk *DataKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.entries[partition]; !ok && len(r.entries) >= r.max {
		now := r.now()
		for k, e := range r.entries {
			if !now.Before(e.expires) {
				r.dropLocked(k, e)
			}
		}
		for k, e := range r.entries {
			if len(r.entries) < r.max {
				break
			}
			r.dropLocked(k, e)
		}
	}
	// The replaced key is not destroyed: concurrent sealers may hold it.
	e := &reuseEntry{partition: partition, dk: dk, expires: r.now().Add(r.policy.Period)}
	r.entries[partition] = e
	r.slot(partition).Store(e)
}

// dropLocked removes partition k's entry e from the map and the table.
func (r *Reuser) dropLocked(k string, e *reuseEntry) {
	delete(r.entries, k)
	r.slot(k).CompareAndSwap(e, nil)
}

// Forget drops every partition for which match is true (for example all
// partitions of a key that was rotated or disabled). No Get or Take that
// starts after Forget returns hands out a forgotten data key; one that
// overlaps it may, as before the lock-free path, and a caller that holds
// one may still seal with it.
func (r *Reuser) Forget(match func(partition string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.entries {
		if match(k) {
			r.dropLocked(k, e)
		}
	}
}

// Cache keeps unwrapped data keys for decryption: bounded LRU, each entry
// living at most ttl, keyed by key id, version and wrapped key. An entry it
// drops is not zeroed (a caller may still hold it); see # Secrets.
type Cache struct {
	c *ttlcache.Cache[string, *DataKey]
}

// NewCache returns a cache of at most capacity entries living at most ttl.
// now is the clock (time.Now when nil).
func NewCache(capacity int, ttl time.Duration, now func() time.Time) *Cache {
	return &Cache{c: ttlcache.New(ttlcache.Config[string, *DataKey]{Capacity: capacity, TTL: ttl, Now: now,
		Group: cacheKeyID})}
}

// Stats reports hits, misses and evictions (every removal: expired,
// pushed out, replaced or purged) so far.
func (c *Cache) Stats() (hits, misses, evictions uint64) {
	s := c.c.Stats()
	return s.Hits, s.Misses, s.Evictions()
}

// Len reports the number of entries.
func (c *Cache) Len() int { return c.c.Len() }

// cacheKey names a wrapped data key exactly: key id (length-prefixed),
// version, the key's incarnation (length-prefixed) and wrapped bytes.
// Unlike a hash it costs nothing to compute and cannot collide.
func cacheKey(buf []byte, keyID string, version uint32, incarnation string, wrapped []byte) []byte {
	buf = append(buf, byte(len(keyID)))
	buf = append(buf, keyID...)
	buf = binary.BigEndian.AppendUint32(buf, version)
	buf = append(buf, byte(len(incarnation)))
	buf = append(buf, incarnation...)
	return append(buf, wrapped...)
}

// Get returns the unwrapped data key for h, calling unwrap on a miss (once
// for all concurrent misses of the same wrapped key).
func (c *Cache) Get(ctx context.Context, h *Header, unwrap func(context.Context) (*DataKey, error)) (*DataKey, error) {
	return c.GetIncarnation(ctx, h, "", unwrap)
}

// GetIncarnation is Get for one incarnation of the key h names (at most
// 255 bytes; the central tier and edges give the key's salt), so that
// a key deleted and created again under the same id never gets the data
// keys its predecessor unwrapped.
func (c *Cache) GetIncarnation(ctx context.Context, h *Header, incarnation string, unwrap func(context.Context) (*DataKey, error)) (*DataKey, error) {
	var buf [256]byte
	k := cacheKey(buf[:0], h.KeyID, h.Version, incarnation, h.WrappedDEK)
	// The view of buf lives only for the call; the cache copies a key it
	// keeps, so a hit allocates nothing.
	return c.c.GetOrLoad(ctx, ttlcache.View[string](k), unwrap)
}

// Purge drops every entry of keyID (on rotation, disable or deletion),
// visiting only its entries.
func (c *Cache) Purge(keyID string) { c.c.ForgetGroup(keyID) }

// cacheKeyID is the key id a cacheKey begins with (length-prefixed).
func cacheKeyID(k string) string {
	if len(k) == 0 || len(k) < 1+int(k[0]) {
		return ""
	}
	return k[1 : 1+int(k[0])]
}

// PurgeAll drops every entry (an edge whose replica went stale).
func (c *Cache) PurgeAll() { c.c.Purge() }
