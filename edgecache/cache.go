// Package edgecache is keybroker's edge tier: a replica of the central
// tier's key metadata, node inventory and policy, a cache of key material
// received sealed to this edge, and the KeyBroker API served from them —
// locally when placement lets the edge hold a key's material, forwarded to
// the central tier otherwise. It never imports a root of trust: an edge
// has none.
//
// # Replication
//
// Cache.Run registers the edge (its HPKE public key and address) and
// follows the central tier with Watch: a snapshot, or the
// events after the last revision applied, then every key change, inventory
// change, policy revision and heartbeat as it commits. Events are
// written to disk (replica.db) first, then applied in memory, then
// acknowledged, so ListNodes shows which revision every edge has reached.
// A lost stream is re-established with jittered exponential backoff and
// resumes from the last revision applied; a wait ends as soon as the
// connection to the central tier is ready again, so an edge follows a
// central tier that is back without sitting out a backoff grown during
// the outage.
//
// # Group commit
//
// A goroutine reads the stream ahead of the applier into a queue bounded
// at 1,000 events and 16 MiB. The applier takes the first event queued
// and whatever else is queued behind it, up to 1,000 events or 4 MiB,
// and commits them in one bbolt transaction (one fdatasync): with one
// transaction per event an edge applied about 500 changes a second,
// whatever the central tier made. The batch holds each key as its last
// event leaves it, the last lease, policy and inventory, the highest
// revision, and the material every event withdraws, each decided against
// the policy and inventory of the events before it: a key disabled and
// enabled again, or an edge moved out of a region and back, loses its
// material as it would have event by event. Only after the commit does
// memory change — revision, lease, policy, inventory, keys, material
// zeroed — under the lock, in one step, and is the revision acknowledged.
// A crash mid-batch, a failed commit or a stream that ends leaves the
// replica at the revision of the last batch committed: the next Watch
// resumes there. An event that cannot be applied (a key or policy that
// does not parse) ends the stream after the events before it commit. A
// snapshot's chunks are never batched: the events before a chunk commit
// first, and each chunk is staged as below. The queue's depth is
// keybroker_edge_events_queued; the transactions,
// keybroker_edge_replica_commits_total.
//
// # Snapshots in chunks
//
// Watch asks for a snapshot in chunks (WatchRequest.chunked_snapshot):
// the first chunk carries the policy and the inventory, every chunk some
// keys, all at one revision, and EdgeSnapshot.more says more follow. Each
// chunk's keys are parsed (a bad key ends the stream) into a new key set
// in memory and written, one transaction per chunk, to a staging bucket
// in replica.db; the replica in use is untouched meanwhile. The last
// chunk is applied in one transaction that moves the staging bucket in
// place of the keys bucket and writes the revision, policy and
// inventory; then the new key set replaces the old in memory under the
// lock, in O(1). A heartbeat between chunks is skipped: it would extend
// the lease on a replica known to be behind (the edge serves its old
// replica meanwhile, within the staleness window it already had). A
// stream lost mid-snapshot, another event between chunks or a chunk at
// another revision leaves the replica exactly as it was: the next Watch asks from the same revision
// and starts over, and the staging bucket is emptied by the next
// snapshot or at the next start. A central node that sends a snapshot in
// one message (more = false on the first) is served as before.
//
// # The key index
//
// Keys are held by id (a map, for requests) and in id order (a B-tree,
// github.com/google/btree) for ListKeys. A change updates both in
// O(log n) under the write lock and publishes a copy-on-write clone of
// the tree (O(1); the next change copies only the nodes it touches), so
// a ListKeys page walks a consistent view without holding the lock. The
// page token is the last id listed: a cursor, so keys created or deleted
// between pages never shift another key onto or off a page.
//
// # Enrollment
//
// An admin enrolls the edge at the central tier with its region and labels
// (keybroker node enroll); the edge never chooses them. Register answers
// them and the inventory carries them (and any later UpdateNode): placement
// here follows the inventory's entry for this edge, and a change of region
// or labels re-decides, and withdraws, the material of every key. An edge
// the central tier refuses as not enrolled — at Register, or as the end of
// its Watch stream when an admin removes it — forgets its replica: keys,
// material in memory and the sealed blobs on disk. It keeps trying to
// register, and starts over from a snapshot once enrolled again.
//
// # Material
//
// Material reaches the edge only sealed to its key (package sealed): with
// Watch for edges that prefetch, or on first use through FetchMaterial.
// The sealed form is kept on disk; the opened form lives only in memory, in
// a bounded LRU with a lifetime (internal/ttlcache), zeroed on eviction;
// each caller gets its own copy, made under the cache's lock, and a
// withdrawal while a fetch is in flight keeps the fetched material out of
// the cache. The material_misses_total counter counts one miss per request.
// Disabling a key,
// raising its minimum version, deleting it, or a placement change that
// excludes the edge removes both at once. Concurrent misses are coalesced:
// N cold requests for one version cost one FetchMaterial, and requests for
// one data key one unwrap (package managed).
//
// # Memory
//
// A key in memory is its model alone (about 500 bytes with two labels):
// material sealed to the edge stays in the key's record in replica.db and
// is read on a miss, opened material lives only in the bounded LRU
// above, and keys with the same labels share one labels map (up to 4,096
// distinct sets; intern.go), as they share their placement expression
// and root key names (package unique).
//
// The sealing key is sealing.key in DataDir. If it is lost, the replica
// is emptied at the next start, which then begins as a first start: the
// blobs on disk were sealed to the lost key.
//
// # Staleness
//
// Heartbeats extend the edge's lease. While disconnected the edge serves
// from its replica until the lease plus MaxStaleness has passed, then
// refuses every operation with Unavailable and says why, and zeroes the
// material in memory. A restarted edge serves from disk within the same
// window. MaxStaleness 0 refuses as soon as the lease runs out.
//
// # Serving
//
// The node's front-end (package rpc) hands every operation to package
// pipeline, which resolves the key in the replica once, authorizes the
// caller on it and checks it, and calls the edge's Performer
// (Cache.Performer) with that very key and the ciphertext header it parsed.
// Operations on keys whose material the edge may hold run here with the
// same code and checks as at the central tier (package managed), producing
// the same ciphertexts; the Performer is generic over the operation's
// result struct (run), local or forwarded alike. Backend-mode keys, keys placed elsewhere,
// GenerateRandom and every KeyAdmin call are forwarded, under the same
// request id. Verify, GetPublicKey, DescribeKey, ListKeys and LookupKey are
// answered from the replica, and so is ListNodes while the central tier is
// out of reach (marked from_replica). An edge that has lost the central
// tier leaves it out of LookupKey.
//
// # Forwarding
//
// The central tier performs a forwarded call only as the client that
// signed it for this edge (see package broker/server). So the edge forwards
// the client's own request (callinfo.IncomingCall, serialized
// deterministically), the client's forward proof from the
// x-keybroker-forward-proof-bin metadata, and the client's certificate
// chain from the TLS handshake. A call without a proof naming this edge is
// answered FailedPrecondition with the x-keybroker-forward-proof-required
// trailer and nothing is forwarded; the SDK and CLI then sign and retry.
// Calls made of parts — batches and ReEncrypt — are decided up front by
// Cache.UnaryInterceptor: served here whole, or forwarded whole, because a
// proof covers the call as the client made it, never a part the edge would
// cut out of it.
package edgecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/ttlcache"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// Config assembles a Cache.
type Config struct {
	// NodeID is the edge's name (its certificate's SPIFFE id names it).
	NodeID      string
	TrustDomain string
	// ExpectRegion and ExpectLabels, when set, are the region and labels
	// the edge expects to be enrolled with. An admin sets an edge's region
	// and labels at the central tier (KeyAdmin.EnrollNode); Register
	// answers them and the inventory carries them. If they differ from
	// these, the edge does not follow the central tier and says why.
	ExpectRegion string
	ExpectLabels map[string]string
	// Address is the host:port clients dial to reach this edge.
	Address string
	// Prefetch asks for the material of every key placed on the edge with
	// Watch; without it material is fetched on first use.
	Prefetch bool
	// MaxStaleness is how long past its lease the edge serves while
	// disconnected.
	MaxStaleness time.Duration
	// DataDir holds replica.db and sealing.key.
	DataDir string
	// Central is the connection to the central tier.
	Central grpc.ClientConnInterface
	// CentralRefused, if set, hears the address of a central node that
	// answered Unavailable to Register or ended the Watch stream with it
	// (a central cut off from its store, or losing its feed): with several
	// central nodes the edge moves to another rather than ask that one
	// again.
	CentralRefused func(addr string)
	// AccessKeyChanged, if set, hears the id of each AWS access key whose
	// record changed at the central tier (a revocation, most often), as
	// the Watch stream reports it, and "" when a snapshot replaces the
	// replica (any key may have changed meanwhile): the edge forgets the
	// signing keys it holds for it, or every one.
	AccessKeyChanged func(id string)
	// MaterialEntries and MaterialTTL bound the opened material in memory
	// (default 10000 versions, 1 hour).
	MaterialEntries int
	MaterialTTL     time.Duration
	// Reuse, ReuseEntries, UnwrapEntries and UnwrapTTL configure the
	// data-key caches (package managed).
	Reuse                       envelope.ReusePolicy
	ReuseEntries, UnwrapEntries int
	UnwrapTTL                   time.Duration
	// MaxDataKeysPerVersion bounds the data keys this edge wraps under one
	// key version (0: managed.DefaultMaxDataKeysPerVersion).
	MaxDataKeysPerVersion uint64
	// InitialBackoff and MaxBackoff bound reconnection delays (default
	// 100ms and 30s).
	InitialBackoff, MaxBackoff time.Duration
	Now                        func() time.Time
	Logger                     *slog.Logger
}

