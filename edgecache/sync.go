package edgecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// Run follows the central tier until ctx ends: register, watch, apply,
// acknowledge; on any failure, back off (jittered, doubling up to
// MaxBackoff, reset after a session that made progress) and resume from the
// last revision applied. A connection that goes down and comes back up
// ends the wait at once (see waitRetry): the edge follows the central tier
// again as soon as it can reach it, not after its backoff has run out.
//
// It logs "connecting to the central tier" when it starts, "waiting for
// the central tier" while it has not followed it yet, and "lost the
// central tier" only after having followed it.
func (c *Cache) Run(ctx context.Context) error {
	go c.acker(ctx)
	go c.expire(ctx)
	c.log.Info("connecting to the central tier", "revision", c.Revision())
	backoff := c.cfg.InitialBackoff
	// wakeable: the connection coming back may end the next wait. Not
	// after a wake whose session failed anyway (a peer that accepts
	// connections and then refuses or drops them would make that a loop
	// without backoff), until a session makes progress.
	followed, wakeable, woken := false, true, false
	for {
		progressed, err := c.session(ctx)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		c.stats.reconnects.Add(1)
		switch {
		case progressed:
			backoff = c.cfg.InitialBackoff
			followed, wakeable = true, true
		case woken:
			wakeable = false
		}
		switch {
		case progressed:
			c.log.Warn("lost the central tier; reconnecting", "err", err, "backoff", backoff, "revision", c.Revision())
		case followed:
			c.log.Warn("reconnecting to the central tier failed; retrying", "err", err, "backoff", backoff, "revision", c.Revision())
		default:
			c.log.Warn("waiting for the central tier", "err", err, "backoff", backoff, "revision", c.Revision())
		}
		var ok bool
		woken, ok = c.waitRetry(ctx, backoff, wakeable)
		if !ok {
			return nil
		}
		if woken {
			backoff = c.cfg.InitialBackoff
		} else {
			backoff = min(backoff*2, c.cfg.MaxBackoff)
		}
	}
}

// connWatcher is the optional capability of a central connection whose
// state can be watched (a *grpc.ClientConn).
type connWatcher interface {
	GetState() connectivity.State
	WaitForStateChange(ctx context.Context, from connectivity.State) bool
	Connect()
}

// waitRetry waits a jittered backoff before the next session, or less:
// if the connection to the central tier goes down (or is down) and then
// becomes ready, the wait ends there and woken is true. A connection that
// stays ready (the central tier answers but refused the session) waits
// the backoff out, and so does every wait when wakeable is false. ok is
// false when ctx ended.
//
// Before, the loop slept its backoff whatever happened: after an outage
// of some seconds the backoff had grown, and edges took as long again to
// follow the central tier once it was back — while calls forwarded through
// them, which reconnect the same connection on demand, already succeeded.
func (c *Cache) waitRetry(ctx context.Context, backoff time.Duration, wakeable bool) (woken, ok bool) {
	t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
	defer t.Stop()
	var ready chan struct{}
	if cw, isWatcher := c.cfg.Central.(connWatcher); isWatcher && wakeable {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ready = make(chan struct{})
		go func() {
			down := false
			for {
				st := cw.GetState()
				switch {
				case st == connectivity.Ready && down:
					close(ready)
					return
				case st == connectivity.Idle:
					cw.Connect() // an idle connection does not try by itself
				}
				down = down || st != connectivity.Ready
				if !cw.WaitForStateChange(wctx, st) {
					return
				}
			}
		}()
	}
	select {
	case <-ctx.Done():
		return false, false
	case <-t.C:
		return false, true
	case <-ready:
		c.stats.wakes.Add(1)
		return true, true
	}
}

