package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// TestEdgeLivenessSharedAcrossCentrals: an edge following central a is
// shown by central b as connected, with its lease and the revision it
// acknowledged at a; b's lookups change when it connects and when it
// leaves (Changed fires); and once it leaves a, b shows it disconnected.
func TestEdgeLivenessSharedAcrossCentrals(t *testing.T) {
	defer func(d time.Duration) { shareEvery = d }(shareEvery)
	shareEvery = 50 * time.Millisecond
	etcd := etcdtest.Start(t, 1)
	open := func() *store.Etcd {
		s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/liveness/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, b := newLiveness("central-a"), newLiveness("central-b")
	log := slog.New(slog.DiscardHandler)
	go a.share(ctx, open(), "central-a", time.Minute, log)
	go b.share(ctx, open(), "central-b", time.Minute, log)

	changed := b.Changed()
	lease := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	stream := a.connect("edge-1", lease, func(error) {})
	a.ack("edge-1", 7, 10)
	seen := func(what string, ok func(n *kbv1.Node) bool) *kbv1.Node {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			n := &kbv1.Node{NodeId: "edge-1"}
			b.describe(n)
			if ok(n) {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("central b never saw edge-1 %s: %+v", what, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	n := seen("connected at a", func(n *kbv1.Node) bool { return n.Connected && n.AppliedRevision == 7 })
	if n.Central != "central-a" {
		t.Errorf("b says edge-1 follows %q, want central-a", n.Central)
	}
	if !n.LeaseExpires.AsTime().Equal(lease) {
		t.Errorf("lease at b = %v, want %v", n.LeaseExpires.AsTime(), lease)
	}
	select {
	case <-changed:
	default:
		t.Error("b's inventory signal did not fire when edge-1 connected at a")
	}
	changed = b.Changed()
	a.disconnect("edge-1", stream)
	seen("disconnected", func(n *kbv1.Node) bool { return !n.Connected && n.AppliedRevision == 7 })
	select {
	case <-changed:
	default:
		t.Error("b's inventory signal did not fire when edge-1 left a")
	}
	// A record whose lease has run out (its central died) shows the edge
	// not connected, whatever it said.
	c := newLiveness("central-c")
	c.setOthers(map[string]sharedEdge{"edge-2": {Central: "central-a", Connected: true, Lease: time.Now().Add(-time.Second)}})
	if n := (&kbv1.Node{NodeId: "edge-2"}); func() bool { c.describe(n); return n.Connected || n.LeaseExpires == nil }() {
		t.Errorf("an edge whose published lease ran out is shown connected: %+v", n)
	}
	// An edge following b itself is described from b's own stream.
	b.connect("edge-1", lease, func(error) {})
	if n := (&kbv1.Node{NodeId: "edge-1"}); func() bool { b.describe(n); return !n.Connected || n.Central != "central-b" }() {
		t.Errorf("edge-1 following b is not connected at b: %+v", n)
	}
}