// Cache is an edge's replica and material cache.
type Cache struct {
	cfg   Config
	disk  *disk
	seal  *sealed.PrivateKey
	plain plainCache
	ops   *managed.Ops
	sync  kbv1.EdgeSyncClient
	log   *slog.Logger
	now   func() time.Time
	// spiffeID is this edge's SPIFFE id, the audience of the proofs it
	// forwards.
	spiffeID string
	// labelSets shares label maps among keys (intern.go).
	labelSets labelSets

	mu   sync.RWMutex
	keys map[string]*replicaKey
	// aliases indexes the keys' named aliases: alias name → key id
	// (aliases.go).
	aliases map[string]string
	// index orders the replica's keys by id, changed in place (O(log n)
	// per key) under mu; sorted is a copy-on-write clone of it taken
	// after each change, which readers page through without the lock.
	index, sorted *btree.BTreeG[*managed.Key]
	// nodes is the inventory as the central tier sent it (kept on disk,
	// served by ListNodes); topo is the same as placement sees it.
	nodes []*kbv1.Node
	topo  []placement.Node
	// me is this edge as the inventory and placement see it: its entry
	// in the inventory, else what Register answered, else no region and
	// no labels (placement that names a region then excludes the edge).
	me *placement.Node
	// enrolled is what the last Register answered.
	enrolled *placement.Node
	policy   *policy.Set
	revision uint64
	// advanced is closed (and replaced) whenever revision moves.
	advanced chan struct{}
	lease    time.Time
	// synced is when the last event from the central tier arrived (kept
	// on disk): how old the replica may be.
	synced time.Time

	connected atomic.Bool
	stale     atomic.Bool
	acked     chan struct{}
	stats     stats
}

