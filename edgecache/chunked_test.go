package edgecache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/managed"
)

// fakeSync is an EdgeSync server whose Watch streams the test scripts:
// each Watch call takes the next session from sessions and sends what it
// says, then ends the stream with its error.
type fakeSync struct {
	kbv1.UnimplementedEdgeSyncServer
	sessions chan fakeSession
}

// fakeSession is one Watch stream: the request is handed to got (if
// set), then release is awaited (if set) before events are sent.
type fakeSession struct {
	got     chan<- *kbv1.WatchRequest
	release <-chan struct{}
	events  []*kbv1.WatchEvent
	end     error
}

func (f *fakeSync) Register(context.Context, *kbv1.RegisterEdgeRequest) (*kbv1.RegisterEdgeResponse, error) {
	return &kbv1.RegisterEdgeResponse{}, nil
}

func (f *fakeSync) Acknowledge(context.Context, *kbv1.AcknowledgeRequest) (*kbv1.AcknowledgeResponse, error) {
	return &kbv1.AcknowledgeResponse{}, nil
}

func (f *fakeSync) Watch(req *kbv1.WatchRequest, stream grpc.ServerStreamingServer[kbv1.WatchEvent]) error {
	var s fakeSession
	select {
	case s = <-f.sessions:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	if s.got != nil {
		s.got <- req
	}
	if s.release != nil {
		<-s.release
	}
	for _, ev := range s.events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if s.end != nil {
		return s.end
	}
	<-stream.Context().Done()
	return nil
}

// startFakeSync serves f on loopback (plain gRPC: the edge's code under
// test is the same over TLS) and opens an edge following it.
func startFakeSync(t testing.TB, f *fakeSync) *Cache {
	t.Helper()
	ec := openFakeSync(t, f)
	runFakeSync(t, ec)
	return ec
}

// openFakeSync serves f on loopback and opens an edge connected to it,
// not yet following it (runFakeSync).
func openFakeSync(t testing.TB, f *fakeSync) *Cache {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	g := grpc.NewServer()
	kbv1.RegisterEdgeSyncServer(g, f)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, "dial", err)
	t.Cleanup(func() { conn.Close() })
	ec, err := Open(Config{NodeID: "edge-1", TrustDomain: testTD, Address: "127.0.0.1:1", DataDir: t.TempDir(),
		Central: conn, MaxStaleness: time.Hour, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	must(t, "Open", err)
	t.Cleanup(func() { ec.Close() })
	return ec
}

// runFakeSync runs ec until the end of the test.
func runFakeSync(t testing.TB, ec *Cache) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); ec.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// chunks is a snapshot at rev of keys first..first+n-1 in chunks of size
// keys; the first carries a policy and the inventory.
func chunks(rev uint64, first, n, size int) []*kbv1.WatchEvent {
	var out []*kbv1.WatchEvent
	for i := first; i < first+n; i += size {
		snap := &kbv1.EdgeSnapshot{More: i+size < first+n}
		if i == first {
			snap.Policy = &kbv1.EdgePolicy{Hash: fmt.Sprintf("p%d", rev), Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte(testPolicy)}}}
			snap.Nodes = []*kbv1.Node{{NodeId: "edge-1", Kind: "edge", Region: fmt.Sprintf("r%d", rev), Enrolled: true}}
		}
		for j := i; j < min(i+size, first+n); j++ {
			snap.Keys = append(snap.Keys, scaleKey(j, rev, 120))
		}
		out = append(out, &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}})
	}
	return out
}

func heartbeat(rev uint64) *kbv1.WatchEvent {
	return &kbv1.WatchEvent{Revision: rev, Event: &kbv1.WatchEvent_Heartbeat{Heartbeat: &kbv1.Heartbeat{
		LeaseExpires: timestamppb.New(time.Now().Add(time.Hour))}}}
}

func keyIDs(first, n int) []string {
	var ids []string
	for i := first; i < first+n; i++ {
		ids = append(ids, fmt.Sprintf("key-%07d", i))
	}
	return ids
}

