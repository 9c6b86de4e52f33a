package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// TestWatchSealsEachVersionOnce: a rotation event carries the earlier
// versions' material exactly as the stream sent it before (HPKE sealing is
// randomized, so equal bytes mean no new sealing), still opening at the
// edge; material withdrawn by a disable is sealed afresh when the key is
// enabled again.
func TestWatchSealsEachVersionOnce(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-1", "eu", nil)
	sk, _ := sealed.GenerateKey()
	edge := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-1"))
	if _, err := edge.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "eu.example:7443", Prefetch: true}); err != nil {
		t.Fatal(err)
	}
	stream, err := edge.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// next returns the next event for the key, snapshot or change.
	next := func() *kbv1.EdgeKey {
		t.Helper()
		for {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if s := ev.GetSnapshot(); s != nil {
				return s.GetKeys()[0]
			}
			if k := ev.GetKey(); k != nil {
				return k
			}
		}
	}
	blobs := func(k *kbv1.EdgeKey) [][]byte {
		t.Helper()
		var out [][]byte
		for _, v := range k.GetVersions() {
			if _, err := sealed.Open(sk, v.GetSealedMaterial(), "edge-1", "k", v.GetVersion()); err != nil {
				t.Fatalf("version %d does not open: %v", v.GetVersion(), err)
			}
			out = append(out, v.GetSealedMaterial())
		}
		return out
	}
	before := blobs(next())
	for range 2 {
		if _, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "k"}); err != nil {
			t.Fatal(err)
		}
		after := blobs(next())
		if len(after) != len(before)+1 {
			t.Fatalf("%d versions after rotating, want %d", len(after), len(before)+1)
		}
		for i := range before {
			if !bytes.Equal(before[i], after[i]) {
				t.Errorf("version %d sealed again after a rotation", i+1)
			}
		}
		before = after
	}
	if _, err := admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "k"}); err != nil {
		t.Fatal(err)
	}
	if k := next(); len(k.GetVersions()[0].GetSealedMaterial()) != 0 {
		t.Fatal("a disabled key's material was sent")
	}
	if _, err := admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "k"}); err != nil {
		t.Fatal(err)
	}
	for i, b := range blobs(next()) {
		if bytes.Equal(b, before[i]) {
			t.Errorf("version %d after enabling: the blob sent before the disable, want one sealed afresh", i+1)
		}
	}
}

func TestSealCache(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	key := func(id string, versions int) *managed.Key {
		k := &managed.Key{ID: id, Created: created}
		for v := range versions {
			k.Versions = append(k.Versions, managed.Version{Version: uint32(v + 1), Created: created.Add(time.Duration(v) * time.Hour), RootKey: "softkms:root"})
		}
		return k
	}
	entry := func(k *managed.Key) map[uint32]sealedVersion {
		m := map[uint32]sealedVersion{}
		for _, v := range k.Versions {
			m[v.Version] = sealedVersion{keyCreated: k.Created, created: v.Created, root: v.RootKey, blob: []byte(k.ID)}
		}
		return m
	}
	to, other := []byte("sealing key 1"), []byte("sealing key 2")
	var c sealCache
	c.sealingTo(to)
	a := key("a", 2)
	c.put("a", entry(a))
	if _, ok := c.get(a, a.Versions[1]); !ok {
		t.Error("get(a v2) missed after put")
	}
	recreated := key("a", 2)
	recreated.Created = created.Add(time.Minute)
	if _, ok := c.get(recreated, recreated.Versions[0]); ok {
		t.Error("get for a key created again under the same id hit")
	}
	moved := a.Versions[0]
	moved.RootKey = "softkms:other"
	if _, ok := c.get(a, moved); ok {
		t.Error("get for a version on another root key hit")
	}
	c.sealingTo(to)
	if _, ok := c.get(a, a.Versions[1]); !ok {
		t.Error("get(a v2) missed after the same sealing key again")
	}

	// Past maxSealedBlobs the least recently sent keys go; a key bigger
	// than the bound stays alone.
	big := key("big", maxSealedBlobs-2)
	c.put("big", entry(big))
	b := key("b", 2)
	c.put("b", entry(b))
	_, aCached := c.get(a, a.Versions[0])
	_, bigCached := c.get(big, big.Versions[0])
	if aCached || !bigCached || c.blobs != maxSealedBlobs {
		t.Errorf("after passing the bound: a cached %v, big cached %v, %d blobs; want a alone evicted, %d", aCached, bigCached, c.blobs, maxSealedBlobs)
	}
	huge := key("huge", maxSealedBlobs+5)
	c.put("huge", entry(huge))
	if c.lru.Len() != 1 || c.blobs != maxSealedBlobs+5 {
		t.Errorf("after a key over the bound: %d keys, %d blobs; want it alone", c.lru.Len(), c.blobs)
	}

	// A new sealing key empties the cache.
	c.sealingTo(other)
	if _, ok := c.get(huge, huge.Versions[0]); ok || c.lru.Len() != 0 || c.blobs != 0 {
		t.Errorf("after a new sealing key: %d keys, %d blobs; want none", c.lru.Len(), c.blobs)
	}
	c.put("b", entry(b))
	c.drop("b")
	if c.lru.Len() != 0 || c.blobs != 0 || len(c.keys) != 0 {
		t.Errorf("after drop: %d keys, %d blobs", c.lru.Len(), c.blobs)
	}
}

