package server

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"runtime"
	"sort"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keybroker/keybroker/accesskey"
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// Watch follows the registry for one edge. It starts with a snapshot
// (unless the edge resumes from a revision still in the store's history),
// then sends every key change — with the versions' material sealed to the
// edge where placement allows — every inventory change, every policy
// revision, and a heartbeat extending the edge's lease. The stream ends
// when the edge goes away or the feed is lost; the edge reconnects and
// resumes from the last revision it applied.
func (e *edgeSync) Watch(r *kbv1.WatchRequest, stream kbv1.EdgeSync_WatchServer) error {
	ctx := stream.Context()
	tctx, c, err := e.s.Begin(ctx, "Watch", "")
	if err != nil {
		return err
	}
	if err := edgeOnly(c); err != nil {
		return e.s.End(tctx, c, err)
	}
	// The audited gate: an edge that is not enrolled is refused, and the
	// refusal audited, before anything else. The record the stream follows
	// is read again in run, once the stream is findable and the feed
	// subscribed.
	if _, err := enrolledEdge(tctx, e.s, c); err != nil {
		return e.s.End(tctx, c, err)
	}
	c.Allow("")
	if err := e.s.End(tctx, c, nil); err != nil { // the stream's opening is audited
		return err
	}
	// One stream per edge: this one replaces (cancels) any other the edge
	// has open, and RemoveNode cancels it; either way the cause is what the
	// edge hears.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	id := c.Who().Name
	w := &watcher{s: e.s, stream: stream, id: id, td: c.Who().TrustDomain, rid: c.RequestID(), principal: c.Caller().Who.String()}
	ls := e.s.live.connect(id, time.Now().Add(e.s.lease), cancel)
	defer e.s.live.disconnect(id, ls)
	return w.run(ctx, r.GetFromRevision(), r.GetChunkedSnapshot())
}

// ended is what a stream whose ctx is done returns: the cause it was cut
// with (replaced by a newer stream, the edge removed), or nil when the
// edge went away.
func ended(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil {
		if _, ok := status.FromError(cause); ok {
			return cause
		}
	}
	return nil
}

type watcher struct {
	s      *Server
	stream kbv1.EdgeSync_WatchServer
	id     string // the edge's node id
	// node is the edge's current record: read once the feed is subscribed,
	// then replaced only by a later revision of it, never by one the
	// feed replays from history.
	node      *broker.Node
	td        string
	rid       string
	principal string
	policy    string // hash of the policy last sent
	sealed    sealCache

	// The sender (startSender): events to send, each Send's result, and
	// the deadline of the Send in flight.
	out      chan *kbv1.WatchEvent
	sent     chan error
	deadline *time.Timer
}

func (w *watcher) run(ctx context.Context, from uint64, chunked bool) error {
	// Arm the inventory signal before anything reads the inventory, so an
	// edge connecting or leaving between that read and the loop is not
	// missed.
	changed := w.s.live.Changed()
	w.startSender(ctx)
	st := w.s.svc.Registry().Store()
	var feed *store.Watcher
	var err error
	resumed := false
	// A revision the store has not made is not one this tier made (a
	// replica kept across a registry that was recreated): the edge gets a
	// snapshot, as it does for one compacted away. The store judges, not
	// Revision: etcd's revisions count every write, and an edge's resume
	// point may be a progress revision past the last object change, which
	// a central that has just started knows as its Revision.
	if from > 0 {
		feed, err = st.Watch(ctx, from)
		if err != nil && !errors.Is(err, store.ErrCompacted) && !errors.Is(err, store.ErrFuture) {
			return w.s.toStatus(err).Err()
		}
		resumed = feed != nil
	}
	if feed == nil {
		// Subscribe before the snapshot so no change falls between them;
		// events the snapshot already holds are skipped by revision.
		if feed, err = st.Watch(ctx, st.Revision()); err != nil {
			return w.s.toStatus(err).Err()
		}
	}
	// The record is read after the feed is subscribed (so a change to it
	// after this read reaches the loop) and after connect (RemoveNode
	// deletes the record, then cancels the stream it finds: a removal
	// before connect is seen here).
	if err := w.loadNode(ctx); err != nil {
		return err
	}
	if resumed {
		// Asking to resume from a revision says the edge has applied it:
		// that is its acknowledgement on this stream. The edge itself
		// acknowledges only revisions it applies next, so an edge that
		// resumed at a restarted central — which knew nothing of it — with
		// no change since was listed behind until the next change.
		w.s.live.ack(w.id, from, st.Revision())
	}
	if !resumed {
		if from, err = w.snapshot(ctx, chunked); err != nil {
			return err
		}
	}
	beat := time.NewTicker(w.s.beat)
	defer beat.Stop()
	if err := w.heartbeat(ctx, from); err != nil {
		return err
	}
	if resumed {
		// No snapshot: the inventory may have changed while the edge was
		// away.
		if err := w.sendNodes(ctx, from); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ended(ctx)
		case <-changed:
			// An edge connected or went away: lookups change.
			changed = w.s.live.Changed()
			if err := w.sendNodes(ctx, from); err != nil {
				return err
			}
		case ev, ok := <-feed.C():
			if !ok {
				if ctx.Err() != nil {
					return ended(ctx)
				}
				return status.Errorf(codes.Unavailable, "registry feed lost (%v): reconnect and resume from the last revision applied", feed.Err())
			}
			if ev.Revision <= from {
				continue
			}
			from = ev.Revision
			if ev.Type == store.Progress {
				continue // the next heartbeat carries it
			}
			if err := w.apply(ctx, ev); err != nil {
				return err
			}
		case <-beat.C:
			if err := w.heartbeat(ctx, from); err != nil {
				return err
			}
		}
	}
}