// session registers and follows one Watch stream. progressed reports
// whether any event arrived.
func (c *Cache) session(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var at peer.Peer
	defer func() {
		if status.Code(err) == codes.Unavailable && at.Addr != nil && c.cfg.CentralRefused != nil {
			c.cfg.CentralRefused(at.Addr.String())
		}
	}()
	reg, err := c.sync.Register(ctx, &kbv1.RegisterEdgeRequest{
		SealingPublicKey: c.seal.PublicKey(), Address: c.cfg.Address, Prefetch: c.cfg.Prefetch,
	}, grpc.Peer(&at))
	if err != nil {
		if wire.IsNotEnrolled(err) {
			c.forget(err)
		}
		return false, fmt.Errorf("register: %w", err)
	}
	if err := c.checkEnrolled(reg); err != nil {
		return false, err
	}
	c.mu.Lock()
	c.enrolled = &placement.Node{ID: c.cfg.NodeID, Kind: placement.KindEdge, Region: reg.GetRegion(), Labels: reg.GetLabels()}
	c.me = c.selfLocked()
	c.mu.Unlock()
	stream, err := c.sync.Watch(ctx, &kbv1.WatchRequest{FromRevision: c.Revision(), ChunkedSnapshot: true})
	if err != nil {
		return false, fmt.Errorf("watch: %w", err)
	}
	q := make(chan received, batchEvents)
	budget := semaphore.NewWeighted(queueBytes)
	receiving := make(chan struct{})
	go func() { defer close(receiving); receive(ctx, stream, q, budget, &c.stats.queued) }()
	defer func() {
		cancel()
		<-receiving
		// What the session leaves unapplied is no longer queued: the
		// next Watch resumes from the revision applied.
		c.stats.queued.Add(-int64(len(q)))
	}()
	// staging is a snapshot whose chunks are arriving. If the stream ends
	// first, the replica is as it was and the next Watch asks from the
	// same revision.
	var staging *snapshotStage
	for {
		var group []received
		select {
		case r := <-q:
			group = append(group, r)
		case <-ctx.Done():
			return progressed, ctx.Err()
		}
		// What else is queued joins it, up to a batch's bounds.
		size := group[0].size
	drain:
		for len(group) < batchEvents && size < batchBytes && group[len(group)-1].err == nil {
			select {
			case r := <-q:
				group = append(group, r)
				size += r.size
			default:
				break drain
			}
		}
		staging, err = c.applyGroup(group, staging, &progressed)
		budget.Release(size)
		c.stats.queued.Add(-int64(len(group)))
		if err != nil {
			return progressed, err
		}
	}
}

// The bounds of group commit: a batch is at most batchEvents events and
// about batchBytes of them (the event that crosses the bound is the
// last), and the events received but not yet applied are at most
// batchEvents and queueBytes (a snapshot chunk is under 4 MiB).
const (
	batchEvents = 1000
	batchBytes  = 4 << 20
	queueBytes  = 16 << 20
)

// received is one result of the stream's Recv, queued for the applier:
// an event (and its size, held from the queue's byte budget) or the
// error that ended the stream.
type received struct {
	ev   *kbv1.WatchEvent
	size int64
	err  error
}

// receive reads the Watch stream into q, ahead of the applier, within
// budget bytes, until the stream ends (its error is the last thing
// queued) or ctx does. queued counts what it adds; the applier takes
// off what it has applied.
func receive(ctx context.Context, stream grpc.ServerStreamingClient[kbv1.WatchEvent], q chan<- received, budget *semaphore.Weighted, queued *atomic.Int64) {
	for {
		ev, err := stream.Recv()
		r := received{ev: ev, err: err}
		if err == nil {
			r.size = min(int64(proto.Size(ev)), queueBytes)
			if budget.Acquire(ctx, r.size) != nil {
				return
			}
		}
		queued.Add(1)
		select {
		case q <- r:
		case <-ctx.Done():
			queued.Add(-1)
			return
		}
		if err != nil {
			return
		}
	}
}

// applyGroup applies events received together: the changes among them
// in one transaction (group commit), a snapshot's chunks each on its
// own as before. It returns the snapshot still arriving, if any. An
// event that cannot be applied, or the stream's end, still lets the
// events before it commit: the replica stays at the revision of the last
// event applied, and the next Watch resumes from there.
func (c *Cache) applyGroup(group []received, staging *snapshotStage, progressed *bool) (*snapshotStage, error) {
	b := c.newBatch()
	flush := func(cause error) error {
		if err := c.commit(b); err != nil {
			return err
		}
		b = c.newBatch()
		return cause
	}
	for _, r := range group {
		if r.err != nil {
			if err := flush(nil); err != nil {
				return staging, err
			}
			if r.err == io.EOF {
				return staging, errors.New("watch: the central tier ended the stream")
			}
			if wire.IsNotEnrolled(r.err) {
				c.forget(r.err)
			}
			return staging, fmt.Errorf("watch: %w", r.err)
		}
		ev := r.ev
		if !*progressed {
			c.connected.Store(true)
			*progressed = true
			c.log.Info("following the central tier", "revision", ev.GetRevision(), "region", c.Region())
		}
		var err error
		switch {
		case ev.GetSnapshot() != nil:
			if err := flush(nil); err != nil {
				return staging, err
			}
			if staging, err = c.snapshotChunk(staging, ev); err != nil {
				return staging, err
			}
			continue
		case staging == nil:
		case ev.GetHeartbeat() != nil:
			// Between chunks a heartbeat is skipped: the replica has not
			// reached its revision, and the lease it would extend lets
			// the edge serve the replica it has — which may still hold
			// keys withdrawn since — for as long as the snapshot takes.
			continue
		default:
			return staging, fmt.Errorf("watch: an event at revision %d in the middle of the snapshot at revision %d", ev.GetRevision(), staging.revision)
		}
		if err = c.fold(b, ev); err != nil {
			return staging, flush(err)
		}
	}
	return staging, flush(nil)
}