// replicaState is what the edge holds, in memory and on disk.
func replicaState(t *testing.T, ec *Cache) (rev uint64, mem, onDisk []string, region string) {
	t.Helper()
	ec.mu.RLock()
	rev = ec.revision
	ec.sorted.Ascend(func(k *managed.Key) bool { mem = append(mem, k.ID); return true })
	region = ec.me.Region
	ec.mu.RUnlock()
	s, err := ec.disk.load()
	must(t, "loading the replica", err)
	for _, ek := range s.keys {
		onDisk = append(onDisk, ek.GetMetadata().GetKeyId())
	}
	if s.revision != rev {
		t.Errorf("revision on disk %d, in memory %d", s.revision, rev)
	}
	return rev, mem, onDisk, region
}

// TestChunkedSnapshot: the edge asks for chunks; a snapshot in three
// chunks replaces the replica once the last has arrived; a stream cut
// after the second chunk of the next snapshot (a heartbeat between its
// chunks) leaves the replica, in memory and on disk, exactly as it was,
// lease included, and the edge asks again from the same revision; the
// full resend then applies.
func TestChunkedSnapshot(t *testing.T) {
	f := &fakeSync{sessions: make(chan fakeSession, 4)}
	got1, got2, got3 := make(chan *kbv1.WatchRequest, 1), make(chan *kbv1.WatchRequest, 1), make(chan *kbv1.WatchRequest, 1)
	release3 := make(chan struct{})
	// A heartbeat between chunks moves neither the revision nor the lease.
	far := heartbeat(22)
	far.GetHeartbeat().LeaseExpires = timestamppb.New(time.Now().Add(100 * time.Hour))
	cut := slices.Insert(chunks(20, 100, 9, 3)[:2], 1, far)
	f.sessions <- fakeSession{got: got1, events: append(chunks(10, 0, 9, 3), heartbeat(10)), end: status.Error(codes.Unavailable, "compacted")}
	f.sessions <- fakeSession{got: got2, events: cut, end: status.Error(codes.Unavailable, "cut")}
	f.sessions <- fakeSession{got: got3, release: release3, events: append(chunks(20, 100, 9, 3), heartbeat(20))}
	ec := startFakeSync(t, f)

	if req := <-got1; req.GetFromRevision() != 0 || !req.GetChunkedSnapshot() {
		t.Errorf("first Watch: %v, want from_revision 0 and chunked_snapshot", req)
	}
	if req := <-got2; req.GetFromRevision() != 10 || !req.GetChunkedSnapshot() {
		t.Errorf("second Watch: %v, want from_revision 10 and chunked_snapshot", req)
	}
	// The second session's chunks have been received and its stream
	// lost once the third Watch arrives.
	if req := <-got3; req.GetFromRevision() != 10 {
		t.Errorf("Watch after a stream lost mid-snapshot asks from revision %d, want 10 (unchanged)", req.GetFromRevision())
	}
	rev, mem, onDisk, region := replicaState(t, ec)
	if rev != 10 || region != "r10" {
		t.Errorf("after a snapshot cut mid-way: revision %d, region %q; want 10, r10 (the first snapshot's)", rev, region)
	}
	if diff := cmp.Diff(keyIDs(0, 9), mem); diff != "" {
		t.Errorf("after a snapshot cut mid-way, keys in memory differ from the first snapshot's (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(keyIDs(0, 9), onDisk); diff != "" {
		t.Errorf("after a snapshot cut mid-way, keys on disk differ from the first snapshot's (-want +got):\n%s", diff)
	}
	if err := ec.Serving(); err != nil {
		t.Errorf("Serving after a snapshot cut mid-way: %v", err)
	}
	if l := ec.LeaseExpires(); l.After(time.Now().Add(2 * time.Hour)) {
		t.Errorf("lease %v: a heartbeat between chunks extended it", l)
	}

	close(release3)
	waitFor(t, "the resent snapshot to apply", func() bool { return ec.Revision() == 20 })
	rev, mem, onDisk, region = replicaState(t, ec)
	if rev != 20 || region != "r20" {
		t.Errorf("after the resent snapshot: revision %d, region %q; want 20, r20", rev, region)
	}
	if diff := cmp.Diff(keyIDs(100, 9), mem); diff != "" {
		t.Errorf("after the resent snapshot, keys in memory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(keyIDs(100, 9), onDisk); diff != "" {
		t.Errorf("after the resent snapshot, keys on disk (-want +got):\n%s", diff)
	}
	if blob := ec.sealedBlob(replicaKeyOf(ec, "key-0000104"), 1); len(blob) != 120 {
		t.Errorf("sealed material of a key from the last chunk but one: %d bytes, want 120", len(blob))
	}
	if _, err := (replicaSource{ec}).Get(t.Context(), "key-0000003"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("a key the resent snapshot dropped: Get = %v, want not found", err)
	}
}

// TestSnapshotInOneMessage: a central node that sends a snapshot in one
// message (more = false) — one that does not know chunks — still
// replaces the replica.
func TestSnapshotInOneMessage(t *testing.T) {
	f := &fakeSync{sessions: make(chan fakeSession, 1)}
	f.sessions <- fakeSession{events: append(chunks(7, 0, 5, 5), heartbeat(7))}
	ec := startFakeSync(t, f)
	waitFor(t, "the snapshot to apply", func() bool { return ec.Revision() == 7 })
	_, mem, onDisk, _ := replicaState(t, ec)
	if diff := cmp.Diff(keyIDs(0, 5), mem); diff != "" {
		t.Errorf("keys in memory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(keyIDs(0, 5), onDisk); diff != "" {
		t.Errorf("keys on disk (-want +got):\n%s", diff)
	}
}

// TestChunkOutOfPlace: an event other than a heartbeat between chunks,
// or a chunk at another revision, ends the stream and changes nothing.
func TestChunkOutOfPlace(t *testing.T) {
	for name, ev := range map[string]*kbv1.WatchEvent{
		"key event":      {Revision: 21, Event: &kbv1.WatchEvent_Key{Key: scaleKey(500, 21, 0)}},
		"other revision": chunks(21, 200, 3, 3)[0],
	} {
		t.Run(name, func(t *testing.T) {
			f := &fakeSync{sessions: make(chan fakeSession, 3)}
			got := make(chan *kbv1.WatchRequest, 1)
			f.sessions <- fakeSession{events: append(chunks(10, 0, 4, 2), heartbeat(10)), end: status.Error(codes.Unavailable, "compacted")}
			f.sessions <- fakeSession{events: append(chunks(20, 100, 9, 3)[:1], ev)}
			f.sessions <- fakeSession{got: got}
			ec := startFakeSync(t, f)
			if req := <-got; req.GetFromRevision() != 10 {
				t.Errorf("Watch after a chunk out of place asks from %d, want 10", req.GetFromRevision())
			}
			if _, mem, onDisk, _ := replicaState(t, ec); !slices.Equal(mem, keyIDs(0, 4)) || !slices.Equal(onDisk, keyIDs(0, 4)) {
				t.Errorf("after a chunk out of place: keys %v in memory, %v on disk; want %v", mem, onDisk, keyIDs(0, 4))
			}
		})
	}
}

// TestStagedChunksDroppedAtOpen: chunks staged when an edge stopped are
// gone when it opens again, and the replica is the one it had.
func TestStagedChunksDroppedAtOpen(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{NodeID: "edge-1", TrustDomain: testTD, Address: "127.0.0.1:1", DataDir: dir, Central: newFakeConn(connectivity.Ready)}
	ec, err := Open(cfg)
	must(t, "Open", err)
	must(t, "apply", ec.apply(chunks(10, 0, 3, 3)[0]))
	must(t, "stageBegin", ec.disk.stageBegin())
	must(t, "stage", ec.disk.stage([]*kbv1.EdgeKey{scaleKey(50, 20, 0)}))
	must(t, "Close", ec.Close())
	ec, err = Open(cfg)
	must(t, "Open again", err)
	defer ec.Close()
	_ = ec.disk.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketStaging) != nil {
			t.Errorf("the staging area survived a restart")
		}
		return nil
	})
	if _, mem, onDisk, _ := replicaState(t, ec); !slices.Equal(mem, keyIDs(0, 3)) || !slices.Equal(onDisk, keyIDs(0, 3)) {
		t.Errorf("after a restart with chunks staged: keys %v in memory, %v on disk; want %v", mem, onDisk, keyIDs(0, 3))
	}
}
