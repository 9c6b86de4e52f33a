package edgecache

import (
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// The plain-cache tests speak to the cache through these few helpers.

// versionID names a version of one incarnation of a key (materialID).
func versionID(k *managed.Key, v uint32) string { return string(materialID(k, v)) }

// get returns a copy of the cached material, or nil.
func (c plainCache) get(id string) *secret.Bytes {
	m, _ := c.Get(id)
	return m
}

// put caches m (taking ownership).
func (c plainCache) put(id string, m *secret.Bytes) { c.Put(id, m) }

func (c plainCache) len() int { return c.Len() }

func (c plainCache) purge() { c.Purge() }
