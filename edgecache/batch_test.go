package edgecache

// Group commit: the Watch events an edge has received together are
// applied in one transaction on replica.db, and leave the replica as
// applying them one at a time would.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// Three policies: edges in region eu may hold every key's material,
// every edge may, or every edge but not the material of team t0's keys.
var (
	holdNotT0 = &kbv1.EdgePolicy{Hash: "not-t0", Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte(testPolicy +
		`permit (principal is Edge, action == Action::"HoldMaterial", resource) when { resource.hasTag("team") && resource.getTag("team") != "t0" };`)}}}
	holdInEU = &kbv1.EdgePolicy{Hash: "eu", Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte(testPolicy +
		`permit (principal is Edge, action == Action::"HoldMaterial", resource) when { principal.region == "eu" };`)}}}
	holdAnywhere = &kbv1.EdgePolicy{Hash: "any", Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte(testPolicy +
		`permit (principal is Edge, action == Action::"HoldMaterial", resource);`)}}}
)

// batchSnapshot is a snapshot at revision 10 of keys 0..49, each with
// versions 1..3, under holdInEU, edge-1 enrolled in eu.
func batchSnapshot() []*kbv1.WatchEvent {
	snap := &kbv1.EdgeSnapshot{Policy: holdInEU, Nodes: inventory("eu")}
	for i := range 50 {
		snap.Keys = append(snap.Keys, changedKey(i, 10, 3, 1, managed.StateEnabled))
	}
	hb := heartbeat(10)
	hb.GetHeartbeat().LeaseExpires = timestamppb.New(snapshotLease)
	return []*kbv1.WatchEvent{{Revision: 10, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}}, hb}
}

// snapshotLease is the lease batchSnapshot's heartbeat grants, the same
// in every replica compared.
var snapshotLease = time.Now().Add(time.Hour).Truncate(time.Second)

func inventory(region string) []*kbv1.Node {
	return []*kbv1.Node{{NodeId: "edge-1", Kind: "edge", Region: region, Enrolled: true}, {NodeId: "edge-2", Kind: "edge", Region: "us", Enrolled: true}}
}

// changedKey is key i at rev with versions 1..versions (the last
// primary), a minimum decryption version and a state.
func changedKey(i int, rev uint64, versions, minVersion uint32, state managed.State) *kbv1.EdgeKey {
	created := time.Unix(1_700_000_000, 0)
	k := &managed.Key{ID: fmt.Sprintf("key-%07d", i), Type: managed.AES256GCM, Mode: managed.ModeDerive,
		State: state, Primary: versions, MinDecryptionVersion: minVersion, Labels: map[string]string{"owner": "app", "team": fmt.Sprintf("t%d", i%3)},
		Salt: bytes.Repeat([]byte{byte(i)}, 32), Created: created, Updated: created, Revision: rev}
	ek := &kbv1.EdgeKey{Salt: k.Salt}
	for v := uint32(1); v <= versions; v++ {
		k.Versions = append(k.Versions, managed.Version{Version: v, RootKey: "softkms:prf", Created: created})
		ek.Versions = append(ek.Versions, &kbv1.EdgeKeyVersion{Version: v, SealedMaterial: bytes.Repeat([]byte{byte(i), byte(v)}, 60)})
	}
	ek.Metadata = wire.KeyToProto(k)
	return ek
}