// checkEnrolled compares the region and labels the central tier enrolled
// this edge with to those its configuration expects, if any.
func (c *Cache) checkEnrolled(reg *kbv1.RegisterEdgeResponse) error {
	if c.cfg.ExpectRegion != "" && reg.GetRegion() != c.cfg.ExpectRegion {
		return fmt.Errorf("edge %s is enrolled in region %q but its configuration says region %q: fix the configuration (or leave region out), or move the edge with keybroker node update %s --region %s",
			c.cfg.NodeID, reg.GetRegion(), c.cfg.ExpectRegion, c.cfg.NodeID, c.cfg.ExpectRegion)
	}
	if len(c.cfg.ExpectLabels) > 0 && !maps.Equal(reg.GetLabels(), c.cfg.ExpectLabels) {
		return fmt.Errorf("edge %s is enrolled with labels %v but its configuration says labels %v: fix the configuration (or leave labels out), or change them with keybroker node update %s --replace-labels --label k=v",
			c.cfg.NodeID, reg.GetLabels(), c.cfg.ExpectLabels, c.cfg.NodeID)
	}
	return nil
}

// expire checks the staleness window every second while the edge does not
// follow the central tier, so that material and data keys leave memory
// when the window closes even if no request arrives to notice.
func (c *Cache) expire(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !c.connected.Load() {
				_ = c.Serving()
			}
		}
	}
}

// acker tells the central tier which revision is applied, coalescing
// bursts into one call with the latest revision.
func (c *Cache) acker(ctx context.Context) {
	var sent uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.acked:
		}
		rev := c.Revision()
		if rev == sent {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.sync.Acknowledge(actx, &kbv1.AcknowledgeRequest{AppliedRevision: rev})
		cancel()
		if err != nil {
			c.log.Debug("acknowledge failed", "revision", rev, "err", err)
			continue // the next event or reconnection acknowledges again
		}
		sent = rev
	}
}

func (c *Cache) ack() {
	select {
	case c.acked <- struct{}{}:
	default:
	}
}

// apply applies one event: to disk first (one transaction), then to
// memory, then acknowledges it.
func (c *Cache) apply(ev *kbv1.WatchEvent) error {
	if ev.GetSnapshot() != nil {
		st, err := c.snapshotChunk(nil, ev)
		if err == nil && st != nil {
			err = errors.New("snapshot: more chunks announced outside a Watch stream")
		}
		return err
	}
	b := c.newBatch()
	if err := c.fold(b, ev); err != nil {
		return err
	}
	return c.commit(b)
}

// batch is Watch events folded into one change of the replica, applied
// by commit in one transaction: the keys as the batch leaves them (the
// last event on an id wins), the last lease, policy and inventory, the
// highest revision, and the material every event withdraws. Placement
// is decided event by event against the policy and inventory the events
// before it brought (view), so the material dropped is what applying
// the events one at a time would drop.
type batch struct {
	ch     change
	events int // events folded into ch
	// The view: the policy in force (set, changed by the batch if
	// setChanged), this edge as placement sees it (me), the inventory
	// (topo, with ch.nodes) and what Register answered (enrolled).
	set        *policy.Set
	setChanged bool
	me         *placement.Node
	topo       []placement.Node
	enrolled   *placement.Node
	// keys the batch creates or changes, by id (protos: their records
	// for disk), and ids it deletes.
	keys    map[string]*replicaKey
	protos  map[string]*kbv1.EdgeKey
	deleted map[string]bool
	// fresh, for a snapshot (ch.reset), is the whole new set of keys.
	fresh *keySet
}