// replicaKey is a key as the edge holds it in memory. The material
// sealed to this edge that Watch carried stays on disk, in the key's
// record in replica.db, and is read on a miss (sealedBlob): held here it
// cost more memory than the rest of the key.
type replicaKey struct {
	key *managed.Key
	// hold memoizes the placement decision for this key under one policy
	// set: a Cedar evaluation per request would cost more than the
	// encryption it guards.
	hold atomic.Pointer[holdMemo]
}

type holdMemo struct {
	set *policy.Set
	me  *placement.Node
	ok  bool
}

type stats struct {
	fetches, fetchRefusals, forwards, events, reconnects, wakes atomic.Uint64
	// queued counts the stream's results received and not yet applied.
	queued atomic.Int64
}

// Open loads the replica from DataDir (creating it and the sealing key on
// first start). The edge serves what the replica allows at once; Run
// connects it to the central tier.
func Open(c Config) (*Cache, error) {
	if c.NodeID == "" || c.TrustDomain == "" || c.DataDir == "" || c.Central == nil || c.Address == "" {
		return nil, errors.New("edgecache: node id, trust domain, address, data dir and a central connection are required")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaterialEntries <= 0 {
		c.MaterialEntries = 10_000
	}
	if c.MaterialTTL <= 0 {
		c.MaterialTTL = time.Hour
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = max(30*time.Second, c.InitialBackoff)
	}
	d, err := openDisk(c.DataDir)
	if err != nil {
		return nil, err
	}
	sk, err := loadSealingKey(c.DataDir)
	if err != nil {
		d.close()
		return nil, err
	}
	ec := &Cache{cfg: c, disk: d, seal: sk, plain: newPlainCache(c.MaterialEntries, c.MaterialTTL, c.Now),
		sync: kbv1.NewEdgeSyncClient(c.Central), log: c.Logger, now: c.Now, keys: map[string]*replicaKey{}, aliases: map[string]string{}, index: newIndex(),
		acked: make(chan struct{}, 1), advanced: make(chan struct{}),
		spiffeID: identity.Identity{TrustDomain: c.TrustDomain, Kind: identity.Edge, Name: c.NodeID}.String()}
	ec.ops, err = managed.New(managed.Config{Material: ec, Reuse: c.Reuse,
		ReuseEntries: c.ReuseEntries, UnwrapEntries: c.UnwrapEntries, UnwrapTTL: c.UnwrapTTL, Now: c.Now,
		MaxDataKeysPerVersion: c.MaxDataKeysPerVersion})
	if err != nil {
		d.close()
		return nil, err
	}
	if err := ec.restore(); err != nil {
		d.close()
		return nil, err
	}
	return ec, nil
}

// Close closes the replica. Material in memory is zeroed.
func (c *Cache) Close() error {
	c.plain.Close()
	return c.disk.close()
}

func (c *Cache) restore() error {
	readAhead(filepath.Join(c.cfg.DataDir, "replica.db"))
	s, keys, err := restoreKeys(c.disk, func(ek *kbv1.EdgeKey) (*replicaKey, error) {
		rk, err := c.fromProto(ek)
		if err != nil {
			return nil, fmt.Errorf("stored key: %w", err)
		}
		return rk, nil
	})
	if err != nil {
		return err
	}
	c.keys = make(map[string]*replicaKey, len(keys))
	for _, rk := range keys {
		c.keys[rk.key.ID] = rk
		c.index.ReplaceOrInsert(rk.key)
		c.indexAliasesLocked(rk.key)
	}
	c.revision, c.lease, c.synced = s.revision, s.lease, s.synced
	if s.policy != nil {
		if c.policy, err = parsePolicy(s.policy); err != nil {
			return fmt.Errorf("edgecache: stored policy: %w", err)
		}
	}
	if s.nodes != nil {
		c.nodes = s.nodes.GetNodes()
		c.topo = wire.NodesFromProto(c.nodes)
	}
	c.me = c.selfLocked()
	c.published()
	return nil
}

func parsePolicy(p *kbv1.EdgePolicy) (*policy.Set, error) {
	docs := map[string][]byte{}
	for _, f := range p.GetFiles() {
		docs[f.GetName()] = f.GetContent()
	}
	return policy.Parse(docs)
}

func (c *Cache) fromProto(ek *kbv1.EdgeKey) (*replicaKey, error) {
	k, err := wire.KeyFromProto(ek.GetMetadata(), ek.GetVersions())
	if err != nil {
		return nil, err
	}
	// The salt enters the data-key AAD, which the edge computes too.
	k.Salt = bytes.Clone(ek.GetSalt())
	if err := k.ValidateMeta(); err != nil {
		return nil, err
	}
	c.intern(k)
	return &replicaKey{key: k}, nil
}

// newIndex is an empty id-ordered key index. Degree 32: nodes of up to
// 63 keys, four levels for a million.
func newIndex() *btree.BTreeG[*managed.Key] {
	return btree.NewG(32, func(a, b *managed.Key) bool { return a.ID < b.ID })
}

// published lets readers see the index as it is now: a clone, O(1), that
// no later change alters (the next change copies the nodes it touches,
// O(log n)); the caller holds mu.
//
// Before, each change rebuilt and re-sorted the list of every key id
// under mu: most of an edge's CPU at ten thousand keys, and every request
// waited behind it.
func (c *Cache) published() { c.sorted = c.index.Clone() }

// Revision is the last revision applied.
func (c *Cache) Revision() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.revision
}