// changeScript is n events from revision 11 on, drawn with seed: key
// changes (rotations, raised minimums, disabling and enabling again,
// creations), deletions (some of keys created again after), heartbeats,
// inventory events changing edge-1's labels, and policy events; with
// moveAt ≥ 0, event moveAt moves edge-1 to region us, and the next
// inventory event back to eu. The last event puts in force the policy
// that withdraws team t0's material.
func changeScript(seed uint64, n, moveAt int) []*kbv1.WatchEvent {
	r := rand.New(rand.NewPCG(seed, 17))
	var out []*kbv1.WatchEvent
	for i := range n {
		rev := uint64(11 + i)
		ev := &kbv1.WatchEvent{Revision: rev}
		switch p := r.IntN(100); {
		case i == n-1:
			ev.Event = &kbv1.WatchEvent_Policy{Policy: holdNotT0}
		case p < 55 && i != moveAt:
			versions := 1 + r.Uint32N(4)
			state := managed.StateEnabled
			if r.IntN(8) == 0 {
				state = managed.StateDisabled
			}
			minVersion := uint32(1)
			if r.IntN(4) == 0 {
				minVersion += r.Uint32N(versions)
			}
			ev.Event = &kbv1.WatchEvent_Key{Key: changedKey(r.IntN(60), rev, versions, minVersion, state)}
		case p < 75 && i != moveAt:
			ev.Event = &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: fmt.Sprintf("key-%07d", r.IntN(60))}
		case p < 88 && i != moveAt:
			ev = heartbeat(rev)
		case i == moveAt:
			ev.Event = &kbv1.WatchEvent_Nodes{Nodes: &kbv1.ListNodesResponse{Nodes: inventory("us")}}
		case p < 94:
			nodes := inventory("eu")
			nodes[0].Labels = map[string]string{"tier": []string{"a", "b"}[r.IntN(2)]}
			ev.Event = &kbv1.WatchEvent_Nodes{Nodes: &kbv1.ListNodesResponse{Nodes: nodes}}
		default:
			ev.Event = &kbv1.WatchEvent_Policy{Policy: []*kbv1.EdgePolicy{holdInEU, holdAnywhere, holdNotT0}[r.IntN(3)]}
		}
		out = append(out, ev)
	}
	return out
}

// putFetched stores fetched material for versions 1..4 of every key of
// the replica, as misses would have: what withdrawals must drop.
func putFetched(t *testing.T, ec *Cache) {
	t.Helper()
	ec.mu.RLock()
	keys := make([]*managed.Key, 0, len(ec.keys))
	for _, rk := range ec.keys {
		keys = append(keys, rk.key)
	}
	ec.mu.RUnlock()
	for _, k := range keys {
		for v := uint32(1); v <= 4; v++ {
			must(t, "putMaterial", ec.disk.putMaterial(k, v, []byte("sealed")))
		}
	}
}

// oneAtATime is a replica that applied the snapshot, the fetched
// material, then events one at a time: what a batch must leave.
func oneAtATime(t *testing.T, events []*kbv1.WatchEvent) *Cache {
	t.Helper()
	ec, err := Open(Config{NodeID: "edge-1", TrustDomain: testTD, Address: "127.0.0.1:1", DataDir: t.TempDir(),
		Central: newFakeConn(connectivity.Ready), MaxStaleness: time.Hour})
	must(t, "Open", err)
	t.Cleanup(func() { ec.Close() })
	for _, ev := range batchSnapshot() {
		must(t, "apply", ec.apply(ev))
	}
	putFetched(t, ec)
	for _, ev := range events {
		must(t, "apply", ec.apply(ev))
	}
	return ec
}

// replica is what an edge holds, in memory and on disk, for comparison.
type replica struct {
	Revision     uint64
	Lease        time.Time
	Region       string
	Policy       string
	MemKeys      map[string]*kbv1.KeyMetadata
	DiskKeys     map[string]*kbv1.EdgeKey
	DiskRevision uint64
	DiskLease    time.Time
	DiskPolicy   string
	DiskNodes    *kbv1.ListNodesResponse
	Material     []string // the material bucket's entries
}

