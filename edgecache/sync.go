package edgecache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/btree"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

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
	// staging is a snapshot whose chunks are arriving. If the stream ends
	// first, the replica is as it was and the next Watch asks from the
	// same revision.
	var staging *snapshotStage
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return progressed, errors.New("watch: the central tier ended the stream")
		}
		if err != nil {
			if wire.IsNotEnrolled(err) {
				c.forget(err)
			}
			return progressed, fmt.Errorf("watch: %w", err)
		}
		if !progressed {
			c.connected.Store(true)
			progressed = true
			c.log.Info("following the central tier", "revision", ev.GetRevision(), "region", c.Region())
		}
		switch {
		case ev.GetSnapshot() != nil:
			if staging, err = c.snapshotChunk(staging, ev); err != nil {
				return progressed, err
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
			return progressed, fmt.Errorf("watch: an event at revision %d in the middle of the snapshot at revision %d", ev.GetRevision(), staging.revision)
		}
		if err := c.apply(ev); err != nil {
			return progressed, err
		}
	}
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
	c.stats.events.Add(1)
	ch := &change{revision: ev.GetRevision(), synced: c.now()}
	var keys []*replicaKey
	switch e := ev.GetEvent().(type) {
	case *kbv1.WatchEvent_Heartbeat:
		ch.lease = e.Heartbeat.GetLeaseExpires().AsTime()
	case *kbv1.WatchEvent_Nodes:
		ch.nodes = e.Nodes
	case *kbv1.WatchEvent_Policy:
		set, err := parsePolicy(e.Policy)
		if err != nil {
			// The central tier validated it; a policy this edge cannot
			// parse means a version mismatch. Keep the old one.
			return fmt.Errorf("policy %s from the central tier does not parse here: %w", e.Policy.GetHash(), err)
		}
		ch.policy = e.Policy
		c.mu.Lock()
		c.policy = set
		c.mu.Unlock()
	case *kbv1.WatchEvent_Key:
		rk, err := c.fromProto(e.Key)
		if err != nil {
			return fmt.Errorf("key event: %w", err)
		}
		keys = append(keys, rk)
		ch.keys = append(ch.keys, e.Key)
	case *kbv1.WatchEvent_DeletedKeyId:
		ch.deleted = []string{e.DeletedKeyId}
	default:
		return nil // an event this edge does not know: newer central; skip
	}
	return c.commit(ch, keys, nil)
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
	if st.set != nil {
		c.mu.Lock()
		c.policy = st.set
		c.mu.Unlock()
	}
	ch := &change{revision: st.revision, synced: c.now(), reset: true, staged: st.staged, policy: st.policy,
		nodes: &kbv1.ListNodesResponse{Nodes: st.nodes}, keys: snap.GetKeys()}
	return nil, c.commit(ch, nil, &st.fresh)
}

// commit applies a change to disk (one transaction), then to memory, and
// acknowledges it. keys are the keys it creates or changes; fresh, for a
// snapshot (ch.reset), is the whole new set of keys.
func (c *Cache) commit(ch *change, keys []*replicaKey, fresh *keySet) error {
	if ch.revision < c.Revision() {
		ch.revision = 0 // heartbeats carry the revision already applied
	}
	var me *placement.Node
	var topo []placement.Node
	if ch.nodes != nil {
		c.mu.RLock()
		prev, enrolled := c.me, c.enrolled
		c.mu.RUnlock()
		topo = wire.NodesFromProto(ch.nodes.GetNodes())
		me = c.selfFrom(topo, enrolled)
		// An admin changed this edge's region or labels: what it may hold
		// is decided again for every key.
		var was placement.Node // nil before the first restore: no region, no labels
		if prev != nil {
			was = *prev
		}
		ch.placement = was.Region != me.Region || !maps.Equal(was.Labels, me.Labels)
		if !ch.placement && prev != nil {
			// The same node: keeping it keeps every key's remembered
			// placement decision (holdMemo matches on it).
			me = prev
		}
	}
	ch.dropMaterial = c.materialToDrop(ch, keys, fresh, me)
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
	if ch.nodes != nil {
		c.nodes, c.topo, c.me = ch.nodes.GetNodes(), topo, me
	}
	if fresh != nil {
		c.keys, c.index = fresh.byID, fresh.index
		c.aliases = map[string]string{}
		for _, rk := range fresh.byID {
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
	if fresh != nil || len(keys) > 0 || len(ch.deleted) > 0 {
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
	if fresh != nil {
		for id := range fresh.byID {
			c.ops.Forget(id)
		}
	}
	c.ack()
	return nil
}

// materialToDrop lists the keys whose material must go: deleted keys, keys
// no longer enabled, keys placement no longer lets this edge hold (after a
// key or policy change, or a change of this edge's enrolled region or
// labels, me; the new policy is already in force), and versions below a
// raised minimum. Value 0 drops every version.
func (c *Cache) materialToDrop(ch *change, keys []*replicaKey, fresh *keySet, me *placement.Node) map[string]uint32 {
	drop := map[string]uint32{}
	for _, id := range ch.deleted {
		drop[id] = 0
	}
	check := keys
	if fresh != nil {
		check = slices.AppendSeq(check, maps.Values(fresh.byID))
	}
	if ch.policy != nil || ch.reset || ch.placement {
		present := map[string]bool{}
		for _, rk := range keys {
			present[rk.key.ID] = true
		}
		c.mu.RLock()
		for id, rk := range c.keys {
			switch {
			case present[id] || (fresh != nil && fresh.byID[id] != nil):
			case ch.reset:
				drop[id] = 0 // gone from the snapshot
			default:
				check = append(check, rk) // placement may have changed
			}
		}
		c.mu.RUnlock()
	}
	for _, rk := range check {
		var hold bool
		if me != nil {
			hold = placement.MayHold(rk.key, me, c.Policy().Current(), c.cfg.TrustDomain)
		} else {
			hold = c.mayHold(rk.key)
		}
		switch {
		case rk.key.State != managed.StateEnabled || !hold:
			drop[rk.key.ID] = 0
		case rk.key.MinDecryptionVersion > 1:
			drop[rk.key.ID] = rk.key.MinDecryptionVersion
		}
	}
	return drop
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
