package server

import (
	"context"
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

func TestRegisterEdge(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	edge := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-eu-1"))
	e.enroll(t, "edge-eu-1", "eu", map[string]string{"pci": "yes"})
	// The region and labels in the request are ignored: the enrolled ones
	// stand, and the response says them.
	//lint:ignore SA1019 an edge may still send the deprecated region and labels: they must be ignored
	req := &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Region: "us", Address: "10.1.2.3:7443", Labels: map[string]string{"pci": "no"}}
	resp, err := edge.Register(ctx, req)
	if err != nil || resp.CentralNodeId != "central-1" || resp.Revision == 0 || resp.Lease.AsDuration() != DefaultEdgeLease ||
		resp.Region != "eu" || resp.Labels["pci"] != "yes" {
		t.Fatalf("Register = %v, %v; want region eu, pci=yes", resp, err)
	}
	// Registering again refreshes the record and keeps its identity.
	if _, err := edge.Register(ctx, req); err != nil {
		t.Fatalf("second Register: %v", err)
	}
	nodes, err := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops")).ListNodes(ctx, &kbv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 2 || nodes.Nodes[1].NodeId != "edge-eu-1" || nodes.Nodes[1].Region != "eu" ||
		nodes.Nodes[1].Kind != "edge" || nodes.Nodes[1].Address != "10.1.2.3:7443" || nodes.Nodes[1].Labels["pci"] != "yes" || !nodes.Nodes[1].Enrolled {
		t.Errorf("ListNodes = %v", nodes.Nodes)
	}

	// Only edge certificates may register.
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "sneaky")).Register(ctx, req)
	code(t, "a client registers as an edge", err, codes.PermissionDenied)
	for _, tc := range []struct {
		name string
		req  *kbv1.RegisterEdgeRequest
	}{
		{"no sealing key", &kbv1.RegisterEdgeRequest{Address: "10.1.2.3:7443"}},
		{"garbage sealing key", &kbv1.RegisterEdgeRequest{SealingPublicKey: []byte{1, 2, 3, 4}, Address: "10.1.2.3:7443"}},
		{"wildcard address", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "0.0.0.0:7443"}},
		{"no port", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "edge.example"}},
	} {
		_, err := edge.Register(ctx, tc.req)
		code(t, tc.name, err, codes.InvalidArgument)
	}
	// Streams are authenticated too: a certificate for another trust
	// domain, from the same CA, is refused before any handler.
	foreignTD := *e.ca
	foreignTD.TrustDomain = "other.test"
	ftd := &testEnv{addr: e.addr, ca: &foreignTD, dir: e.dir, caFile: e.caFile}
	fs, err := kbv1.NewEdgeSyncClient(ftd.connTD(t, "other.test", identity.Edge, "edge-x")).Watch(ctx, &kbv1.WatchRequest{})
	if err == nil {
		_, err = fs.Recv()
	}
	code(t, "Watch from another trust domain", err, codes.Unauthenticated)

	var denied bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "RegisterEdge" && r.Decision == "deny" && r.Outcome == "PermissionDenied" {
			denied = true
		}
	}
	if !denied {
		t.Error("the refused registration left no audit line")
	}
}

