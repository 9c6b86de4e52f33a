package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrFenced refuses a write made under a leadership this node no longer
// holds: another node may be leading, and the write could repeat its work.
var ErrFenced = errors.New("store: fenced: this node no longer leads")

// Elector is a store shared by several nodes that can elect one of them
// to do what only one may do at a time (the lifecycle sweep).
type Elector interface {
	// Lead campaigns under name as id until ctx ends; each time this
	// node is elected it calls run with a context that ends when the
	// leadership is lost, and whose writes to the store are fenced: they
	// fail with ErrFenced once another node can lead.
	Lead(ctx context.Context, name, id string, run func(ctx context.Context))
}

// Lead runs run once for as long as ctx lasts: the store of one node has
// nothing to elect. A store that is an Elector elects.
func Lead(ctx context.Context, st Store, name, id string, run func(ctx context.Context)) {
	if e, ok := st.(Elector); ok {
		e.Lead(ctx, name, id, run)
		return
	}
	run(ctx)
}

type fenceKey struct{}

// fence is a leadership: the election key of this node and the revision
// it was created at, which only this node's live session keeps.
type fence struct {
	key string
	rev int64
}

func fenceOf(ctx context.Context) (fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(fence)
	return f, ok
}

// LeaseTTL is the election session's lease: a leader that stops
// (killed, cut off from etcd) is replaced within it.
const LeaseTTL = 10 * time.Second

// Lead implements Elector with etcd's election: one session (a lease of
// LeaseTTL) per campaign; run's context carries the fence (the leader
// key's create revision), which every Put and Delete under it compares.
func (s *Etcd) Lead(ctx context.Context, name, id string, run func(ctx context.Context)) {
	for ctx.Err() == nil {
		if err := s.leadOnce(ctx, name, id, run); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (s *Etcd) leadOnce(ctx context.Context, name, id string, run func(ctx context.Context)) error {
	// The session outlives ctx until Close, which revokes its lease at
	// once (a cancelled session could not, and the lease would linger).
	sess, err := s.session(ctx)
	if err != nil {
		return err
	}
	defer s.endSession(sess)
	e := concurrency.NewElection(sess, s.root+"elect/"+name)
	if err := e.Campaign(ctx, id); err != nil {
		return err
	}
	// Revision now covers every write committed before this leadership,
	// so run can wait until its node has followed them.
	if _, _, err := s.refresh(ctx); err != nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		_ = e.Resign(rctx)
		return err
	}
	rctx, cancel := context.WithCancel(context.WithValue(ctx, fenceKey{}, fence{key: e.Key(), rev: e.Rev()}))
	defer cancel()
	go func() {
		select {
		case <-sess.Done(): // the lease is gone: another node may lead
			cancel()
		case <-rctx.Done():
		}
	}()
	run(rctx)
	if ctx.Err() == nil && sess.Ctx().Err() == nil {
		// run returned on its own: give the leadership up at once.
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		_ = e.Resign(rctx)
	}
	return nil
}

// session is a session of LeaseTTL that outlives ctx until endSession.
// Its lease is granted under ctx and RequestTimeout, so a node cut off
// from etcd does not wait for ever to start one.
func (s *Etcd) session(ctx context.Context) (*concurrency.Session, error) {
	gctx, cancel := s.request(ctx)
	defer cancel()
	lease, err := s.cli.Grant(gctx, int64(LeaseTTL/time.Second))
	if err != nil {
		return nil, s.wrap(err)
	}
	return concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(LeaseTTL/time.Second)),
		concurrency.WithContext(context.WithoutCancel(ctx)))
}

// endSession revokes the session's lease at once — what it announced goes
// with it — waiting at most a second: a node cut off from etcd stops
// without waiting, and its lease runs out by itself.
func (s *Etcd) endSession(sess *concurrency.Session) {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = s.cli.Revoke(ctx, sess.Lease())
}

// fenced adds ctx's fence to a write's comparisons and reads the fence key
// when the write fails, so a lost fence is told from a lost race.
func fenced(ctx context.Context, cmps []clientv3.Cmp, orElse []clientv3.Op) ([]clientv3.Cmp, []clientv3.Op, *fence) {
	f, ok := fenceOf(ctx)
	if !ok {
		return cmps, orElse, nil
	}
	return append(cmps, clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)),
		append(orElse, clientv3.OpGet(f.key, clientv3.WithKeysOnly())), &f
}

// lostFence says whether a failed write's fence no longer holds.
func lostFence(f *fence, resp *clientv3.TxnResponse) error {
	if f == nil || len(resp.Responses) < 2 {
		return nil
	}
	r := resp.Responses[len(resp.Responses)-1].GetResponseRange()
	if r == nil || len(r.Kvs) != 1 || r.Kvs[0].CreateRevision != f.rev {
		return fmt.Errorf("%w (election key %s)", ErrFenced, f.key)
	}
	return nil
}