func replicaOf(t *testing.T, ec *Cache) replica {
	t.Helper()
	r := replica{MemKeys: map[string]*kbv1.KeyMetadata{}, DiskKeys: map[string]*kbv1.EdgeKey{}}
	ec.mu.RLock()
	r.Revision, r.Lease, r.Region = ec.revision, ec.lease, ec.me.Region
	for id, rk := range ec.keys {
		r.MemKeys[id] = wire.KeyToProto(rk.key)
	}
	var indexed []string
	ec.sorted.Ascend(func(k *managed.Key) bool { indexed = append(indexed, k.ID); return true })
	set := ec.policy
	ec.mu.RUnlock()
	if want := slices.Sorted(func(yield func(string) bool) {
		for id := range r.MemKeys {
			if !yield(id) {
				return
			}
		}
	}); !slices.Equal(indexed, want) {
		t.Errorf("the index lists %v, the map holds %v", indexed, want)
	}
	if set != nil {
		r.Policy = policyProbe(set)
	}
	s, err := ec.disk.load()
	must(t, "load", err)
	for _, ek := range s.keys {
		r.DiskKeys[ek.GetMetadata().GetKeyId()] = ek
	}
	r.DiskRevision, r.DiskLease, r.DiskPolicy, r.DiskNodes = s.revision, s.lease, s.policy.GetHash(), s.nodes
	_ = ec.disk.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaterial).ForEach(func(k, _ []byte) error {
			r.Material = append(r.Material, fmt.Sprintf("%q", k))
			return nil
		})
	})
	return r
}

// policyProbe tells the test policies apart by decisions they differ
// on: an edge in us holding a key of team t1, one in eu a key of t0.
func policyProbe(set *policy.Set) string {
	hold := func(region, team string) bool {
		k := (&managed.Key{ID: "k", Mode: managed.ModeDerive, Labels: map[string]string{"team": team}}).PolicyKey()
		e := policy.Principal{Kind: policy.KindEdge, Name: "e", TrustDomain: testTD, Region: region}
		return set.AuthorizeHoldMaterial(e, k, "").Allowed
	}
	return fmt.Sprintf("us/t1 %v, eu/t0 %v", hold("us", "t1"), hold("eu", "t0"))
}

// heldMayBeHeld checks that the fetched material left on disk is only of
// keys the replica has, enabled, that placement lets the edge hold under
// the policy and inventory in force, at versions not below their minimum.
func heldMayBeHeld(t *testing.T, ec *Cache) {
	t.Helper()
	ec.mu.RLock()
	defer ec.mu.RUnlock()
	_ = ec.disk.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaterial).ForEach(func(k, _ []byte) error {
			i := bytes.IndexByte(k, 0)
			id, v := string(k[:i]), binary.BigEndian.Uint32(k[i+1:i+5])
			rk := ec.keys[id]
			switch {
			case rk == nil:
				t.Errorf("material of %s v%d kept: the key is gone", id, v)
			case rk.key.State != managed.StateEnabled:
				t.Errorf("material of %s v%d kept: the key is %s", id, v, rk.key.State)
			case !placement.MayHold(rk.key, ec.me, ec.policyLocked(), testTD):
				t.Errorf("material of %s v%d kept: placement does not let the edge (region %s, labels %v) hold it", id, v, ec.me.Region, ec.me.Labels)
			case v < rk.key.MinDecryptionVersion:
				t.Errorf("material of %s v%d kept: below the minimum %d", id, v, rk.key.MinDecryptionVersion)
			}
			return nil
		})
	})
}

func diffReplicas(t *testing.T, what string, want, got replica) {
	t.Helper()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("%s: the replica differs from one applying the events one at a time (-want +got):\n%s", what, diff)
	}
}

// holdCommits holds replica.db's write lock, so that the edge's next
// commit waits, until the returned function is called.
func holdCommits(t *testing.T, ec *Cache) (release func()) {
	t.Helper()
	tx, err := ec.disk.db.Begin(true)
	must(t, "Begin", err)
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback() }) }
	t.Cleanup(release)
	return release
}

// queuedAll waits until the edge has received n events it has not yet
// applied.
func queuedAll(t *testing.T, ec *Cache, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d events received and queued", n), func() bool { return ec.stats.queued.Load() == int64(n) })
}