func TestFetchMaterial(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	const eu = `principal.region == "eu"`
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: eu},
		{KeyId: "eu-backend", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: "softkms:hsm-aes", Placement: eu},
		{KeyId: "unplaced", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP},
	} {
		if _, err := admin.CreateKey(ctx, k); err != nil {
			t.Fatalf("CreateKey %s: %v", k.KeyId, err)
		}
	}
	register := func(name, region string) (*sealed.PrivateKey, kbv1.EdgeSyncClient) {
		e.enroll(t, name, region, nil)
		sk, _ := sealed.GenerateKey()
		c := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, name))
		if _, err := c.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: name + ".example:7443"}); err != nil {
			t.Fatal(err)
		}
		return sk, c
	}
	euKey, euEdge := register("edge-eu-1", "eu")
	_, usEdge := register("edge-us-1", "us")

	enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-key", Plaintext: []byte("order 7"), EncryptionContext: map[string]string{"o": "7"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 1})
	if err != nil {
		t.Fatalf("eu edge FetchMaterial: %v", err)
	}
	material, err := sealed.Open(euKey, resp.SealedMaterial, "edge-eu-1", "eu-key", 1)
	if err != nil {
		t.Fatalf("opening the sealed material: %v", err)
	}
	// The material really is the key's: it opens the central tier's ciphertext.
	h, body, err := envelope.ParseHeader(enc.Ciphertext)
	if err != nil {
		t.Fatal(err)
	}
	k, err := e.svc.Registry().Get(ctx, "eu-key")
	if err != nil {
		t.Fatal(err)
	}
	dk, err := envelope.UnwrapDataKeyWithSalt(material, h.KeyID, h.Version, k.Salt, h.WrappedDEK)
	if err != nil {
		t.Fatalf("material does not unwrap the data key: %v", err)
	}
	if pt, err := dk.Open(h, body, map[string]string{"o": "7"}); err != nil || string(pt) != "order 7" {
		t.Errorf("opened %q, %v", pt, err)
	}

	_, err = usEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 1})
	code(t, "us edge fetches an eu key", err, codes.PermissionDenied)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "unplaced", KeyVersion: 1})
	code(t, "a key placed nowhere", err, codes.PermissionDenied)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-backend", KeyVersion: 1})
	code(t, "a backend-mode key", err, codes.FailedPrecondition)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 9})
	code(t, "a version that does not exist", err, codes.NotFound)
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-never")).FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key"})
	code(t, "an edge that is not enrolled", err, codes.PermissionDenied)
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "app")).FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key"})
	code(t, "a client", err, codes.PermissionDenied)

	var refused bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "HoldMaterial" && r.Key == "eu-key" && strings.HasSuffix(r.Principal, "/edge/edge-us-1") && r.Decision == "deny" {
			refused = true
		}
	}
	if !refused {
		t.Error("the refused fetch by the us edge left no audit line")
	}
}

func TestWatch(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-eu-1", "eu", nil)
	e.enroll(t, "edge-us-1", "us", nil)
	euKey, _ := sealed.GenerateKey()
	eu := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-eu-1"))
	if _, err := eu.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: euKey.PublicKey(), Address: "eu.example:7443", Prefetch: true}); err != nil {
		t.Fatal(err)
	}
	usKey, _ := sealed.GenerateKey()
	us := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-us-1"))
	if _, err := us.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: usKey.PublicKey(), Address: "us.example:7443", Prefetch: true}); err != nil {
		t.Fatal(err)
	}

	stream, err := eu.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recv := func(s kbv1.EdgeSync_WatchClient) *kbv1.WatchEvent {
		t.Helper()
		for {
			ev, err := s.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if ev.GetHeartbeat() == nil && ev.GetPolicy() == nil && ev.GetNodes() == nil {
				return ev
			}
		}
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	snap := first.GetSnapshot()
	if snap == nil || len(snap.Keys) != 1 || len(snap.Nodes) != 3 || snap.Policy.GetHash() == "" || len(snap.Policy.Files) != 1 {
		t.Fatalf("first event = %v, want a snapshot of 1 key, 3 nodes and the policy", first)
	}
	v1 := snap.Keys[0].Versions[0]
	m1, err := sealed.Open(euKey, v1.SealedMaterial, "edge-eu-1", "eu-key", 1)
	if err != nil || m1.Len() != 32 {
		t.Fatalf("snapshot material does not open: %v", err)
	}
	if hb, err := stream.Recv(); err != nil || hb.GetHeartbeat().GetLeaseExpires() == nil {
		t.Fatalf("second event = %v, %v; want a heartbeat", hb, err)
	}

	// Rotation arrives with both versions sealed; v1's material is unchanged.
	if _, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "eu-key"}); err != nil {
		t.Fatal(err)
	}
	ev := recv(stream)
	k := ev.GetKey()
	if k == nil || k.Metadata.PrimaryVersion != 2 || len(k.Versions) != 2 || ev.Revision <= first.Revision {
		t.Fatalf("after rotation: %v", ev)
	}
	m1b, _ := sealed.Open(euKey, k.Versions[0].SealedMaterial, "edge-eu-1", "eu-key", 1)
	m2, err := sealed.Open(euKey, k.Versions[1].SealedMaterial, "edge-eu-1", "eu-key", 2)
	if err != nil || !m1b.Equal(m1) || m2.Equal(m1) {
		t.Errorf("rotation event material: v1 same=%v, v2 distinct=%v, err %v", m1b.Equal(m1), !m2.Equal(m1), err)
	}
	resumeFrom := ev.Revision

	// Disabling withdraws the material.
	if _, err := admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "eu-key"}); err != nil {
		t.Fatal(err)
	}
	ev = recv(stream)
	if k := ev.GetKey(); k == nil || k.Metadata.State != kbv1.KeyState_KEY_STATE_DISABLED || len(k.Versions[0].SealedMaterial) != 0 {
		t.Errorf("after disable: %v", ev)
	}

	// The us edge sees the key but never its material.
	usStream, err := us.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	usSnap, err := usStream.Recv()
	if err != nil || len(usSnap.GetSnapshot().GetKeys()) != 1 || len(usSnap.GetSnapshot().Keys[0].Versions[1].SealedMaterial) != 0 {
		t.Errorf("us snapshot = %v, %v; want the key without material", usSnap, err)
	}

	// Resuming from a revision replays what came after it, without a snapshot.
	resumed, err := eu.Watch(ctx, &kbv1.WatchRequest{FromRevision: resumeFrom})
	if err != nil {
		t.Fatal(err)
	}
	ev = recv(resumed)
	if ev.GetSnapshot() != nil || ev.GetKey().GetMetadata().GetState() != kbv1.KeyState_KEY_STATE_DISABLED {
		t.Errorf("resumed stream's first change = %v, want the disable", ev)
	}

	// Clients may not watch.
	cs, err := kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "app")).Watch(ctx, &kbv1.WatchRequest{})
	if err == nil {
		_, err = cs.Recv()
	}
	code(t, "a client watches", err, codes.PermissionDenied)

	var held bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "HoldMaterial" && r.Key == "eu-key" && strings.HasSuffix(r.Principal, "/edge/edge-eu-1") && r.Decision == "allow" {
			held = true
		}
	}
	if !held {
		t.Error("material sent by Watch left no audit line")
	}
}

