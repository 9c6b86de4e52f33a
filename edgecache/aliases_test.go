package edgecache

import (
	"errors"
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// TestAliasesAtTheEdge: an edge resolves named aliases from its replica:
// one given at the central tier, then moved to another key, then removed,
// each once the edge has followed; an edge that joins later learns them
// from its snapshot; a restarted edge from its disk.
func TestAliasesAtTheEdge(t *testing.T) {
	c := startCentral(t)
	ctx := t.Context()
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "k1", Type: aes256, Mode: derive, Labels: appLabels},
		&kbv1.CreateKeyRequest{KeyId: "k2", Type: aes256, Mode: derive, Labels: appLabels},
	)
	_, err := c.svc.CreateAlias(ctx, "app/prod", "k1")
	must(t, "CreateAlias", err)
	dir := t.TempDir()
	ec := open(t, edgeConfig(t, c, "edge-eu-1", dir))
	r := startRun(t, ec)
	resolve := func(ec *Cache, name string) string {
		t.Helper()
		id, err := ec.Performer().(pipeline.AliasResolver).ResolveAlias(ctx, name)
		if errors.Is(err, managed.ErrNotFound) {
			return ""
		}
		must(t, "ResolveAlias", err)
		return id
	}
	synced(t, c, ec)
	if got := resolve(ec, "app/prod"); got != "k1" {
		t.Errorf("from the snapshot, alias/app/prod names %q, want k1", got)
	}
	_, err = c.svc.UpdateAlias(ctx, "app/prod", "k1", "k2")
	must(t, "UpdateAlias", err)
	_, err = c.svc.CreateAlias(ctx, "app/old", "k1")
	must(t, "CreateAlias", err)
	synced(t, c, ec)
	if got, old := resolve(ec, "app/prod"), resolve(ec, "app/old"); got != "k2" || old != "k1" {
		t.Errorf("after the move, alias/app/prod names %q and alias/app/old %q; want k2 and k1", got, old)
	}
	_, err = c.svc.DeleteAlias(ctx, "app/old", "k1")
	must(t, "DeleteAlias", err)
	synced(t, c, ec)
	if got := resolve(ec, "app/old"); got != "" {
		t.Errorf("a deleted alias names %q at the edge", got)
	}

	r.stop(t)
	must(t, "Close", ec.Close())
	ec2 := open(t, edgeConfig(t, nil, "edge-eu-1", dir))
	if got := resolve(ec2, "app/prod"); got != "k2" {
		t.Errorf("after a restart, alias/app/prod names %q, want k2", got)
	}
}
