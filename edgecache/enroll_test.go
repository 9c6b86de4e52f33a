package edgecache

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// TestEnrolledRegionGovernsPlacement: the edge's region is the one it is
// enrolled with, as the central tier answers it, and an admin moving the
// edge to another region withdraws the material it may no longer hold
// from memory and disk.
func TestEnrolledRegionGovernsPlacement(t *testing.T) {
	c := startCentral(t)
	ctx := asApp(t.Context())
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "eu-only", Type: aes256, Mode: derive, Labels: appLabels, Placement: `principal.region == "eu"`})
	ec := open(t, edgeConfig(t, c, "edge-1", t.TempDir())) // enrolled in eu
	startRun(t, ec)
	synced(t, c, ec)
	if got := ec.Region(); got != "eu" {
		t.Fatalf("Region() = %q, want the enrolled eu", got)
	}
	if _, _, err := opsByID(ec).Encrypt(ctx, "eu-only", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	euOnly, err := ec.Performer().Get(ctx, "eu-only")
	if err != nil {
		t.Fatal(err)
	}
	if s := ec.Stats(); s.Fetches != 1 || s.MaterialEntries != 1 || ec.disk.getMaterial(euOnly, 1) == nil {
		t.Fatalf("after a local Encrypt: %+v, want the material fetched and kept", s)
	}
	us := "us"
	if _, err := c.admin.UpdateNode(t.Context(), &kbv1.UpdateNodeRequest{NodeId: "edge-1", Region: &us}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the edge to hear it is in us now", func() bool { return ec.Region() == "us" })
	if s := ec.Stats(); s.MaterialEntries != 0 {
		t.Errorf("material entries after the edge moved to us = %d, want 0", s.MaterialEntries)
	}
	if ec.disk.getMaterial(euOnly, 1) != nil {
		t.Error("eu-only material is still on disk after the edge moved to us")
	}
	// Now forwarded, as the client's own signed call.
	srv := serveEdge(t, c, ec)
	kb := kbv1.NewKeyBrokerClient(dial(t, c.ca, srv.dir, c.caFile, srv.addr, app))
	if _, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "eu-only", Plaintext: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	if s := ec.Stats(); s.Forwards != 1 || s.Fetches != 1 {
		t.Errorf("after the move: %+v, want one forward and still one fetch", s)
	}
}

// TestRemovedEdgeForgetsItsReplica: an edge the central tier tells it was
// removed (its Watch stream's error) drops every key, its material in
// memory and the sealed blobs on disk, and serves nothing.
func TestRemovedEdgeForgetsItsReplica(t *testing.T) {
	c := startCentral(t)
	ctx := asApp(t.Context())
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "fetched", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "pushed", Type: aes256, Mode: wrap, Labels: appLabels, Placement: "true"})
	cfg := edgeConfig(t, c, "edge-1", t.TempDir())
	cfg.Prefetch = true
	ec := open(t, cfg)
	startRun(t, ec)
	synced(t, c, ec)
	if _, _, err := opsByID(ec).Encrypt(ctx, "fetched", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if n := sealedOnDisk(t, ec); n == 0 {
		t.Fatal("no sealed material on disk before the removal")
	}
	if _, err := c.admin.RemoveNode(t.Context(), &kbv1.RemoveNodeRequest{NodeId: "edge-1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the removed edge to forget its keys", func() bool {
		ec.mu.RLock()
		defer ec.mu.RUnlock()
		return len(ec.keys) == 0
	})
	if n := sealedOnDisk(t, ec); n != 0 {
		t.Errorf("%d sealed blobs on disk after the removal, want 0", n)
	}
	if s := ec.Stats(); s.MaterialEntries != 0 {
		t.Errorf("material entries after the removal = %d, want 0", s.MaterialEntries)
	}
	if _, _, err := opsByID(ec).Encrypt(ctx, "fetched", []byte("x"), nil); err == nil {
		t.Error("the removed edge still encrypts")
	}
	if n := c.node(t, "edge-1"); n != nil {
		t.Errorf("central still lists the removed edge: %v", n)
	}
}

// sealedOnDisk counts the sealed blobs in ec's replica.db: fetched ones and
// those Watch carried in key records.
func sealedOnDisk(t *testing.T, ec *Cache) int {
	t.Helper()
	s, err := ec.disk.load()
	must(t, "loading the replica", err)
	n := 0
	for _, k := range s.keys {
		for _, v := range k.GetVersions() {
			if len(v.GetSealedMaterial()) > 0 {
				n++
			}
		}
	}
	must(t, "reading fetched material", ec.disk.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaterial).ForEach(func(_, _ []byte) error { n++; return nil })
	}))
	return n
}

// TestExpectedRegionMustMatch: an edge whose configuration names a region
// other than the enrolled one does not follow the central tier, and says
// both.
func TestExpectedRegionMustMatch(t *testing.T) {
	c := startCentral(t)
	cfg := edgeConfig(t, c, "edge-1", t.TempDir()) // enrolled in eu
	cfg.ExpectRegion = "us"
	ec := open(t, cfg)
	progressed, err := ec.session(t.Context())
	if progressed || err == nil || !strings.Contains(err.Error(), `enrolled in region "eu"`) || !strings.Contains(err.Error(), `says region "us"`) {
		t.Errorf("session = %v, %v; want a refusal naming both regions", progressed, err)
	}
	cfg.ExpectRegion, cfg.ExpectLabels, cfg.DataDir = "eu", map[string]string{"zone": "a"}, t.TempDir()
	ec = open(t, cfg)
	if _, err := ec.session(t.Context()); err == nil || !strings.Contains(err.Error(), "labels") {
		t.Errorf("session with other labels = %v; want a refusal naming the labels", err)
	}
}

// TestForgetOnlyWhatIsHeld: an edge not enrolled retries Register, and
// hears not-enrolled each time; only the first, when it holds something,
// wipes the replica and logs it.
func TestForgetOnlyWhatIsHeld(t *testing.T) {
	var logs bytes.Buffer
	cfg := edgeConfig(t, nil, "edge-1", t.TempDir())
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ec := open(t, cfg)
	notEnrolled := errors.New("not enrolled")
	ec.forget(notEnrolled)
	if n := strings.Count(logs.String(), "level=ERROR"); n != 0 {
		t.Errorf("forgetting an empty replica logged %d errors, want 0:\n%s", n, logs.String())
	}
	if err := ec.apply(&kbv1.WatchEvent{Revision: 3, Event: &kbv1.WatchEvent_Nodes{Nodes: &kbv1.ListNodesResponse{}}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ec.forget(notEnrolled)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("forgetting a replica three times logged %d errors, want 1:\n%s", n, logs.String())
	}
	if ec.Revision() != 0 {
		t.Errorf("revision after forgetting = %d, want 0", ec.Revision())
	}
}
