package edgecache

import (
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// OpenSigningKey opens an AWS access key's signing key the central tier
// sealed to this edge (EdgeSync.SigningKey), with the edge's sealing key.
// The edge keeps it in memory only (package edge caches it briefly).
func (c *Cache) OpenSigningKey(blob []byte, scope sealed.SigningScope) (*secret.Bytes, error) {
	return sealed.OpenSigningKey(c.seal, blob, c.cfg.NodeID, scope)
}
