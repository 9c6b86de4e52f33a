package central_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// TestOpsPort: the ops port answers admins only (ops.allow's default) —
// a client or an edge certificate of the same CA gets 403 and an empty
// body — and /readyz says a backend is not ready without its error text.
func TestOpsPort(t *testing.T) {
	dir := t.TempDir()
	dc, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir, Edges: []devcluster.EdgeSpec{{Name: "edge-1", Region: "eu"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = dc.Shutdown(ctx)
	})
	if err := dc.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, kind identity.Kind, name, addr, path string) (int, string) {
		t.Helper()
		cfg, err := dc.ClientTLS(kind, name)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatalf("GET %s as %s/%s: %v", path, kind, name, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	nodes := map[string]string{"central": dc.Central.OpsAddr(), "edge": dc.Edges[0].OpsAddr()}
	for node, addr := range nodes {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if code, _ := get(t, identity.Admin, "monitor", addr, path); code != http.StatusOK {
				t.Errorf("%s GET %s as an admin = %d, want 200", node, path, code)
			}
			for _, who := range []struct {
				kind identity.Kind
				name string
			}{{identity.Client, devcluster.AppName}, {identity.Edge, "edge-1"}} {
				if code, body := get(t, who.kind, who.name, addr, path); code != http.StatusForbidden || body != "" {
					t.Errorf("%s GET %s as %s/%s = %d %q, want 403 and nothing else", node, path, who.kind, who.name, code, body)
				}
			}
		}
	}

	// The softkms keystore goes away: the backend is not healthy, and its
	// error (which names the file) stays in the log.
	store := filepath.Join(dir, "softkms.json")
	if err := os.Rename(store, store+".away"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Rename(store+".away", store) })
	code, body := get(t, identity.Admin, "monitor", dc.Central.OpsAddr(), "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `":"unavailable"`) {
		t.Errorf("/readyz without the keystore = %d %s; want 503 naming the backend unavailable", code, body)
	}
	for _, leak := range []string{"softkms.json", dir, "no such file"} {
		if strings.Contains(body, leak) {
			t.Errorf("/readyz body %s holds the backend's error text (%q)", body, leak)
		}
	}
}