// loadNode reads the edge's current record. Only a record that is gone or
// not enrolled is not-enrolled (an honest edge wipes its replica on
// hearing it); any other error is the store's, and the edge retries.
func (w *watcher) loadNode(ctx context.Context) error {
	n, err := w.s.svc.Registry().Node(ctx, w.id)
	switch {
	case errors.Is(err, managed.ErrNotFound):
		return notEnrolled(w.id, "was removed")
	case err != nil:
		return w.s.toStatus(err).Err()
	case !n.Enrolled:
		return notEnrolled(w.id, "is not enrolled")
	case !n.IsRegistered():
		return status.Errorf(codes.FailedPrecondition, "edge %s must Register first", w.id)
	}
	w.node = n
	return nil
}

// DefaultSendTimeout bounds one Send on a Watch stream: an edge that does
// not read its stream for this long is cut off and listed as disconnected,
// rather than holding a goroutine, its sealed material and its place in
// LookupKey for ever.
const DefaultSendTimeout = 30 * time.Second

// startSender starts the stream's sender: one goroutine that makes every
// Send, and one timer that bounds each. SendMsg takes no context and a
// blocked one returns only when the handler does (grpc-go finishes the
// stream then; cancelling a context derived from the stream's does not
// unblock it), so the handler waits for the sender with the timer rather
// than calling Send itself. The sender ends with ctx.
func (w *watcher) startSender(ctx context.Context) {
	w.out, w.sent = make(chan *kbv1.WatchEvent), make(chan error, 1)
	w.deadline = time.NewTimer(w.s.sendTimeout)
	w.deadline.Stop()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-w.out:
				w.sent <- w.stream.Send(ev) // buffered: the handler may have gone
			}
		}
	}()
}

// send sends one event within the send deadline. A Send that does not
// complete in time, or a stream cut meanwhile (replaced, the edge
// removed), ends the stream: returning from the handler ends the gRPC
// stream, which unblocks the Send still in flight (the pattern grpc-go
// recommends, as SendMsg takes no context).
func (w *watcher) send(ctx context.Context, ev *kbv1.WatchEvent) error {
	select {
	case w.out <- ev:
	case <-ctx.Done():
		return cutWith(ctx)
	}
	w.deadline.Reset(w.s.sendTimeout)
	defer w.deadline.Stop()
	select {
	case err := <-w.sent:
		if err != nil {
			return status.Errorf(codes.Unavailable, "sending to edge: %v", err)
		}
		return nil
	case <-w.deadline.C:
		w.s.log.Warn("edge does not read its Watch stream; cutting it", "edge", w.id, "send_timeout", w.s.sendTimeout)
		return status.Errorf(codes.DeadlineExceeded, "the edge did not read its Watch stream within %v: stream cut", w.s.sendTimeout)
	case <-ctx.Done():
		return cutWith(ctx)
	}
}

// cutWith is what a send on a stream whose ctx is done returns.
func cutWith(ctx context.Context) error {
	if err := ended(ctx); err != nil {
		return err
	}
	return status.FromContextError(ctx.Err()).Err()
}