// newBatch is an empty batch over the replica as it is.
func (c *Cache) newBatch() *batch {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return &batch{set: c.policyLocked(), me: c.me, enrolled: c.enrolled, ch: change{dropMaterial: map[string]uint32{}}}
}

// fold adds one event to b. An event that cannot be applied leaves b as
// it was.
func (c *Cache) fold(b *batch, ev *kbv1.WatchEvent) error {
	c.stats.events.Add(1)
	switch e := ev.GetEvent().(type) {
	case *kbv1.WatchEvent_Heartbeat:
		b.ch.lease = e.Heartbeat.GetLeaseExpires().AsTime()
	case *kbv1.WatchEvent_Nodes:
		if c.setNodes(b, e.Nodes) {
			// An admin changed this edge's region or labels: what it
			// may hold is decided again for every key.
			c.checkAll(b)
		}
	case *kbv1.WatchEvent_Policy:
		if h := e.Policy.GetHash(); h != "" && b.set != nil && h == b.set.Hash() {
			// The set in force, sent again as every new stream begins:
			// deciding every key again under it would change nothing, and
			// at a million keys cost each reconnection a million Cedar
			// evaluations and every key's remembered decision.
			break
		}
		set, err := parsePolicy(e.Policy)
		if err != nil {
			// The central tier validated it; a policy this edge cannot
			// parse means a version mismatch. Keep the old one.
			return fmt.Errorf("policy %s from the central tier does not parse here: %w", e.Policy.GetHash(), err)
		}
		b.ch.policy, b.set, b.setChanged = e.Policy, set, true
		c.checkAll(b)
	case *kbv1.WatchEvent_Key:
		rk, err := c.fromProto(e.Key)
		if err != nil {
			return fmt.Errorf("key event: %w", err)
		}
		if b.keys == nil {
			b.keys, b.protos = map[string]*replicaKey{}, map[string]*kbv1.EdgeKey{}
		}
		id := rk.key.ID
		b.keys[id], b.protos[id] = rk, e.Key
		delete(b.deleted, id)
		c.check(b, rk)
	case *kbv1.WatchEvent_DeletedKeyId:
		id := e.DeletedKeyId
		if b.deleted == nil {
			b.deleted = map[string]bool{}
		}
		delete(b.keys, id)
		delete(b.protos, id)
		b.deleted[id] = true
		b.drop(id, 0)
	case *kbv1.WatchEvent_AccessKeyChanged:
		// Forgetting a signing key is always safe, so it is done at once
		// rather than after the batch commits.
		if f := c.cfg.AccessKeyChanged; f != nil {
			f(e.AccessKeyChanged)
		}
	default:
		return nil // an event this edge does not know: newer central; skip
	}
	b.ch.revision = max(b.ch.revision, ev.GetRevision())
	b.ch.synced = c.now()
	b.events++
	return nil
}

// setNodes puts the inventory nodes in b's view and reports whether this
// edge's region or labels changed.
func (c *Cache) setNodes(b *batch, nodes *kbv1.ListNodesResponse) (moved bool) {
	topo := wire.NodesFromProto(nodes.GetNodes())
	me := c.selfFrom(topo, b.enrolled)
	var was placement.Node // nil before the first restore: no region, no labels
	if b.me != nil {
		was = *b.me
	}
	moved = was.Region != me.Region || !maps.Equal(was.Labels, me.Labels)
	if !moved && b.me != nil {
		// The same node: keeping it keeps every key's remembered
		// placement decision (holdMemo matches on it).
		me = b.me
	}
	b.ch.nodes, b.topo, b.me = nodes, topo, me
	return moved
}

// check withdraws the material of rk as b's view leaves it, if any must
// go: every version of a key no longer enabled or that placement no
// longer lets this edge hold, the versions below a raised minimum.
func (c *Cache) check(b *batch, rk *replicaKey) {
	switch {
	case rk.key.State != managed.StateEnabled || !placement.MayHold(rk.key, b.me, b.set, c.cfg.TrustDomain):
		b.drop(rk.key.ID, 0)
	case rk.key.MinDecryptionVersion > 1:
		b.drop(rk.key.ID, rk.key.MinDecryptionVersion)
	}
}