// waitRevision waits until the replica has applied rev, for at most
// limit and while ctx lasts, and reports whether it has.
func (c *Cache) waitRevision(ctx context.Context, rev uint64, limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		c.mu.RLock()
		cur, advanced := c.revision, c.advanced
		c.mu.RUnlock()
		if cur >= rev {
			return true
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
	}
}

// Connected reports whether the edge follows the central tier now.
func (c *Cache) Connected() bool { return c.connected.Load() }

// LeaseExpires is when the edge's lease runs out (zero before the first
// synchronisation).
func (c *Cache) LeaseExpires() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lease
}

// Policy is the replicated policy, for the gRPC layer. Before the first
// synchronisation it is empty: everything is denied.
func (c *Cache) Policy() pipeline.Policies { return policySource{c} }

type policySource struct{ c *Cache }

var emptyPolicy, _ = policy.Parse(map[string][]byte{})

func (p policySource) Current() *policy.Set {
	p.c.mu.RLock()
	defer p.c.mu.RUnlock()
	return p.c.policyLocked()
}

// policyLocked is the policy in force (none before the first sync); the
// caller holds mu.
func (c *Cache) policyLocked() *policy.Set {
	if c.policy == nil {
		return emptyPolicy
	}
	return c.policy
}

// Serving says whether the replica may be served from now, and if not why.
func (c *Cache) Serving() error {
	c.mu.RLock()
	lease, rev := c.lease, c.revision
	c.mu.RUnlock()
	now := c.now()
	if rev == 0 || lease.IsZero() {
		return status.Errorf(codes.Unavailable, "edge %s has not yet synchronised with the central tier", c.cfg.NodeID)
	}
	if deadline := lease.Add(c.cfg.MaxStaleness); !now.Before(deadline) {
		if c.stale.CompareAndSwap(false, true) {
			c.plain.Purge()
			c.ops.ForgetAll()
			c.log.Warn("replica stale: refusing to serve", "lease_expired", lease, "max_staleness", c.cfg.MaxStaleness)
		}
		return status.Errorf(codes.Unavailable, "edge %s has not heard from the central tier since its lease ran out at %s; max_staleness %s passed at %s: refusing to serve from a stale replica",
			c.cfg.NodeID, lease.UTC().Format(time.RFC3339), c.cfg.MaxStaleness, deadline.UTC().Format(time.RFC3339))
	}
	c.stale.Store(false)
	return nil
}