// heartbeat extends the lease and carries a new policy revision, if any.
func (w *watcher) heartbeat(ctx context.Context, rev uint64) error {
	// A central node cut off from its store extends no lease: the edge
	// would believe itself current on the word of a node that is not.
	// The stream ends and the edge follows another central.
	if err := w.s.svc.Registry().Current(); err != nil {
		return w.s.toStatus(err).Err()
	}
	if set := w.s.policy.Current(); set.Hash() != w.policy {
		if err := w.send(ctx, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Policy{Policy: edgePolicy(set)}}); err != nil {
			return err
		}
		w.policy = set.Hash()
	}
	lease := time.Now().Add(w.s.lease)
	w.s.live.beat(w.id, lease)
	return w.send(ctx, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Heartbeat{Heartbeat: &kbv1.Heartbeat{
		LeaseExpires: timestamppb.New(lease),
	}}})
}

func edgePolicy(set *policy.Set) *kbv1.EdgePolicy {
	p := &kbv1.EdgePolicy{Hash: set.Hash()}
	docs := set.Documents()
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p.Files = append(p.Files, &kbv1.PolicyFile{Name: n, Content: docs[n]})
	}
	return p
}

// Snapshot chunks: a chunked snapshot sends at most snapshotChunkKeys
// keys and at most snapshotChunkBytes per message (a single key larger
// than that goes alone) — under gRPC's default 4 MiB receive limit, so
// any client reads a chunk.
const (
	snapshotChunkKeys = 1000
	// snapshotScanPage is how many keys the snapshot reads from the
	// registry at a time.
	snapshotScanPage = 1000
)

var snapshotChunkBytes = 4<<20 - 64<<10 // a variable for tests

// snapshot sends the registry as of one revision, which it returns; the
// feed, subscribed before, resumes after it. An edge that asked for
// chunks (WatchRequest.chunked_snapshot) gets them: the registry is read
// a page at a time at one revision (Registry.Scan) and sent in chunks of
// at most snapshotChunkKeys keys and snapshotChunkBytes, in id
// order, the first with the policy and the inventory, every one but the
// last with more set — so neither this node nor the message holds every
// key. An edge that did not ask gets one message, as before.
func (w *watcher) snapshot(ctx context.Context, chunked bool) (uint64, error) {
	first := &kbv1.EdgeSnapshot{Policy: edgePolicy(w.s.policy.Current())}
	w.policy = first.Policy.Hash
	nodes, err := w.nodes(ctx)
	if err != nil {
		return 0, err
	}
	first.Nodes = nodes.Nodes
	snap, size := first, proto.Size(first)
	var rev uint64
	err = w.s.svc.Registry().Scan(ctx, snapshotScanPage, func(p broker.KeyPage) error {
		rev = p.Revision
		plans := make([]*keyPlan, len(p.Keys))
		for i, k := range p.Keys {
			plans[i] = w.plan(k, true)
		}
		if err := w.sealPlans(ctx, plans); err != nil {
			return err
		}
		for _, pl := range plans {
			ek := w.finish(pl)
			n := proto.Size(ek) + 8 // and the field's tag and length
			if chunked && len(snap.Keys) > 0 && (len(snap.Keys) == snapshotChunkKeys || size+n > snapshotChunkBytes) {
				snap.More = true
				if err := w.send(ctx, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}}); err != nil {
					return err
				}
				snap, size = &kbv1.EdgeSnapshot{}, 0
			}
			snap.Keys = append(snap.Keys, ek)
			size += n
		}
		return nil
	})
	if err != nil {
		if _, ok := status.FromError(err); ok { // the stream's (send, edgeKey)
			return 0, err
		}
		if errors.Is(err, store.ErrCompacted) {
			// etcd compacted the snapshot's revision while a slow edge
			// read it: the edge reconnects for a new one.
			return 0, status.Errorf(codes.Unavailable, "snapshot overtaken by the store's compaction (%v): reconnect for a new snapshot", err)
		}
		return 0, w.s.toStatus(err).Err()
	}
	return rev, w.send(ctx, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}})
}

