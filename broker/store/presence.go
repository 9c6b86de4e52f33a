package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Presence is a store shared by several nodes in which each can say it is
// alive: what a node announces lasts while the node does (a lease), and
// goes when the node stops or is cut off for longer than LeaseTTL.
type Presence interface {
	// Announce keeps value under (kind, id) until ctx ends, announcing it
	// again whenever the lease behind it is lost.
	Announce(ctx context.Context, kind Kind, id string, value []byte)
	// Publish puts value under (kind, id) for at least ttl (at most about
	// twice it): what a node says of something it holds for a while (an
	// edge's lease), which lapses if the node stops saying it.
	Publish(ctx context.Context, kind Kind, id string, value []byte, ttl time.Duration) error
	// Present lists what the live nodes announce or publish under kind.
	Present(ctx context.Context, kind Kind) ([]Object, error)
}

func (s *Etcd) presence(kind Kind) string { return s.root + "present/" + string(kind) + "/" }

// Announce implements Presence with a session lease of LeaseTTL.
func (s *Etcd) Announce(ctx context.Context, kind Kind, id string, value []byte) {
	for ctx.Err() == nil {
		s.announceOnce(ctx, kind, id, value)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Etcd) announceOnce(ctx context.Context, kind Kind, id string, value []byte) {
	sess, err := s.session(ctx)
	if err != nil {
		return
	}
	defer s.endSession(sess) // revokes the lease: the announcement goes at once
	pctx, cancel := s.request(ctx)
	_, err = s.cli.Put(pctx, s.presence(kind)+id, string(value), clientv3.WithLease(sess.Lease()))
	cancel()
	if err != nil {
		return
	}
	select {
	case <-ctx.Done():
	case <-sess.Done():
	}
}

// Publish implements Presence: a put under the shared lease of Claim.
func (s *Etcd) Publish(ctx context.Context, kind Kind, id string, value []byte, ttl time.Duration) error {
	if err := checkWrite(kind, id, value); err != nil {
		return err
	}
	ctx, cancel := s.request(ctx)
	defer cancel()
	lease, err := s.leaseFor(ctx, ttl)
	if err != nil {
		return s.wrap(err)
	}
	if _, err := s.cli.Put(ctx, s.presence(kind)+id, string(value), clientv3.WithLease(lease)); err != nil {
		return s.wrap(err)
	}
	return nil
}

// Present implements Presence.
func (s *Etcd) Present(ctx context.Context, kind Kind) ([]Object, error) {
	if err := checkName(kind, "-"); err != nil {
		return nil, err
	}
	ctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.presence(kind), clientv3.WithPrefix())
	if err != nil {
		return nil, s.wrap(err)
	}
	out := make([]Object, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		id, ok := strings.CutPrefix(string(kv.Key), s.presence(kind))
		if !ok || id == "" {
			return nil, fmt.Errorf("store: etcd: key %q is not a presence of %s", kv.Key, kind)
		}
		out = append(out, Object{Kind: kind, ID: id, Value: kv.Value, Revision: uint64(kv.ModRevision)})
	}
	return out, nil
}
