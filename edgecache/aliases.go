package edgecache

import (
	"context"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// The edge resolves named aliases from its replica: each key lists its
// aliases (managed.Key.Aliases) and Cache.aliases indexes them, changed
// with the keys under mu. The central tier's alias records decide which
// key an alias names; the replica follows them as it follows the keys,
// so an alias moved a moment ago may still resolve to its old key here
// (every operation is authorized on the key the alias resolved to).

var _ pipeline.AliasResolver = (*performer)(nil)

// ResolveAlias is the key a named alias names in the replica.
func (n *performer) ResolveAlias(_ context.Context, name string) (string, error) {
	n.c.mu.RLock()
	id, ok := n.c.aliases[name]
	n.c.mu.RUnlock()
	if !ok {
		return "", managed.Errorf(managed.ErrNotFound, "alias/%s does not exist", name)
	}
	return id, nil
}

// indexAliasesLocked indexes k's aliases; c.mu is held.
func (c *Cache) indexAliasesLocked(k *managed.Key) {
	for _, a := range k.Aliases {
		c.aliases[a] = k.ID
	}
}

// unindexAliasesLocked removes the aliases of k (as it was) that still
// name it; c.mu is held.
func (c *Cache) unindexAliasesLocked(k *managed.Key) {
	for _, a := range k.Aliases {
		if c.aliases[a] == k.ID {
			delete(c.aliases, a)
		}
	}
}