func (w *watcher) apply(ctx context.Context, ev store.Event) error {
	switch ev.Object.Kind {
	case broker.KindKeys:
		if ev.Type == store.Delete {
			w.sealed.drop(ev.Object.ID)
			return w.send(ctx, &kbv1.WatchEvent{Revision: ev.Revision, Event: &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: ev.Object.ID}})
		}
		k, current, err := w.eventKey(ctx, ev)
		if err != nil {
			return w.s.toStatus(err).Err()
		}
		ek, err := w.edgeKey(ctx, k, current)
		if err != nil {
			return err
		}
		return w.send(ctx, &kbv1.WatchEvent{Revision: ev.Revision, Event: &kbv1.WatchEvent_Key{Key: ek}})
	case broker.KindNodes:
		if ev.Object.ID == w.id && ev.Revision > w.node.Revision {
			// Placement follows the edge's enrolled region and labels; a
			// removed edge's stream ends here too (RemoveNode cuts it
			// first, at once). A replayed event older than the record read
			// at the start is history: placement never moves back to it.
			if ev.Type == store.Delete {
				return notEnrolled(w.id, "was removed")
			}
			n, err := broker.DecodeNode(ev.Object)
			if err != nil {
				return w.s.toStatus(err).Err()
			}
			if !n.Enrolled {
				return notEnrolled(w.id, "is not enrolled")
			}
			w.node = n
		}
		return w.sendNodes(ctx, ev.Revision)
	case broker.KindAccessKeys:
		// Whatever changed (a revocation, most often), the edge asks
		// again for the key's signing keys at its next use. Only the id
		// reaches it, and only of a key scoped to it — the only keys it
		// holds signing keys of — so an edge does not learn which other
		// access keys exist or change. A record that cannot be read is
		// reported: forgetting is always safe.
		if ev.Type != store.Delete {
			if r, err := accesskey.Decode(ev.Object.Value); err == nil && !r.ScopedTo(w.id) {
				return nil
			}
		}
		return w.send(ctx, &kbv1.WatchEvent{Revision: ev.Revision, Event: &kbv1.WatchEvent_AccessKeyChanged{AccessKeyChanged: ev.Object.ID}})
	}
	return nil
}

// eventKey is the key a key event wrote, and whether that record is still
// the key's current one. It is the registry's in-memory copy when that is
// at the event's revision — as it is once the write that made the event
// has returned — so that every edge's stream does not decode the same
// record again; otherwise the store says whether the event's record is
// current. A resumed stream replays history: a record since replaced
// (disabled, deleted, placed elsewhere, its minimum version raised) must
// not release material, so only a current record carries any. Keys are
// read-only once the registry holds them.
func (w *watcher) eventKey(ctx context.Context, ev store.Event) (*managed.Key, bool, error) {
	if k, err := w.s.svc.Registry().Get(ctx, ev.Object.ID); err == nil && k.Revision == ev.Revision {
		return k, true, nil
	}
	o, err := w.s.svc.Registry().Store().Get(ctx, broker.KindKeys, ev.Object.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	current := err == nil && o.Revision == ev.Revision
	k, err := broker.DecodeKey(ev.Object)
	return k, current, err
}

// sendNodes sends the inventory as it is now.
func (w *watcher) sendNodes(ctx context.Context, rev uint64) error {
	nodes, err := w.nodes(ctx)
	if err != nil {
		return err
	}
	return w.send(ctx, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Nodes{Nodes: nodes}})
}

func (w *watcher) nodes(ctx context.Context) (*kbv1.ListNodesResponse, error) {
	nodes, err := w.s.inventory(ctx)
	if err != nil {
		return nil, w.s.toStatus(err).Err()
	}
	return &kbv1.ListNodesResponse{Nodes: nodes}, nil
}

// edgeKey is a key as this edge sees it: metadata, public keys, and — for
// an edge that prefetches — the material of every version still
// decryptable, sealed to the edge, when k is the key's current record, the
// key is enabled, has material, and placement lets the edge hold it. A
// record that is not current goes as metadata only: the edge fetches on
// use, and FetchMaterial judges the key as it is.
func (w *watcher) edgeKey(ctx context.Context, k *managed.Key, current bool) (*kbv1.EdgeKey, error) {
	p := w.plan(k, current)
	for i := range p.blobs {
		blob, err := w.seal(ctx, k, p.ek.Versions[p.blobs[i].at].GetVersion())
		if err != nil {
			return nil, w.s.toStatus(err).Err()
		}
		p.blobs[i].blob = blob
	}
	return w.finish(p), nil
}

