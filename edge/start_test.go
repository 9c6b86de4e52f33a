package edge_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/edge"
)

// TestFailedStartRemovesWhatItMade: an edge start that fails (here: its
// ops port is taken, after data_dir, the audit log and the listeners have
// been made) removes the data_dir it made, and the parents it made, and
// nothing else: a data_dir that existed before stays, with the replica in
// it. A failed first start used to leave its data_dir behind.
func TestFailedStartRemovesWhatItMade(t *testing.T) {
	_, base := stoppedEdge(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	failStart := func(dataDir string) {
		t.Helper()
		cfg := *base
		cfg.DataDir, cfg.Audit.Path = dataDir, filepath.Join(dataDir, config.DefaultAuditFile)
		cfg.OpsListen = held.Addr().String()
		if n, err := edge.Start(t.Context(), &cfg, edge.Options{}); err == nil {
			_ = n.Shutdown(t.Context())
			t.Fatalf("edge.Start with its ops port taken succeeded")
		}
	}

	t.Run("a data_dir it made is removed, with the parents it made", func(t *testing.T) {
		top := filepath.Join(t.TempDir(), "new")
		failStart(filepath.Join(top, "edge", "data"))
		if _, err := os.Lstat(top); !os.IsNotExist(err) {
			entries, _ := filepath.Glob(filepath.Join(top, "*", "*", "*"))
			t.Errorf("after a failed first start, %s exists (%v): %v", top, err, entries)
		}
	})
	t.Run("a data_dir that existed stays", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		failStart(dir)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			t.Errorf("a failed start removed the data_dir that existed before it: %v", err)
		}
	})
	t.Run("a replica stays", func(t *testing.T) {
		failStart(base.DataDir)
		for _, name := range []string{"replica.db", "sealing.key"} {
			if _, err := os.Stat(filepath.Join(base.DataDir, name)); err != nil {
				t.Errorf("a failed start removed the edge's %s: %v", name, err)
			}
		}
	})
}

// stoppedEdge starts a dev cluster with one edge, stops the edge and
// returns the cluster and the edge's configuration, for a test to start
// the edge again its own way.
func stoppedEdge(t *testing.T) (*devcluster.Cluster, *config.Edge) {
	t.Helper()
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
	return dc, cfg
}
