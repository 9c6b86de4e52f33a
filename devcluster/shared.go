package devcluster

import (
	"context"
	"fmt"
	"sync"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
)

// sharedRoots is the registry the central nodes of one cluster open their
// roots of trust from. A softkms keystore admits one opener at a time (it
// locks its file), so the central nodes of this one process share one
// open keystore: the first to open it opens it (with its logger), the
// others get the same, and the last Close closes it. Every other scheme
// is opened by each node, as separate processes would.
func sharedRoots() (*backends.Registry, error) {
	base := central.Backends()
	s := &sharedOpener{base: base, open: map[string]*sharedBackend{}}
	r := backends.NewRegistry()
	for _, scheme := range base.Schemes() {
		open := base.Open
		if scheme == "softkms" {
			open = s.Open
		}
		if err := r.Register(scheme, open); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// fullBackend is a backend with every capability, as softkms is; only such
// a backend can be shared behind one wrapper type without hiding one.
type fullBackend interface {
	backends.Backend
	backends.MACer
	backends.Signer
	backends.KeyCreator
	backends.DataKeyGenerator
	backends.HealthChecker
	backends.CreatesAlgorithms
}

type sharedOpener struct {
	base *backends.Registry
	mu   sync.Mutex
	open map[string]*sharedBackend // by URI
}

// sharedBackend is one open backend and how many nodes hold it.
type sharedBackend struct {
	fullBackend
	s    *sharedOpener
	uri  string
	refs int // under s.mu
}

func (s *sharedOpener) Open(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.open[uri]; ok {
		b.refs++
		return b, nil
	}
	b, err := s.base.Open(ctx, uri, opts)
	if err != nil {
		return nil, err
	}
	full, ok := b.(fullBackend)
	if !ok {
		b.Close()
		return nil, fmt.Errorf("devcluster: %s lacks a capability the central nodes sharing it would need", uri)
	}
	sb := &sharedBackend{fullBackend: full, s: s, uri: uri, refs: 1}
	s.open[uri] = sb
	return sb, nil
}

// Close closes the backend when the last node holding it closes it.
func (b *sharedBackend) Close() error {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	if b.refs == 0 {
		return nil
	}
	if b.refs--; b.refs > 0 {
		return nil
	}
	delete(b.s.open, b.uri)
	return b.fullBackend.Close()
}