// keyPlan is an EdgeKey being built: the versions whose material goes
// sealed from the stream's cache, and those still to be sealed (blobs).
type keyPlan struct {
	k     *managed.Key
	ek    *kbv1.EdgeKey
	held  map[uint32]sealedVersion // nil: the edge holds none of k
	blobs []toSeal
}

// toSeal is a version of a keyPlan's key to seal: at indexes ek.Versions.
type toSeal struct {
	at   int
	blob []byte
}

// plan decides what of k goes to the edge (the hold decision and its
// audit line come first, before any material is derived) and takes what
// the stream has sealed before from its cache. It runs on the watcher's
// goroutine.
func (w *watcher) plan(k *managed.Key, current bool) *keyPlan {
	p := &keyPlan{k: k, ek: &kbv1.EdgeKey{Metadata: wire.KeyToProto(k), Salt: k.Salt}}
	// Material goes with Watch only to edges that prefetch; the others
	// fetch it on first use.
	hold := current && w.node.Prefetch && k.State == managed.StateEnabled && k.Mode.HoldsMaterial()
	if hold {
		d := placement.Hold(k, w.node.Placement(), w.s.policy.Current(), w.td)
		// No audit line, no material: the version goes without it and the
		// edge fetches it on use (FetchMaterial audits, or refuses).
		hold = d.Allowed && w.auditHold(k, d.PolicyID())
	}
	w.sealed.sealingTo(w.node.SealingKey)
	if !hold {
		w.sealed.drop(k.ID)
	}
	for _, v := range k.Versions {
		ev := &kbv1.EdgeKeyVersion{Version: v.Version, PublicKey: v.PublicKey}
		if hold && v.Version >= k.MinDecryptionVersion {
			if p.held == nil {
				p.held = map[uint32]sealedVersion{}
			}
			if sv, ok := w.sealed.get(k, v); ok {
				p.held[v.Version] = sv
				ev.SealedMaterial = sv.blob
			} else {
				p.blobs = append(p.blobs, toSeal{at: len(p.ek.Versions)})
			}
		}
		p.ek.Versions = append(p.ek.Versions, ev)
	}
	return p
}

// finish puts the sealed blobs in the EdgeKey and the stream's cache. It
// runs on the watcher's goroutine.
func (w *watcher) finish(p *keyPlan) *kbv1.EdgeKey {
	for _, b := range p.blobs {
		ev := p.ek.Versions[b.at]
		ev.SealedMaterial = b.blob
		v := p.k.Version(ev.GetVersion())
		p.held[v.Version] = sealedVersion{keyCreated: p.k.Created, created: v.Created, root: v.RootKey, incarnation: p.k.Incarnation(), blob: b.blob}
	}
	if p.held != nil {
		w.sealed.put(p.k.ID, p.held)
	}
	return p.ek
}

// sealPlans seals every version the plans still need, on up to GOMAXPROCS
// goroutines: sealing is an HPKE encapsulation (about 0.2 ms of CPU) after
// a root-of-trust call, and a new prefetching edge's snapshot needs one
// per key version, so one goroutine bounded a snapshot at about 5,000 keys
// a second whatever the machine. Each call is charged to the edge's budget
// and waits for it as seal does; the first error ends them all.
func (w *watcher) sealPlans(ctx context.Context, plans []*keyPlan) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for _, p := range plans {
		for i := range p.blobs {
			g.Go(func() error {
				blob, err := w.seal(gctx, p.k, p.ek.Versions[p.blobs[i].at].GetVersion())
				if err != nil {
					return w.s.toStatus(err).Err()
				}
				p.blobs[i].blob = blob
				return nil
			})
		}
	}
	return g.Wait()
}

// sealWaitMax bounds the pause between attempts to seal while the edge's
// budget of calls to the roots of trust is spent.
const sealWaitMax = 250 * time.Millisecond

