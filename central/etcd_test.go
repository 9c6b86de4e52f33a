package central_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/managed"
)

// TestCentralOnEtcd runs a central node whose registry is in a real etcd
// (store.etcd): a key it creates is in etcd, not in a registry.db, and is
// there again when the node starts afresh with an empty data directory.
func TestCentralOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	dc, err := devcluster.Start(t.Context(), devcluster.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := config.LoadCentral(dc.CentralConfig)
	if err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := dc.Shutdown(stopCtx); err != nil {
		t.Fatal(err)
	}
	ccfg.Store.Etcd = &config.EtcdStore{Endpoints: etcd.Endpoints(), Prefix: "/central-test/", DialTimeout: 5 * time.Second,
		MaxStaleness: 3 * time.Second}
	if err := ccfg.Validate(); err != nil {
		t.Fatal(err)
	}
	start := func(dataDir string) *central.Node {
		t.Helper()
		c := *ccfg
		c.DataDir = dataDir
		c.Audit.Path = filepath.Join(dataDir, "audit.jsonl")
		n, err := central.Start(t.Context(), &c, central.Options{})
		if err != nil {
			t.Fatalf("central.Start on etcd: %v", err)
		}
		return n
	}
	stop := func(n *central.Node) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	first := t.TempDir()
	n := start(first)
	// It announces itself, for the other centrals' LookupKey, while it runs.
	presence := func() int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := etcd.Client(t).Get(t.Context(), "/central-test/present/centrals/"+ccfg.NodeID)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) == 1 || time.Now().After(deadline) {
				return len(resp.Kvs)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if presence() != 1 {
		t.Error("the central did not announce itself in etcd")
	}
	if _, err := n.Service().CreateKey(t.Context(), broker.CreateParams{ID: "on-etcd", Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
		t.Fatal(err)
	}
	stop(n)
	if resp, err := etcd.Client(t).Get(t.Context(), "/central-test/present/centrals/"+ccfg.NodeID); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("a stopped central is still announced (%d, %v)", len(resp.Kvs), err)
	}
	if _, err := os.Stat(filepath.Join(first, "registry.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("registry.db in the data directory (%v): the registry should be in etcd", err)
	}
	resp, err := etcd.Client(t).Get(t.Context(), "/central-test/o/keys/on-etcd")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd holds %d records for the key, %v", len(resp.Kvs), err)
	}
	n = start(t.TempDir())
	k, err := n.Service().Registry().Get(t.Context(), "on-etcd")
	if err != nil || k.ID != "on-etcd" || k.Type != managed.AES256GCM {
		t.Errorf("after a start on a fresh data directory: %+v, %v", k, err)
	}
	// Cut off from etcd past max_staleness, it says it is not ready, so a
	// load balancer sends clients elsewhere, and exports its silence.
	tc, err := dc.ClientTLS(identity.Admin, "monitor")
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: tc}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + n.OpsAddr() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz while etcd answers = %d %s", code, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "keybroker_store_silence_seconds") {
		t.Error("/metrics has no keybroker_store_silence_seconds")
	}
	etcd.Members[0].Stop()
	deadline := time.Now().Add(time.Minute)
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "max_staleness") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz a minute after etcd stopped = %d %s; want 503 naming the store", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop(n) // without etcd: it stops, leaving its lease to run out
}