// replicaSource is the replica as a managed.KeySource.
type replicaSource struct{ c *Cache }

func (r replicaSource) Get(_ context.Context, id string) (*managed.Key, error) {
	if err := r.c.Serving(); err != nil {
		return nil, err
	}
	r.c.mu.RLock()
	defer r.c.mu.RUnlock()
	rk, ok := r.c.keys[id]
	if !ok {
		return nil, managed.Errorf(managed.ErrNotFound, "key %q does not exist", id)
	}
	return rk.key, nil
}

// self is this edge as the inventory and placement see it.
func (c *Cache) self() *placement.Node {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.me
}

// selfLocked works out c.me from the inventory and the last Register
// answer; c.mu is held.
func (c *Cache) selfLocked() *placement.Node { return c.selfFrom(c.topo, c.enrolled) }

// selfFrom is this edge as inventory nodes and the Register answer
// enrolled make it. It reads only the configuration, so it needs no lock
// and changes nothing.
func (c *Cache) selfFrom(nodes []placement.Node, enrolled *placement.Node) *placement.Node {
	me := &placement.Node{ID: c.cfg.NodeID, Kind: placement.KindEdge, Address: c.cfg.Address, Prefetch: c.cfg.Prefetch}
	for i := range nodes {
		if n := &nodes[i]; n.ID == c.cfg.NodeID && n.Kind == placement.KindEdge {
			me.Region, me.Labels = n.Region, n.Labels
			return me
		}
	}
	if enrolled != nil {
		me.Region, me.Labels = enrolled.Region, enrolled.Labels
	}
	return me
}