// seal seals version v of k's material to the edge. Deriving the material
// is a call to a root of trust charged to the edge's budget, and a
// snapshot of more keys than the budget's burst spends it: the stream used
// to fail with ResourceExhausted, the edge reconnected for a new snapshot
// and the central sealed again every key it had sent, so that a new edge
// took several snapshots' sealing to synchronise (five at 10,000 keys) and
// at a million keys might never finish. The stream waits for the budget
// instead, pausing 2 ms doubling to sealWaitMax: the budget still bounds
// the edge's calls, and the snapshot goes at its rate. Any other error, or
// the stream's end, returns.
func (w *watcher) seal(ctx context.Context, k *managed.Key, v uint32) ([]byte, error) {
	pause := 2 * time.Millisecond
	for {
		blob, err := w.s.svc.SealMaterial(ctx, w.node, k, v)
		if !errors.Is(err, managed.ErrResourceExhausted) {
			return blob, err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		pause = min(2*pause, sealWaitMax)
	}
}

// maxSealedBlobs bounds a stream's sealCache: about 1.2 KB each (an
// ML-KEM-768 and X25519 encapsulation and 48 bytes of AEAD output), so
// under 3 MB per edge.
const maxSealedBlobs = 2048

// sealCache keeps the material a Watch stream has sealed to its edge, by
// key, so that a key event seals only the versions the stream has not
// sealed before and sends the others as sealed then. Every key event
// carries the material of every version the edge may hold, and sealing
// is an HPKE encapsulation (about 130 µs), so without it each rotation
// cost versions × edges encapsulations — seconds for a key with a hundred
// versions and fifty edges — and its propagation grew with every rotation.
//
// A blob stays good while the edge's sealing key and the version's
// material stay the same: versions are matched on their key's and their
// own creation time, root key and salt (a key deleted and created again under
// the same id is a new key), and a new sealing key empties the cache.
// Keys the edge may no longer hold, deleted keys and versions below the
// minimum leave it with the next event. Least recently sent keys are
// evicted past maxSealedBlobs. A stream's watcher runs on one goroutine:
// no locking.
type sealCache struct {
	to    []byte                   // the sealing key the blobs are sealed to
	keys  map[string]*list.Element // key id → element of lru holding *sealedKey
	lru   list.List                // most recently sent first
	blobs int
}

type sealedKey struct {
	id       string
	versions map[uint32]sealedVersion
}

type sealedVersion struct {
	keyCreated, created time.Time
	root                string
	incarnation         string // the key's salt (Key.Incarnation)
	blob                []byte
}

// sealingTo says which sealing key the blobs about to be got and put are
// sealed to; a new one empties the cache.
func (c *sealCache) sealingTo(to []byte) {
	if c.keys == nil || !bytes.Equal(c.to, to) {
		c.keys, c.to, c.blobs = map[string]*list.Element{}, bytes.Clone(to), 0
		c.lru.Init()
	}
}

// get returns version v of k, if cached.
func (c *sealCache) get(k *managed.Key, v managed.Version) (sealedVersion, bool) {
	e, ok := c.keys[k.ID]
	if !ok {
		return sealedVersion{}, false
	}
	sv, ok := e.Value.(*sealedKey).versions[v.Version]
	if !ok || !sv.keyCreated.Equal(k.Created) || !sv.created.Equal(v.Created) || sv.root != v.RootKey || sv.incarnation != k.Incarnation() {
		return sealedVersion{}, false
	}
	return sv, true
}

// put records the versions of key id just sent, replacing what was
// cached for the key.
func (c *sealCache) put(id string, versions map[uint32]sealedVersion) {
	c.drop(id)
	c.keys[id] = c.lru.PushFront(&sealedKey{id: id, versions: versions})
	c.blobs += len(versions)
	for c.blobs > maxSealedBlobs && c.lru.Len() > 1 {
		c.drop(c.lru.Back().Value.(*sealedKey).id)
	}
}

// drop forgets key id.
func (c *sealCache) drop(id string) {
	if e, ok := c.keys[id]; ok {
		c.blobs -= len(e.Value.(*sealedKey).versions)
		c.lru.Remove(e)
		delete(c.keys, id)
	}
}

// auditHold records that a key's material goes to the edge, and says
// whether it could: material whose audit line failed is not sent.
func (w *watcher) auditHold(k *managed.Key, policyID string) bool {
	rec := audit.Record{RequestID: w.rid, Principal: w.principal, Node: w.s.node, Operation: audit.Operation(policy.HoldMaterial),
		Key: k.ID, Version: k.Primary, Decision: audit.Allow, PolicyID: policyID, Outcome: "ok", Detail: "sealed to the edge by Watch"}
	if err := w.s.audit.Append(rec); err != nil {
		w.s.log.Error("audit append failed; withholding the key's material from the edge", "edge", w.id, "key", k.ID, "err", err)
		return false
	}
	return true
}
