package store

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Claimer is a store shared by several nodes that can claim a name once
// across all of them for a while: the first Claim of (kind, id) succeeds
// and every other before it lapses fails with ErrConflict. The central
// tier claims the nonce of each forward proof, so that a proof spent at
// one central cannot be spent again at another.
type Claimer interface {
	Claim(ctx context.Context, kind Kind, id string, ttl time.Duration) error
}

// claimLease is a lease shared by the claims made while it has ttl left,
// so a claim costs one transaction, not a lease grant as well.
type claimLease struct {
	mu      sync.Mutex
	id      clientv3.LeaseID
	expires time.Time
}

// Claim implements Claimer: a create-if-absent under a lease that lasts
// at least ttl (at most twice it).
func (s *Etcd) Claim(ctx context.Context, kind Kind, id string, ttl time.Duration) error {
	if err := checkName(kind, id); err != nil {
		return err
	}
	ctx, cancel := s.request(ctx)
	defer cancel()
	lease, err := s.leaseFor(ctx, ttl)
	if err != nil {
		return s.wrap(err)
	}
	k := s.root + "claim/" + string(kind) + "/" + id
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, "", clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return s.wrap(err)
	}
	if !resp.Succeeded {
		return ErrConflict
	}
	return nil
}

// leaseFor returns a lease with at least ttl left, granting one of twice
// ttl (a second at least) when the current one has less.
func (s *Etcd) leaseFor(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	s.claims.mu.Lock()
	defer s.claims.mu.Unlock()
	now := time.Now()
	if s.claims.id != 0 && s.claims.expires.Sub(now) >= ttl {
		return s.claims.id, nil
	}
	secs := max(int64((2*ttl+time.Second-1)/time.Second), 1)
	g, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return 0, err
	}
	s.claims.id, s.claims.expires = g.ID, now.Add(time.Duration(g.TTL)*time.Second)
	return g.ID, nil
}