// resumeKeys opens a Watch stream from rev and returns, by key id, every
// version any key event it replays up to revision upTo carried sealed
// material for, sorted.
func resumeKeys(t *testing.T, edge kbv1.EdgeSyncClient, rev, upTo uint64) map[string][]uint32 {
	t.Helper()
	stream, err := edge.Watch(t.Context(), &kbv1.WatchRequest{FromRevision: rev})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]uint32{}
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if ev.GetSnapshot() != nil {
			t.Fatalf("resuming from %d: a snapshot, want a replay", rev)
		}
		if k := ev.GetKey(); k != nil {
			id := k.GetMetadata().GetKeyId()
			for _, v := range k.GetVersions() {
				if len(v.GetSealedMaterial()) > 0 && !slices.Contains(out[id], v.GetVersion()) {
					out[id] = append(out[id], v.GetVersion())
				}
			}
			if out[id] == nil {
				out[id] = []uint32{}
			}
		}
		if ev.GetRevision() >= upTo {
			for _, vs := range out {
				slices.Sort(vs)
			}
			return out
		}
	}
}

// TestWatchResumeUsesCurrentPlacement: an edge moved out of a key's
// placement cannot get the key's material back by resuming its Watch from
// a revision before the move.
func TestWatchResumeUsesCurrentPlacement(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	e.enroll(t, "edge-1", "eu", nil)
	edge, reg, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k1", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
		t.Fatal(err)
	}
	us := "us"
	if _, err := admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-1", Region: &us}); err != nil {
		t.Fatal(err)
	}
	_, err = edge.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "k1", KeyVersion: 1})
	code(t, "FetchMaterial after the move", err, codes.PermissionDenied)
	got := resumeKeys(t, edge.sync, reg.GetRevision()-1, e.svc.Registry().Store().Revision())
	s, ok := got["k1"]
	if !ok {
		t.Fatal("the replay did not carry k1")
	}
	if len(s) != 0 {
		t.Errorf("replayed k1 carries sealed material of versions %v for an edge now in us, want none", s)
	}
}

// TestWatchResumeWithholdsDisabledAndDeletedKeys: a replay carries a key's
// old records as metadata only, so a key since disabled, deleted or with
// its minimum version raised releases no material its current record
// would not.
func TestWatchResumeWithholdsDisabledAndDeletedKeys(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	e.enroll(t, "edge-1", "eu", nil)
	edge, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	from := e.svc.Registry().Store().Revision()
	for _, id := range []string{"disabled", "deleted", "raised", "kept"} {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "disabled"}); err != nil {
		t.Fatal(err)
	}
	k, err := e.svc.Registry().Get(ctx, "deleted")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Registry().Delete(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "raised"}); err != nil {
		t.Fatal(err)
	}
	two := uint32(2)
	if _, err := admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "raised", MinDecryptionVersion: &two}); err != nil {
		t.Fatal(err)
	}
	got := resumeKeys(t, edge.sync, from, e.svc.Registry().Store().Revision())
	for _, tc := range []struct {
		id   string
		want []uint32
	}{
		{"disabled", []uint32{}},
		{"deleted", []uint32{}},
		{"raised", []uint32{2}},
		{"kept", []uint32{1}},
	} {
		s, ok := got[tc.id]
		if !ok {
			t.Errorf("the replay did not carry %s", tc.id)
			continue
		}
		if !slices.Equal(s, tc.want) {
			t.Errorf("replayed %s: sealed versions %v, want %v", tc.id, s, tc.want)
		}
	}
}

// flakyNodes is a store whose node reads fail once armed: fail says which
// read from now (1: the next) returns ErrUnavailable.
type flakyNodes struct {
	store.Store
	mu        sync.Mutex
	countdown int
}

func (f *flakyNodes) failRead(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.countdown = n
}

func (f *flakyNodes) Get(ctx context.Context, kind store.Kind, id string) (store.Object, error) {
	if kind == broker.KindNodes {
		f.mu.Lock()
		f.countdown--
		fail := f.countdown == 0
		f.mu.Unlock()
		if fail {
			return store.Object{}, fmt.Errorf("node read failed (injected): %w", managed.ErrUnavailable)
		}
	}
	return f.Store.Get(ctx, kind, id)
}

// TestWatchStoreErrorIsNotNotEnrolled: a store error reading the edge's
// record when its stream opens is reported as what it is, not as
// not-enrolled — which makes an honest edge wipe its replica.
func TestWatchStoreErrorIsNotNotEnrolled(t *testing.T) {
	var flaky *flakyNodes
	e := start(t, func(c *Config) {
		old := c.Service
		flaky = &flakyNodes{Store: old.Registry().Store()}
		svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(flaky, nil), Roots: old.Roots(),
			Materials: broker.NewMaterials(old.Roots(), 100, time.Hour, nil)})
		if err != nil {
			t.Fatal(err)
		}
		c.Service = svc
	})
	e.enroll(t, "edge-1", "eu", nil)
	edge, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	// Both the audited gate and the stream's own read of the record must
	// report a store error as unavailable.
	for read := 1; read <= 2; read++ {
		flaky.failRead(read)
		stream, err := edge.sync.Watch(t.Context(), &kbv1.WatchRequest{})
		if err == nil {
			_, err = stream.Recv()
		}
		if wire.IsNotEnrolled(err) || status.Code(err) != codes.Unavailable {
			t.Errorf("node read %d failing: Watch = %v, want Unavailable and not not-enrolled", read, err)
		}
	}
}
