package edgecache

import (
	"encoding/binary"
	"time"

	"github.com/keybroker/keybroker/internal/ttlcache"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// plainCache holds opened material in memory: an internal/ttlcache cache,
// bounded and with a lifetime, keyed like the disk (materialID). An entry
// is zeroed the moment it is evicted, expires, is forgotten or purged;
// callers get copies made under the cache's lock, so zeroing an entry
// never pulls material from under a call.
type plainCache struct {
	*ttlcache.Cache[string, *secret.Bytes]
}

func newPlainCache(capacity int, ttl time.Duration, now func() time.Time) plainCache {
	return plainCache{ttlcache.New(ttlcache.Config[string, *secret.Bytes]{
		Capacity: capacity, TTL: ttl, Now: now,
		Copy:    (*secret.Bytes).Clone,
		OnEvict: func(_ string, m *secret.Bytes, _ ttlcache.Reason) { m.Destroy() },
		Group:   ttlcache.UpToNUL[string], // materialID: key id ‖ 0 ‖ …
	})}
}

// hits counts material requests served from memory.
func (c plainCache) hits() uint64 { return c.Stats().Hits }

// misses counts material requests not in memory, one per request.
func (c plainCache) misses() uint64 { return c.Stats().Misses }

// evictions counts entries pushed out by capacity or found expired;
// forgetting and purging are not counted, as they never were.
func (c plainCache) evictions() uint64 {
	return c.Stats().Evictions(ttlcache.Expired, ttlcache.Capacity)
}

// forget zeroes every cached version of a key, visiting only its entries.
func (c plainCache) forget(keyID string) { c.ForgetGroup(keyID) }

// appendMaterialID appends materialID(k, v) to buf.
func appendMaterialID(buf []byte, k *managed.Key, v uint32) []byte {
	buf = append(append(buf, k.ID...), 0)
	return append(binary.BigEndian.AppendUint32(buf, v), k.Salt...)
}