// followScript runs ec on f, which sends the snapshot and ends the
// stream, then (fetched material stored) sends events, and end, in a
// second stream while the edge's commits are held, so that they all
// arrive before it applies the first. It returns the commit count before
// the events.
func followScript(t *testing.T, f *fakeSync, ec *Cache, events []*kbv1.WatchEvent, end error) (commits uint64) {
	t.Helper()
	got, release := make(chan *kbv1.WatchRequest, 1), make(chan struct{})
	f.sessions <- fakeSession{events: batchSnapshot(), end: status.Error(codes.Unavailable, "snapshot sent")}
	f.sessions <- fakeSession{got: got, release: release, events: events, end: end}
	runFakeSync(t, ec)
	<-got
	putFetched(t, ec)
	commits = ec.disk.commits.Load()
	unhold := holdCommits(t, ec)
	close(release)
	queuedAll(t, ec, len(events)+btoi(end != nil))
	unhold()
	return commits
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestGroupCommit: 400 events that arrive together — key changes,
// deletions, heartbeats, inventory and policy changes — are applied in
// two transactions (the first event, whose commit was held, then the
// rest), and leave the replica — keys in memory and on disk, revision,
// lease, policy, inventory, and the fetched material withdrawn — as
// applying them one at a time does.
func TestGroupCommit(t *testing.T) {
	for _, tc := range []struct {
		seed   uint64
		moveAt int
	}{{1, -1}, {2, -1}, {3, 200}} {
		t.Run(fmt.Sprintf("seed=%d/moveAt=%d", tc.seed, tc.moveAt), func(t *testing.T) {
			events := changeScript(tc.seed, 400, tc.moveAt)
			f := &fakeSync{sessions: make(chan fakeSession, 3)}
			ec := openFakeSync(t, f)
			before := followScript(t, f, ec, events, nil)
			last := events[len(events)-1].GetRevision()
			waitFor(t, "the events to apply", func() bool { return ec.Revision() == last })
			if got := ec.disk.commits.Load() - before; got > 2 {
				t.Errorf("%d events received together took %d commits, want at most 2", len(events), got)
			}
			want := replicaOf(t, oneAtATime(t, events))
			diffReplicas(t, "after a batch", want, replicaOf(t, ec))
			heldMayBeHeld(t, ec)
			// The script is worth comparing: it withdrew some material
			// and kept some (unless it moved the edge out of eu).
			if n := len(want.Material); (n == 0 && tc.moveAt < 0) || n == 50*4 {
				t.Errorf("%d fetched material entries left of %d: the script withdrew none or all", n, 50*4)
			}
		})
	}
}

// TestGroupCommitCut: a stream that ends after events it sent together
// loses none of them; a key event the edge cannot parse in the middle
// of a batch leaves the replica at the revision of the event before it,
// with the events before it applied and none after, and the next Watch
// asks from there.
func TestGroupCommitCut(t *testing.T) {
	events := changeScript(4, 300, 100)
	bad := &kbv1.WatchEvent{Revision: 161, Event: &kbv1.WatchEvent_Key{Key: scaleKey(1, 161, 0)}}
	bad.GetKey().Metadata.KeyId = "not a key id!"
	for _, tc := range []struct {
		name    string
		sent    []*kbv1.WatchEvent
		end     error
		applied []*kbv1.WatchEvent
	}{
		{"stream cut", events, status.Error(codes.Unavailable, "cut"), events},
		{"bad event", append(slices.Clone(events[:150]), append([]*kbv1.WatchEvent{bad}, events[150:]...)...), nil, events[:150]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeSync{sessions: make(chan fakeSession, 3)}
			next := make(chan *kbv1.WatchRequest, 1)
			ec := openFakeSync(t, f)
			followScript(t, f, ec, tc.sent, tc.end)
			f.sessions <- fakeSession{got: next}
			req := <-next
			wantRev := tc.applied[len(tc.applied)-1].GetRevision()
			if req.GetFromRevision() != wantRev {
				t.Errorf("the next Watch asks from revision %d, want %d", req.GetFromRevision(), wantRev)
			}
			diffReplicas(t, tc.name, replicaOf(t, oneAtATime(t, tc.applied)), replicaOf(t, ec))
			if n := ec.stats.queued.Load(); n != 0 {
				t.Errorf("%d events still counted as queued after the stream ended, want 0", n)
			}
		})
	}
}