// checkAll checks every key as b leaves the replica (after a policy or
// placement change).
func (c *Cache) checkAll(b *batch) {
	var check []*replicaKey
	c.mu.RLock()
	for id, rk := range c.keys {
		if b.keys[id] == nil && !b.deleted[id] {
			check = append(check, rk)
		}
	}
	c.mu.RUnlock()
	for _, rk := range check {
		c.check(b, rk)
	}
	for _, rk := range b.keys {
		c.check(b, rk)
	}
}

// drop adds to the material b withdraws: every version of key id (below
// 0), or the versions below below. Withdrawals add up: every version
// wins over some, and a higher minimum over a lower.
func (b *batch) drop(id string, below uint32) {
	if cur, ok := b.ch.dropMaterial[id]; ok && (cur == 0 || (below != 0 && below <= cur)) {
		return
	}
	b.ch.dropMaterial[id] = below
}

// snapshotStage is a snapshot arriving in chunks (EdgeSnapshot.more): the
// first chunk's revision, policy and nodes, and the keys so far — parsed
// into the replica's own form in memory, indexed as they come, and
// written to the staging area on disk (disk.stage). Only one chunk's
// protos are held at a time. The replica in use changes only when the
// last chunk arrives (snapshotChunk); until then it serves as it was.
type snapshotStage struct {
	revision uint64
	policy   *kbv1.EdgePolicy
	set      *policy.Set
	nodes    []*kbv1.Node
	staged   bool // chunks are on disk in the staging area
	fresh    keySet
}

// keySet is a replica's keys in memory: by id, and ordered by id.
type keySet struct {
	byID  map[string]*replicaKey
	index *btree.BTreeG[*managed.Key]
}

func newKeySet() keySet { return keySet{byID: map[string]*replicaKey{}, index: newIndex()} }

func (s keySet) put(rk *replicaKey) {
	s.byID[rk.key.ID] = rk
	s.index.ReplaceOrInsert(rk.key)
}

// snapshotChunk takes one chunk of a snapshot. st is the snapshot being
// received (nil for its first chunk); snapshotChunk returns the one to
// continue with, nil once the last chunk (more = false) is applied: the
// replica on disk replaced in one transaction (the staging area becomes
// the keys bucket), then the one in memory swapped under the lock. A
// snapshot in one message — from a central node that does not send
// chunks — is a first chunk that is also the last.
func (c *Cache) snapshotChunk(st *snapshotStage, ev *kbv1.WatchEvent) (*snapshotStage, error) {
	c.stats.events.Add(1)
	snap := ev.GetSnapshot()
	if st == nil {
		st = &snapshotStage{revision: ev.GetRevision(), nodes: snap.GetNodes(), fresh: newKeySet()}
		if p := snap.GetPolicy(); p != nil {
			set, err := parsePolicy(p)
			if err != nil {
				return nil, fmt.Errorf("policy %s from the central tier does not parse here: %w", p.GetHash(), err)
			}
			st.policy, st.set = p, set
		}
		if snap.GetMore() {
			if err := c.disk.stageBegin(); err != nil {
				return nil, fmt.Errorf("staging a snapshot: %w", err)
			}
			st.staged = true
		}
	} else if ev.GetRevision() != st.revision {
		return nil, fmt.Errorf("snapshot: a chunk at revision %d in a snapshot at revision %d", ev.GetRevision(), st.revision)
	}
	for _, ek := range snap.GetKeys() {
		rk, err := c.fromProto(ek)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		st.fresh.put(rk)
	}
	if snap.GetMore() {
		if err := c.disk.stage(snap.GetKeys()); err != nil {
			return nil, fmt.Errorf("staging a snapshot: %w", err)
		}
		return st, nil
	}
	b := c.newBatch()
	b.ch.revision, b.ch.synced, b.ch.reset, b.ch.staged, b.ch.policy, b.ch.keys = st.revision, c.now(), true, st.staged, st.policy, snap.GetKeys()
	if st.set != nil {
		b.set, b.setChanged = st.set, true
	}
	c.setNodes(b, &kbv1.ListNodesResponse{Nodes: st.nodes})
	b.fresh, b.events = &st.fresh, 1
	// Keys gone from the snapshot lose their material; the others are
	// checked against the snapshot's policy and inventory.
	c.mu.RLock()
	for id := range c.keys {
		if st.fresh.byID[id] == nil {
			b.drop(id, 0)
		}
	}
	c.mu.RUnlock()
	for _, rk := range st.fresh.byID {
		c.check(b, rk)
	}
	// The history the snapshot replaces may have revoked access keys.
	if f := c.cfg.AccessKeyChanged; f != nil {
		f("")
	}
	return nil, c.commit(b)
}

