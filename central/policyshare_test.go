package central

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/policy"
)

// TestPolicySetSharedOnEtcd: with the etcd store every central enforces
// the one set the store holds. The first node publishes its files; a
// node started with other files enforces the stored set and says its
// files differ; a SIGHUP publishes its files to every node; the reload
// interval publishes files that changed, and only those; each publication
// is audited; a stored set that does not load leaves the set in force.
func TestPolicySetSharedOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	ctx := t.Context()
	var audited atomic.Int32
	node := func(name, text string) (*policyShare, string) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "policy.cedar")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		engine, err := policy.NewEngine(path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/policies/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return &policyShare{st: st, engine: engine, node: name, log: slog.New(slog.DiscardHandler),
			audit: func(string, string, error) error { audited.Add(1); return nil }}, path
	}
	hashOf := func(text string) string {
		t.Helper()
		s, err := policy.Parse(map[string][]byte{"policy.cedar": []byte(text)})
		if err != nil {
			t.Fatal(err)
		}
		return s.Hash()
	}
	const base = "@id(\"admins\")\npermit (principal is Admin, action, resource);\n"
	p1, p2, p3 := base+"// one\n", base+"// two\n", base+"// three\n"
	a, pathA := node("central-a", p1)
	b, _ := node("central-b", p2)
	inForce := func(p *policyShare) string { return p.engine.Current().Hash() }

	if err := a.start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.start(ctx); err != nil {
		t.Fatal(err)
	}
	if inForce(b) != hashOf(p1) || b.differs() == "" || !strings.Contains(b.differs(), "central-a") {
		t.Errorf("b started with other files: in force %.12s (want the stored %.12s), differs %q", inForce(b), hashOf(p1), b.differs())
	}
	if audited.Load() != 1 {
		t.Errorf("%d publications audited at start, want 1 (a's)", audited.Load())
	}
	// The reload interval: b's files did not change since it read them.
	if published, err := b.reload(ctx, false); published || err != nil || inForce(b) != hashOf(p1) {
		t.Errorf("b's periodic reload with unchanged files: published %v, %v; in force %.12s", published, err, inForce(b))
	}
	// SIGHUP at b publishes its files; a follows.
	if published, err := b.reload(ctx, true); !published || err != nil {
		t.Fatalf("b's SIGHUP: published %v, %v", published, err)
	}
	if err := a.sync(ctx); err != nil || inForce(a) != hashOf(p2) || a.differs() == "" || b.differs() != "" {
		t.Errorf("after b's SIGHUP: a in force %.12s (want %.12s), %v; a differs %q; b differs %q", inForce(a), hashOf(p2), err, a.differs(), b.differs())
	}
	// a's files change: its reload interval publishes them.
	if err := os.WriteFile(pathA, []byte(p3), 0o600); err != nil {
		t.Fatal(err)
	}
	if published, err := a.reload(ctx, false); !published || err != nil {
		t.Fatalf("a's periodic reload with changed files: published %v, %v", published, err)
	}
	if err := b.sync(ctx); err != nil || inForce(b) != hashOf(p3) {
		t.Errorf("b after a's change: in force %.12s, %v; want %.12s", inForce(b), err, hashOf(p3))
	}
	if audited.Load() != 3 {
		t.Errorf("%d publications audited, want 3", audited.Load())
	}
	// A stored set that does not load (written by hand into etcd) leaves
	// the set in force.
	o, err := b.st.Get(ctx, kindPolicy, policySetID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.st.Put(ctx, kindPolicy, policySetID, []byte(`{"hash":"x","files":{"p.cedar":"cGVybWl0KA=="}}`), o.Revision); err != nil {
		t.Fatal(err)
	}
	if err := b.sync(ctx); err == nil || inForce(b) != hashOf(p3) {
		t.Errorf("a stored set that does not parse: %v; in force %.12s, want %.12s kept", err, inForce(b), hashOf(p3))
	}
}
