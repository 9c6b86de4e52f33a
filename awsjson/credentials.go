package awsjson

import (
	"context"
	"errors"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/internal/ttlcache"
)

// CredentialTTL is how long a signing key is kept. A revocation is in
// force at once at the node that made it (which reads the record afresh
// through Forget), and at other central nodes and edges as soon as they
// hear the change from the store's feed or their Watch stream (Changed);
// the bound holds where that news is lost.
const CredentialTTL = 30 * time.Second

type signing struct {
	key       []byte
	who       identity.Identity
	elsewhere bool // sigv4.ErrElsewhere: kept as an answer like a key
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
	// Entries are keyed access key id ‖ 0 ‖ scope (get), grouped by the id.
	return &Cached{c: c, cache: ttlcache.New(ttlcache.Config[string, signing]{Capacity: n, TTL: CredentialTTL,
		Group: ttlcache.UpToNUL[string]})}
}

// SigningKey implements Credentials. An edge's "verified elsewhere"
// (sigv4.ErrElsewhere) is kept like a key, so a key an edge relays costs it
// one question to the central tier per CredentialTTL, not per request.
func (c *Cached) SigningKey(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
	return c.get(ctx, id+"\x00"+date+"\x00"+region+"\x00"+service, func(ctx context.Context) ([]byte, identity.Identity, error) {
		return c.c.SigningKey(ctx, id, date, region, service)
	})
}

// ViaEdge is the optional capability of Credentials at the central tier
// that verifies requests an edge relayed (broker.Service.SigningKeyVia):
// keys scoped to that edge are accepted there.
type ViaEdge interface {
	SigningKeyVia(ctx context.Context, edge, id, date, region, service string) ([]byte, identity.Identity, error)
}

// Via is the signing keys for requests edge relayed, cached apart from the
// central tier's own (a key scoped to edge verifies here, not there); nil
// when the credentials do not implement ViaEdge.
func (c *Cached) Via(edge string) SigningKeyFunc {
	v, ok := c.c.(ViaEdge)
	if !ok {
		return nil
	}
	return func(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
		return c.get(ctx, id+"\x00via\x00"+edge+"\x00"+date+"\x00"+region+"\x00"+service, func(ctx context.Context) ([]byte, identity.Identity, error) {
			return v.SigningKeyVia(ctx, edge, id, date, region, service)
		})
	}
}

func (c *Cached) get(ctx context.Context, k string, load func(context.Context) ([]byte, identity.Identity, error)) ([]byte, identity.Identity, error) {
	s, err := c.cache.GetOrLoad(ctx, k, func(ctx context.Context) (signing, error) {
		key, who, err := load(ctx)
		if errors.Is(err, sigv4.ErrElsewhere) {
			return signing{elsewhere: true}, nil
		}
		return signing{key: key, who: who}, err
	})
	switch {
	case err != nil && !errors.Is(err, sigv4.ErrUnknownKey):
		return nil, identity.Identity{}, err
	case err == nil && s.elsewhere:
		return nil, identity.Identity{}, sigv4.ErrElsewhere
	}
	return s.key, s.who, err
}

// Forget drops what is kept of access key id (it was revoked here).
func (c *Cached) Forget(id string) {
	c.cache.ForgetGroup(id)
}

// ForgetAll drops every signing key kept (the history of access keys'
// changes was lost: any may have been revoked).
func (c *Cached) ForgetAll() { c.cache.Purge() }

// Changed is what an access key's change reported by the change feed
// does here: it drops what is kept of id, or of every key for "".
func (c *Cached) Changed(id string) {
	if id == "" {
		c.ForgetAll()
		return
	}
	c.Forget(id)
}

// Close stops the cache.
func (c *Cached) Close() { c.cache.Close() }