// TestGroupCommitFails: a batch whose transaction fails changes nothing,
// in memory or on disk — revision, keys, policy, lease — and the next
// Watch asks from the revision before it; the resent events then apply,
// and a restart of the edge finds them all.
func TestGroupCommitFails(t *testing.T) {
	events := changeScript(5, 300, -1)
	f := &fakeSync{sessions: make(chan fakeSession, 4)}
	ec := openFakeSync(t, f)
	var failed atomic.Bool
	ec.disk.failApply = func(ch *change) error {
		if ch.revision > 10 && failed.CompareAndSwap(false, true) {
			return errors.New("injected commit failure")
		}
		return nil
	}
	next := make(chan *kbv1.WatchRequest, 1)
	resend := make(chan struct{})
	f.sessions <- fakeSession{events: batchSnapshot(), end: status.Error(codes.Unavailable, "snapshot sent")}
	got, release := make(chan *kbv1.WatchRequest, 1), make(chan struct{})
	f.sessions <- fakeSession{got: got, release: release, events: events}
	f.sessions <- fakeSession{got: next, release: resend, events: events}
	runFakeSync(t, ec)
	<-got
	atSnapshot := replicaOf(t, ec)
	unhold := holdCommits(t, ec)
	close(release)
	queuedAll(t, ec, len(events))
	unhold()
	if req := <-next; req.GetFromRevision() != 10 {
		t.Errorf("after a failed commit the next Watch asks from revision %d, want 10", req.GetFromRevision())
	}
	if !failed.Load() {
		t.Fatal("no commit failed")
	}
	diffReplicas(t, "after a failed commit", atSnapshot, replicaOf(t, ec))

	close(resend)
	last := events[len(events)-1].GetRevision()
	waitFor(t, "the resent events to apply", func() bool { return ec.Revision() == last })
	// The fetched material was never stored here: compare with a replica
	// that had none either.
	want := oneAtATime(t, nil)
	must(t, "wipe the material", want.disk.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketMaterial); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucketMaterial)
		return err
	}))
	for _, ev := range events {
		must(t, "apply", want.apply(ev))
	}
	diffReplicas(t, "after the resent events", replicaOf(t, want), replicaOf(t, ec))

	// A restart finds the same replica on disk: a copy of what
	// replica.db has committed, with the edge's sealing key.
	cfg := ec.cfg
	cfg.Central, cfg.DataDir = newFakeConn(connectivity.Ready), t.TempDir()
	must(t, "copying replica.db", ec.disk.db.View(func(tx *bolt.Tx) error {
		return tx.CopyFile(filepath.Join(cfg.DataDir, "replica.db"), 0o600)
	}))
	key, err := os.ReadFile(filepath.Join(ec.cfg.DataDir, "sealing.key"))
	must(t, "reading sealing.key", err)
	must(t, "copying sealing.key", os.WriteFile(filepath.Join(cfg.DataDir, "sealing.key"), key, 0o600))
	restarted, err := Open(cfg)
	must(t, "Open after a restart", err)
	defer restarted.Close()
	diffReplicas(t, "after a restart", replicaOf(t, ec), replicaOf(t, restarted))
}

