package edge_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/keybroker/keybroker/edge"
)

// TestEdgeTriesEveryCentral: an edge whose central.address does not answer
// connects through central.addresses to a central node that does, and
// follows it (it reaches the central tier's revision).
func TestEdgeTriesEveryCentral(t *testing.T) {
	dc, cfg := stoppedEdge(t)
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
