package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
)

// pausingScans is a store whose scans stop after their first page until
// released, so that a test can change the registry in the middle of a
// snapshot.
type pausingScans struct {
	store.Store
	paused  chan struct{} // closed when a scan has handed over its first page
	release chan struct{}
	once    sync.Once
}

func (p *pausingScans) Scan(ctx context.Context, kind store.Kind, limit int, fn func(store.Page) error) error {
	first := true
	return p.Store.Scan(ctx, kind, limit, func(pg store.Page) error {
		if err := fn(pg); err != nil {
			return err
		}
		if first && pg.More {
			first = false
			p.once.Do(func() {
				close(p.paused)
				<-p.release
			})
		}
		return nil
	})
}

// createKeys creates n derive-mode keys tenant-0000000 … through the
// service, with 4 workers.
func createKeys(t *testing.T, svc *broker.Service, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if _, err := svc.CreateKey(t.Context(), broker.CreateParams{ID: fmt.Sprintf("tenant-%07d", i), Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestWatchChunkedSnapshot: an edge that asks for a chunked snapshot of
// 2,500 keys gets chunks of at most 1000 keys, in id order, each key once,
// all at one revision, more set on all but the last, the policy and the
// inventory in the first; keys created and deleted while the snapshot is
// being read are not in it (it is the registry at its revision) and
// follow it as events after that revision. An edge that does not ask gets
// the whole registry in one message.
func TestWatchChunkedSnapshot(t *testing.T) {
	const n = 2500
	ps := &pausingScans{paused: make(chan struct{}), release: make(chan struct{})}
	e := start(t, func(c *Config) {
		old := c.Service
		ps.Store = old.Registry().Store()
		svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(ps, nil), Roots: old.Roots(),
			Materials: broker.NewMaterials(old.Roots(), 100, time.Hour, nil), DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf"}})
		if err != nil {
			t.Fatal(err)
		}
		c.Service = svc
	})
	svc := e.srv.svc
	createKeys(t, svc, n)
	edge := e.registerEdge(t, "edge-1")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := edge.Watch(ctx, &kbv1.WatchRequest{ChunkedSnapshot: true})
	if err != nil {
		t.Fatal(err)
	}

	// Between the snapshot's first and second page: a key created in the
	// middle of the id range, and one from its last page deleted.
	<-ps.paused
	created, err := svc.CreateKey(t.Context(), broker.CreateParams{ID: "tenant-0001500a", Type: managed.AES256GCM, Mode: managed.ModeDerive})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := svc.Registry().Get(t.Context(), "tenant-0002400")
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Registry().Delete(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	close(ps.release)

	var ids []string
	var sizes []int
	var mores []bool
	var rev uint64
	for chunk := 0; ; chunk++ {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv chunk %d: %v", chunk, err)
		}
		snap := ev.GetSnapshot()
		if snap == nil {
			t.Fatalf("chunk %d: got %T, want a snapshot chunk", chunk, ev.GetEvent())
		}
		if chunk == 0 {
			rev = ev.GetRevision()
			if snap.GetPolicy().GetHash() == "" || len(snap.GetNodes()) == 0 {
				t.Errorf("first chunk: policy %q, %d nodes; want the policy and the inventory", snap.GetPolicy().GetHash(), len(snap.GetNodes()))
			}
		} else if snap.GetPolicy() != nil || len(snap.GetNodes()) != 0 {
			t.Errorf("chunk %d carries a policy or nodes; only the first should", chunk)
		}
		if ev.GetRevision() != rev {
			t.Errorf("chunk %d at revision %d, want the snapshot's %d", chunk, ev.GetRevision(), rev)
		}
		for _, k := range snap.GetKeys() {
			ids = append(ids, k.GetMetadata().GetKeyId())
		}
		sizes, mores = append(sizes, len(snap.GetKeys())), append(mores, snap.GetMore())
		if !snap.GetMore() {
			break
		}
	}
	if fmt.Sprint(sizes) != "[1000 1000 500]" || fmt.Sprint(mores) != "[true true false]" {
		t.Errorf("chunks of %v keys, more %v; want [1000 1000 500], [true true false]", sizes, mores)
	}
	for i, id := range ids {
		if want := fmt.Sprintf("tenant-%07d", i); id != want {
			t.Fatalf("snapshot key %d is %s, want %s (every key once, in order, as of the snapshot's revision)", i, id, want)
		}
	}
	if len(ids) != n {
		t.Errorf("snapshot holds %d keys, want %d", len(ids), n)
	}
	if created.Revision <= rev {
		t.Fatalf("key created during the snapshot at revision %d, not after the snapshot's %d", created.Revision, rev)
	}
	// The changes made during the snapshot follow it, after its revision.
	sawCreate, sawDelete := false, false
	for !sawCreate || !sawDelete {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv after the snapshot: %v", err)
		}
		switch {
		case ev.GetKey() != nil:
			sawCreate = sawCreate || ev.GetKey().GetMetadata().GetKeyId() == created.ID
		case ev.GetDeletedKeyId() != "":
			sawDelete = sawDelete || ev.GetDeletedKeyId() == gone.ID
		default:
			continue
		}
		if ev.GetRevision() <= rev {
			t.Errorf("event %v at revision %d, not after the snapshot's %d", ev.GetEvent(), ev.GetRevision(), rev)
		}
	}
	cancel()

	// Without chunked_snapshot: one message, every key.
	stream, err = edge.Watch(t.Context(), &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if snap := ev.GetSnapshot(); len(snap.GetKeys()) != n || snap.GetMore() {
		t.Errorf("unchunked snapshot: %d keys, more %v; want %d keys in one message", len(snap.GetKeys()), snap.GetMore(), n)
	}
}

// TestWatchChunkedSnapshotBytes: chunks also stay within the byte bound
// (lowered here to 16 KiB), the first counting the policy and inventory
// it carries, and together hold every key once.
func TestWatchChunkedSnapshotBytes(t *testing.T) {
	defer func(b int) { snapshotChunkBytes = b }(snapshotChunkBytes)
	snapshotChunkBytes = 16 << 10
	e := start(t)
	const n = 300
	createKeys(t, e.svc, n)
	edge := e.registerEdge(t, "edge-1")
	stream, err := edge.Watch(t.Context(), &kbv1.WatchRequest{ChunkedSnapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	chunks := 0
	for more := true; more; chunks++ {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		snap := ev.GetSnapshot()
		if size := proto.Size(snap); size > snapshotChunkBytes {
			t.Errorf("chunk %d is %d bytes, above the bound %d", chunks, size, snapshotChunkBytes)
		}
		for _, k := range snap.GetKeys() {
			ids = append(ids, k.GetMetadata().GetKeyId())
		}
		more = snap.GetMore()
	}
	if chunks < 2 {
		t.Errorf("%d chunk(s), want the bytes bound to split the snapshot", chunks)
	}
	for i, id := range ids {
		if want := fmt.Sprintf("tenant-%07d", i); id != want {
			t.Fatalf("key %d is %s, want %s", i, id, want)
		}
	}
	if len(ids) != n {
		t.Errorf("%d keys in the chunks, want %d", len(ids), n)
	}
}
