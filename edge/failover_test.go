package edge_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/edge"
)

// TestEdgeTriesEveryCentral: an edge whose central.address does not answer
// connects through central.addresses to a central node that does, and
// follows it (it reaches the central tier's revision).
func TestEdgeTriesEveryCentral(t *testing.T) {
	dc, err := devcluster.Start(t.Context(), devcluster.Options{Dir: t.TempDir(), Edges: []devcluster.EdgeSpec{{Name: "edge-1", Region: "eu"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = dc.Shutdown(ctx)
	})
	cfg, err := config.LoadEdge(dc.EdgeConfigs[0])
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := dc.Edges[0].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: the first central "went away".
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	live := cfg.Central.Address
	cfg.Central.Address, cfg.Central.Addresses = dead, []string{live}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := edge.Start(t.Context(), cfg, edge.Options{})
	if err != nil {
		t.Fatalf("edge.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	want := dc.Central.Service().Registry().Store().Revision()
	deadline := time.Now().Add(30 * time.Second)
	for !n.Cache().Connected() || n.Cache().Revision() < want {
		if time.Now().After(deadline) {
			t.Fatalf("the edge did not reach the central at %s through central.addresses (connected %v, revision %d of %d)",
				live, n.Cache().Connected(), n.Cache().Revision(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