// TestAcknowledgeOnlyFromFollowingEdge: only an edge whose Watch stream is
// open has its acknowledgement recorded, never past the registry's
// revision, so a removed edge cannot claim to have applied everything once
// it is enrolled again.
func TestAcknowledgeOnlyFromFollowingEdge(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	e.enroll(t, "edge-1", "eu", nil)
	edge, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	ack := func() {
		t.Helper()
		if _, err := edge.sync.Acknowledge(ctx, &kbv1.AcknowledgeRequest{AppliedRevision: math.MaxUint64}); err != nil {
			t.Fatal(err)
		}
	}
	applied := func() uint64 { t.Helper(); return e.nodes(t)["edge-1"].GetAppliedRevision() }

	ack()
	if got := applied(); got != 0 {
		t.Errorf("without a Watch stream: applied revision %d, want 0", got)
	}
	stream, err := edge.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ack()
	if got, want := applied(), e.svc.Registry().Store().Revision(); got > want || got == 0 {
		t.Errorf("following: applied revision %d, want the registry's, %d", got, want)
	}
	if _, err := admin.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-1"}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	ack()
	e.enroll(t, "edge-1", "eu", nil)
	if _, _, err := e.register(t, "edge-1", ""); err != nil {
		t.Fatal(err)
	}
	if got := applied(); got != 0 {
		t.Errorf("removed, acknowledged, enrolled again: applied revision %d, want 0", got)
	}
}

// TestResumeAcknowledges: an edge that resumes its Watch from a revision
// is listed as having applied it, without an Acknowledge call — as after
// a central restart, when nothing changes for the edge to acknowledge. A
// revision past the registry's is not resumed: the edge gets a snapshot,
// and is not listed past the registry.
func TestResumeAcknowledges(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	if _, err := e.svc.CreateKey(ctx, broker.CreateParams{ID: "k", Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-1", "eu", nil)
	edge, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	rev := e.svc.Registry().Store().Revision()
	for _, from := range []uint64{rev, math.MaxUint64} {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := edge.sync.Watch(sctx, &kbv1.WatchRequest{FromRevision: from})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("resuming from %d: %v", from, err)
		}
		if snap := ev.GetSnapshot() != nil; snap != (from > rev) {
			t.Errorf("resuming from %d: first event %T, want a snapshot only past the registry's revision %d", from, ev.GetEvent(), rev)
		}
		if got := e.nodes(t)["edge-1"].GetAppliedRevision(); got != rev {
			t.Errorf("resumed from %d: applied revision %d, want %d", from, got, rev)
		}
		cancel()
	}
}
