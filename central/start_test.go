package central_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/edge"
)

// TestStartFailsCleanly stops a cluster's nodes, holds their ports, and
// starts them again: each fails with an error naming the address after
// opening its backends, store and audit log, and releases them (no panic,
// and a second attempt once the port is free succeeds).
func TestStartFailsCleanly(t *testing.T) {
	dc, err := devcluster.Start(t.Context(), devcluster.Options{Dir: t.TempDir(), Edges: []devcluster.EdgeSpec{{Name: "edge-1", Region: "eu"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = dc.Shutdown(ctx)
	})
	stop := func(s interface{ Shutdown(context.Context) error }) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	hold := func(addr string) net.Listener {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ccfg, err := config.LoadCentral(dc.CentralConfig)
	if err != nil {
		t.Fatal(err)
	}
	ccfg.Listen = dc.Central.Addr()
	stop(dc.Central)
	l := hold(ccfg.Listen)
	if n, err := central.Start(t.Context(), ccfg, central.Options{}); err == nil || n != nil || !strings.Contains(err.Error(), ccfg.Listen) {
		t.Errorf("central.Start on a taken port = %v, %v; want an error naming %s", n, err, ccfg.Listen)
	}
	l.Close()
	n, err := central.Start(t.Context(), ccfg, central.Options{})
	if err != nil {
		t.Fatalf("central.Start once the port is free: %v (the failed start kept something open)", err)
	}
	stop(n)

	ecfg, err := config.LoadEdge(dc.EdgeConfigs[0])
	if err != nil {
		t.Fatal(err)
	}
	ecfg.Listen = dc.Edges[0].Addr()
	stop(dc.Edges[0])
	l = hold(ecfg.Listen)
	if n, err := edge.Start(t.Context(), ecfg, edge.Options{}); err == nil || n != nil || !strings.Contains(err.Error(), ecfg.Listen) {
		t.Errorf("edge.Start on a taken port = %v, %v; want an error naming %s", n, err, ecfg.Listen)
	}
	l.Close()
	e, err := edge.Start(t.Context(), ecfg, edge.Options{})
	if err != nil {
		t.Fatalf("edge.Start once the port is free: %v (the failed start kept something open)", err)
	}
	stop(e)
}