// TestGroupCommitRacesReaders: batches apply while readers resolve keys,
// list pages and look keys up (run with -race); a reader never sees the
// revision go back, and a key it resolves is there or not found.
func TestGroupCommitRacesReaders(t *testing.T) {
	events := changeScript(6, 1500, 700)
	f := &fakeSync{sessions: make(chan fakeSession, 2)}
	f.sessions <- fakeSession{events: append(batchSnapshot(), events...)}
	ec := openFakeSync(t, f)
	perf := ec.Performer()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			var seen uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				rev := ec.Revision()
				if rev < seen {
					t.Errorf("revision went back from %d to %d", seen, rev)
					return
				}
				seen = rev
				id := fmt.Sprintf("key-%07d", r.IntN(60))
				k, err := perf.Get(t.Context(), id)
				switch {
				case errors.Is(err, managed.ErrNotFound) || status.Code(err) == codes.Unavailable:
				case err != nil:
					t.Errorf("Get %s: %v", id, err)
					return
				default:
					if _, err := perf.LookupKey(t.Context(), k, policy.Decrypt, nil); err != nil {
						t.Errorf("LookupKey %s: %v", id, err)
						return
					}
				}
				if _, _, err := perf.ListKeys(t.Context(), nil, 10, managed.PageToken(nil, id), nil); err != nil && status.Code(err) != codes.Unavailable {
					t.Errorf("ListKeys: %v", err)
					return
				}
			}
		})
	}
	runFakeSync(t, ec)
	last := events[len(events)-1].GetRevision()
	waitFor(t, "the events to apply", func() bool { return ec.Revision() == last })
	close(stop)
	wg.Wait()
	if c := ec.disk.commits.Load(); c >= uint64(len(events)) {
		t.Logf("%d events took %d commits: none arrived together", len(events), c)
	}
	want := replicaOf(t, func() *Cache {
		w := oneAtATime(t, nil)
		for _, ev := range events {
			must(t, "apply", w.apply(ev))
		}
		return w
	}())
	got := replicaOf(t, ec)
	want.Material, got.Material = nil, nil // the reference stored fetched material
	diffReplicas(t, "after batches with readers", want, got)
}