// Region is the region this edge is enrolled in, as last heard from the
// central tier ("" before it has heard).
func (c *Cache) Region() string {
	if me := c.self(); me != nil {
		return me.Region
	}
	return ""
}

// mayHold says whether placement lets this edge hold k's material.
func (c *Cache) mayHold(k *managed.Key) bool {
	c.mu.RLock()
	rk, set, me := c.keys[k.ID], c.policyLocked(), c.me
	c.mu.RUnlock()
	if rk == nil || rk.key != k {
		// Not the replica's current key (replaced meanwhile): decide
		// without remembering.
		return placement.MayHold(k, me, set, c.cfg.TrustDomain)
	}
	if m := rk.hold.Load(); m != nil && m.set == set && m.me == me {
		return m.ok
	}
	ok := placement.MayHold(k, me, set, c.cfg.TrustDomain)
	rk.hold.Store(&holdMemo{set: set, me: me, ok: ok})
	return ok
}

// errNotPlaced is a miss the central tier refused: the edge forwards.
var errNotPlaced = errors.New("edgecache: placement does not let this edge hold the key's material")

// Material gives a copy of version v's material: from memory, else opened
// from its sealed form (from Watch, or fetched earlier and kept on disk),
// else fetched from the central tier. Concurrent misses share one fetch;
// each caller waits under its own ctx.
func (c *Cache) Material(ctx context.Context, k *managed.Key, v uint32) (*secret.Bytes, error) {
	var buf [128]byte
	id := appendMaterialID(buf[:0], k, v)
	// The view of buf lives only for the call: the cache copies a key it
	// keeps. Every caller gets its own copy of the material.
	return c.plain.GetOrLoad(ctx, ttlcache.View[string](id), func(ctx context.Context) (*secret.Bytes, error) {
		blob := c.sealedBlob(k, v)
		fetched := false
		if blob == nil {
			var err error
			if blob, err = c.fetch(ctx, k.ID, v); err != nil {
				return nil, err
			}
			fetched = true
		}
		m, err := sealed.Open(c.seal, blob, c.cfg.NodeID, k.ID, v)
		if err != nil {
			return nil, fmt.Errorf("edgecache: opening the material of %s version %d: %w", k.ID, v, err)
		}
		if fetched {
			if err := c.disk.putMaterial(k, v, blob); err != nil {
				c.log.Warn("keeping fetched material on disk failed", "key", k.ID, "version", v, "err", err)
			}
		}
		return m, nil
	})
}

// sealedBlob is version v of k sealed to this edge, from replica.db:
// what Watch carried with the key's record, else what an earlier fetch
// kept; nil if neither. The record is used only if it is of k's
// incarnation (a key deleted and created again under its id has
// another salt).
func (c *Cache) sealedBlob(k *managed.Key, v uint32) []byte {
	if blob := c.disk.getSealed(k, v); blob != nil {
		return blob
	}
	return c.disk.getMaterial(k, v)
}

// fetch asks the central tier for material on a miss.
func (c *Cache) fetch(ctx context.Context, keyID string, v uint32) ([]byte, error) {
	c.stats.fetches.Add(1)
	resp, err := c.sync.FetchMaterial(callinfo.OutgoingRequestID(ctx), &kbv1.FetchMaterialRequest{KeyId: keyID, KeyVersion: v})
	if status.Code(err) == codes.PermissionDenied {
		c.stats.fetchRefusals.Add(1)
		return nil, errNotPlaced
	}
	if err != nil {
		return nil, err
	}
	return resp.GetSealedMaterial(), nil
}
