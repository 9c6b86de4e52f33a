package awsjson

import (
	"context"
	"errors"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/internal/ttlcache"
)

// CredentialTTL is how long a signing key is kept: a revocation made at
// another central node is in force everywhere within it (at once at the
// node that made it, which reads the record afresh through Forget).
const CredentialTTL = 30 * time.Second

type signing struct {
	key []byte
	who identity.Identity
}

// Cached keeps the signing keys c gives, per access key and scope, for
// CredentialTTL (at most n), so that a client's calls cost no read of the
// store and no HMAC in the root of trust each. Unknown keys are not kept:
// a key made a moment ago is found at its first use.
type Cached struct {
	c     Credentials
	cache *ttlcache.Cache[string, signing]
}

// NewCached caches c's signing keys.
func NewCached(c Credentials, n int) *Cached {
	return &Cached{c: c, cache: ttlcache.New(ttlcache.Config[string, signing]{Capacity: n, TTL: CredentialTTL})}
}

// SigningKey implements Credentials.
func (c *Cached) SigningKey(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
	s, err := c.cache.GetOrLoad(ctx, id+"\x00"+date+"\x00"+region+"\x00"+service, func(ctx context.Context) (signing, error) {
		key, who, err := c.c.SigningKey(ctx, id, date, region, service)
		return signing{key, who}, err
	})
	if err != nil && !errors.Is(err, sigv4.ErrUnknownKey) {
		return nil, identity.Identity{}, err
	}
	return s.key, s.who, err
}

// Forget drops what is kept of access key id (it was revoked here).
func (c *Cached) Forget(id string) {
	c.cache.ForgetIf(func(k string, _ signing) bool { return len(k) > len(id) && k[:len(id)] == id && k[len(id)] == 0 })
}

// Close stops the cache.
func (c *Cached) Close() { c.cache.Close() }