// TestGroupCommitWithdraws: in a batch, each event withdraws material as
// it would alone, against the policy and inventory of the events before
// it — even when a later event in the same batch would allow it again.
// Keys 0..49 hold fetched material for versions 1..4 before each script.
func TestGroupCommitWithdraws(t *testing.T) {
	nodes := func(region string) *kbv1.WatchEvent {
		return &kbv1.WatchEvent{Event: &kbv1.WatchEvent_Nodes{Nodes: &kbv1.ListNodesResponse{Nodes: inventory(region)}}}
	}
	pol := func(p *kbv1.EdgePolicy) *kbv1.WatchEvent {
		return &kbv1.WatchEvent{Event: &kbv1.WatchEvent_Policy{Policy: p}}
	}
	key := func(i int, versions, minVersion uint32, state managed.State) *kbv1.WatchEvent {
		return &kbv1.WatchEvent{Event: &kbv1.WatchEvent_Key{Key: changedKey(i, 0, versions, minVersion, state)}}
	}
	del := func(i int) *kbv1.WatchEvent {
		return &kbv1.WatchEvent{Event: &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: fmt.Sprintf("key-%07d", i)}}
	}
	for _, tc := range []struct {
		name   string
		events []*kbv1.WatchEvent
		keep   func(i int, v uint32) bool
	}{
		{"heartbeats", []*kbv1.WatchEvent{heartbeat(0), heartbeat(0)}, func(int, uint32) bool { return true }},
		{"policy withdrawing team t0", []*kbv1.WatchEvent{pol(holdNotT0), heartbeat(0)}, func(i int, _ uint32) bool { return i%3 != 0 }},
		{"policy withdrawing t0 then allowing all", []*kbv1.WatchEvent{pol(holdNotT0), pol(holdAnywhere)}, func(i int, _ uint32) bool { return i%3 != 0 }},
		{"moved to us and back", []*kbv1.WatchEvent{nodes("us"), nodes("eu")}, func(int, uint32) bool { return false }},
		{"disabled and enabled", []*kbv1.WatchEvent{key(7, 3, 1, managed.StateDisabled), key(7, 3, 1, managed.StateEnabled)}, func(i int, _ uint32) bool { return i != 7 }},
		{"minimum raised", []*kbv1.WatchEvent{key(8, 4, 3, managed.StateEnabled), key(8, 4, 1, managed.StateEnabled)}, func(i int, v uint32) bool { return i != 8 || v >= 3 }},
		{"minimums raised twice", []*kbv1.WatchEvent{key(8, 4, 3, managed.StateEnabled), key(8, 4, 2, managed.StateEnabled)}, func(i int, v uint32) bool { return i != 8 || v >= 3 }},
		{"deleted and created again", []*kbv1.WatchEvent{del(9), key(9, 3, 1, managed.StateEnabled)}, func(i int, _ uint32) bool { return i != 9 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, ev := range tc.events {
				ev.Revision = uint64(11 + i)
				if k := ev.GetKey(); k != nil {
					k.Metadata.Revision = ev.Revision
				}
			}
			f := &fakeSync{sessions: make(chan fakeSession, 2)}
			ec := openFakeSync(t, f)
			followScript(t, f, ec, tc.events, nil)
			waitFor(t, "the events to apply", func() bool { return ec.Revision() == uint64(10+len(tc.events)) })
			var want []string
			for i := range 50 {
				for v := uint32(1); v <= 4; v++ {
					if tc.keep(i, v) {
						want = append(want, fmt.Sprintf("key-%07d v%d", i, v))
					}
				}
			}
			var got []string
			_ = ec.disk.db.View(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMaterial).ForEach(func(k, _ []byte) error {
					i := bytes.IndexByte(k, 0)
					got = append(got, fmt.Sprintf("%s v%d", k[:i], binary.BigEndian.Uint32(k[i+1:i+5])))
					return nil
				})
			})
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("fetched material left (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAccessKeyChangesHeard: an access key's change on the Watch stream
// reaches AccessKeyChanged with the key's id and advances the replica's
// revision; a snapshot reaches it as "" (every signing key is forgotten:
// the history it replaces may hold revocations).
func TestAccessKeyChangesHeard(t *testing.T) {
	ec := scaleCache(t, 3, 0)
	var heard []string
	ec.cfg.AccessKeyChanged = func(id string) { heard = append(heard, id) }
	if err := ec.apply(&kbv1.WatchEvent{Revision: 5, Event: &kbv1.WatchEvent_AccessKeyChanged{AccessKeyChanged: "KBAKAAAAAAAAAAAAAAAA"}}); err != nil {
		t.Fatal(err)
	}
	if ec.Revision() != 5 {
		t.Errorf("revision %d after the change, want 5", ec.Revision())
	}
	if err := ec.apply(chunks(6, 0, 3, 10)[0]); err != nil {
		t.Fatal(err)
	}
	if want := []string{"KBAKAAAAAAAAAAAAAAAA", ""}; !slices.Equal(heard, want) {
		t.Errorf("heard %q, want %q", heard, want)
	}
}

// TestSamePolicyAgain: the policy in force, sent again (as every new Watch
// stream begins), is not parsed and applied again — the set in force and
// each key's remembered placement decision stay — while a changed policy
// is.
func TestSamePolicyAgain(t *testing.T) {
	ec := scaleCache(t, 3, 0)
	snap := chunks(2, 0, 3, 10)[0].GetSnapshot()
	if err := ec.apply(chunks(2, 0, 3, 10)[0]); err != nil {
		t.Fatal(err)
	}
	current := func() *policy.Set {
		ec.mu.RLock()
		defer ec.mu.RUnlock()
		return ec.policyLocked()
	}
	before := current()
	if before.Hash() == "" {
		t.Fatal("no policy in force")
	}
	same := &kbv1.EdgePolicy{Hash: before.Hash(), Files: snap.GetPolicy().GetFiles()}
	if err := ec.apply(&kbv1.WatchEvent{Revision: 3, Event: &kbv1.WatchEvent_Policy{Policy: same}}); err != nil {
		t.Fatal(err)
	}
	if current() != before {
		t.Error("the same policy sent again replaced the set in force")
	}
	if ec.Revision() != 3 {
		t.Errorf("revision %d, want 3: the event still counts", ec.Revision())
	}
	changed := &kbv1.EdgePolicy{Hash: "other", Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte(testPolicy + "\n// changed\n")}}}
	if err := ec.apply(&kbv1.WatchEvent{Revision: 4, Event: &kbv1.WatchEvent_Policy{Policy: changed}}); err != nil {
		t.Fatal(err)
	}
	if current() == before {
		t.Error("a changed policy was not applied")
	}
}