// commit applies b to disk (one transaction), then to memory — in that
// order, so memory never holds what a crash would lose — and
// acknowledges it. An empty batch commits nothing.
func (c *Cache) commit(b *batch) error {
	if b.events == 0 {
		return nil
	}
	ch := &b.ch
	if ch.revision < c.Revision() {
		ch.revision = 0 // heartbeats carry the revision already applied
	}
	var keys []*replicaKey
	if b.fresh == nil {
		// In id order: bbolt writes sorted keys with fewer page splits.
		for _, id := range slices.Sorted(maps.Keys(b.keys)) {
			keys = append(keys, b.keys[id])
			ch.keys = append(ch.keys, b.protos[id])
		}
		ch.deleted = slices.Sorted(maps.Keys(b.deleted))
	}
	if err := c.disk.apply(ch); err != nil {
		return fmt.Errorf("writing the replica: %w", err)
	}
	c.mu.Lock()
	if ch.revision != 0 && ch.revision != c.revision {
		c.revision = ch.revision
		close(c.advanced)
		c.advanced = make(chan struct{})
	}
	if !ch.lease.IsZero() {
		c.lease = ch.lease
	}
	c.synced = ch.synced
	if b.setChanged {
		c.policy = b.set
	}
	if ch.nodes != nil {
		c.nodes, c.topo, c.me = ch.nodes.GetNodes(), b.topo, b.me
	}
	if b.fresh != nil {
		c.keys, c.index = b.fresh.byID, b.fresh.index
		c.aliases = map[string]string{}
		for _, rk := range b.fresh.byID {
			c.indexAliasesLocked(rk.key)
		}
	}
	for _, rk := range keys {
		if old, ok := c.keys[rk.key.ID]; ok {
			c.unindexAliasesLocked(old.key)
		}
		c.keys[rk.key.ID] = rk
		c.index.ReplaceOrInsert(rk.key)
		c.indexAliasesLocked(rk.key)
	}
	for _, id := range ch.deleted {
		if rk, ok := c.keys[id]; ok {
			c.unindexAliasesLocked(rk.key)
			delete(c.keys, id)
			c.index.Delete(rk.key)
		}
	}
	if b.fresh != nil || len(keys) > 0 || len(ch.deleted) > 0 {
		c.published()
	}
	c.mu.Unlock()
	for id := range ch.dropMaterial {
		c.plain.forget(id)
		c.ops.Forget(id)
	}
	// Any change to a key (rotation, metadata) retires the data keys
	// cached for it; the material of unchanged versions stays.
	for _, rk := range keys {
		c.ops.Forget(rk.key.ID)
	}
	if b.fresh != nil {
		for id := range b.fresh.byID {
			c.ops.Forget(id)
		}
	}
	c.ack()
	return nil
}

// forget empties the replica — keys, material in memory and the sealed
// blobs on disk — because the central tier says this edge is not, or no
// longer, enrolled: an admin removed it. The edge keeps trying to
// register; once an admin enrolls it again it starts over from a snapshot.
// An edge that holds nothing (already forgotten, or never synchronised)
// has nothing to wipe: Register retries while it is not enrolled would
// otherwise rewrite and sync the replica and log an error every time.
func (c *Cache) forget(cause error) {
	c.mu.RLock()
	empty := c.revision == 0 && len(c.keys) == 0 && c.nodes == nil && c.enrolled == nil && c.lease.IsZero()
	c.mu.RUnlock()
	if empty && c.plain.Len() == 0 {
		return
	}
	c.log.Error("the central tier says this edge is not enrolled: forgetting every key and its material", "err", cause)
	if err := c.disk.wipe(); err != nil {
		c.log.Error("emptying the replica on disk failed", "err", err)
	}
	c.mu.Lock()
	ids := slices.Collect(maps.Keys(c.keys))
	clear(c.keys)
	c.nodes, c.topo, c.enrolled, c.revision, c.lease, c.synced = nil, nil, nil, 0, time.Time{}, time.Time{}
	c.me = c.selfLocked()
	close(c.advanced)
	c.advanced = make(chan struct{})
	c.index = newIndex()
	c.published()
	c.mu.Unlock()
	for _, id := range ids {
		c.plain.forget(id)
		c.ops.Forget(id)
	}
}
