package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// enroll enrolls edge name as admin ops.
func (e *testEnv) enroll(t *testing.T, name, region string, labels map[string]string) {
	t.Helper()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.EnrollNode(t.Context(), &kbv1.EnrollNodeRequest{NodeId: name, Region: region, Labels: labels}); err != nil {
		t.Fatalf("EnrollNode %s: %v", name, err)
	}
}

// testEdge is an edge's EdgeSync client, registered.
type testEdge struct {
	name string
	sk   *sealed.PrivateKey
	sync kbv1.EdgeSyncClient
}

// register registers edge name (enrolled or not) claiming claimRegion, and
// returns the response.
func (e *testEnv) register(t *testing.T, name, claimRegion string, opts ...grpc.DialOption) (*testEdge, *kbv1.RegisterEdgeResponse, error) {
	t.Helper()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	var cc *grpc.ClientConn
	if len(opts) == 0 {
		cc = e.conn(t, identity.Edge, name)
	} else {
		files, err := e.ca.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: identity.Edge, Name: name}, nil, time.Hour, e.dir, "opts-edge-"+name, e.caFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := files.ClientConfig("")
		if cc, err = grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
	}
	te := &testEdge{name: name, sk: sk, sync: kbv1.NewEdgeSyncClient(cc)}
	req := &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: name + ".example:7443", Prefetch: true}
	//lint:ignore SA1019 an edge may still send the deprecated region and labels: they must be ignored
	req.Region, req.Labels = claimRegion, map[string]string{"claimed": "yes"}
	resp, err := te.sync.Register(t.Context(), req)
	return te, resp, err
}

func (e *testEnv) nodes(t *testing.T) map[string]*kbv1.Node {
	t.Helper()
	resp, err := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops")).ListNodes(t.Context(), &kbv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*kbv1.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetNodeId()] = n
	}
	return out
}

// waitNode polls ListNodes until cond holds for edge name (nil: absent).
func (e *testEnv) waitNode(t *testing.T, name, what string, cond func(*kbv1.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond(e.nodes(t)[name]) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, e.nodes(t)[name])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUnenrolledEdgeIsRefused: any edge certificate used to be able to
// register, with the region and labels it chose. Now Register, Watch and
// FetchMaterial from an edge no admin enrolled are refused with a
// NotEnrolled status that says how to enroll it, and audited.
func TestUnenrolledEdgeIsRefused(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	te, _, err := e.register(t, "edge-rogue", "eu")
	code(t, "Register from an edge no admin enrolled", err, codes.PermissionDenied)
	if !wire.IsNotEnrolled(err) || !strings.Contains(status.Convert(err).Message(), "keybroker node enroll edge-rogue --region") {
		t.Errorf("Register error %v: want a NotEnrolled status naming keybroker node enroll", err)
	}
	if n := e.nodes(t)["edge-rogue"]; n != nil {
		t.Errorf("the refused edge is in the inventory: %v", n)
	}
	s, err := te.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	code(t, "Watch from an edge not enrolled", err, codes.PermissionDenied)
	_, err = te.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "k"})
	code(t, "FetchMaterial from an edge not enrolled", err, codes.PermissionDenied)
	_, err = te.sync.Forward(ctx, &kbv1.ForwardRequest{Method: "/keybroker.v1.KeyBroker/GenerateRandom", Principal: "spiffe://kb.test/client/app"})
	code(t, "Forward from an edge not enrolled", err, codes.PermissionDenied)
	var denied bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "RegisterEdge" && r.Decision == "deny" && r.PolicyID == "not-enrolled" && strings.HasSuffix(r.Principal, "/edge/edge-rogue") {
			denied = true
		}
	}
	if !denied {
		t.Error("the refused registration left no audit line")
	}
}

// TestEnrollNode: the admin RPCs validate, refuse non-admins, and are
// audited; UpdateNode changes what placement sees.
func TestEnrollNode(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	n, err := admin.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: "edge-1", Region: "eu", Labels: map[string]string{"zone": "a"}})
	if err != nil || n.GetRegion() != "eu" || n.GetLabels()["zone"] != "a" || !n.GetEnrolled() {
		t.Fatalf("EnrollNode = %v, %v", n, err)
	}
	_, err = admin.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: "edge-1", Region: "us"})
	code(t, "enrolling an enrolled edge again", err, codes.AlreadyExists)
	for _, tc := range []struct {
		name string
		req  *kbv1.EnrollNodeRequest
	}{
		{"bad id", &kbv1.EnrollNodeRequest{NodeId: "a b", Region: "eu"}},
		{"bad region", &kbv1.EnrollNodeRequest{NodeId: "edge-2", Region: "EU West"}},
		{"bad label", &kbv1.EnrollNodeRequest{NodeId: "edge-2", Region: "eu", Labels: map[string]string{"a b": "c"}}},
	} {
		_, err := admin.EnrollNode(ctx, tc.req)
		code(t, tc.name, err, codes.InvalidArgument)
	}
	us := "us"
	n, err = admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-1", Region: &us, Labels: map[string]string{"pci": "yes"}})
	if err != nil || n.GetRegion() != "us" || n.GetLabels()["zone"] != "a" || n.GetLabels()["pci"] != "yes" {
		t.Errorf("UpdateNode (merge) = %v, %v", n, err)
	}
	n, err = admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-1", ReplaceLabels: true, Labels: map[string]string{"pci": "no"}})
	if err != nil || n.GetRegion() != "us" || len(n.GetLabels()) != 1 || n.GetLabels()["pci"] != "no" {
		t.Errorf("UpdateNode (replace) = %v, %v", n, err)
	}
	_, err = admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-none", Region: &us})
	code(t, "updating an edge not enrolled", err, codes.PermissionDenied)
	_, err = admin.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-none"})
	code(t, "removing an edge not enrolled", err, codes.NotFound)

	// Clients and edges may not enroll.
	for _, who := range []struct {
		kind identity.Kind
		name string
	}{{identity.Client, "app"}, {identity.Edge, "edge-1"}} {
		c := kbv1.NewKeyAdminClient(e.conn(t, who.kind, who.name))
		_, err := c.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: "edge-evil", Region: "eu"})
		code(t, string(who.kind)+" enrolls an edge", err, codes.PermissionDenied)
		_, err = c.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-1", Region: &us})
		code(t, string(who.kind)+" updates an edge", err, codes.PermissionDenied)
		_, err = c.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-1"})
		code(t, string(who.kind)+" removes an edge", err, codes.PermissionDenied)
	}
	ops := map[string]int{}
	for _, r := range auditLines(t, e.auditPath) {
		if strings.HasSuffix(string(r.Operation), "Node") && r.Operation != "ListNodes" {
			ops[string(r.Operation)+"/"+string(r.Decision)]++
		}
	}
	if ops["EnrollNode/allow"] < 2 || ops["UpdateNode/allow"] < 2 || ops["EnrollNode/deny"] < 2 || ops["RemoveNode/deny"] < 2 {
		t.Errorf("audit lines of the node calls = %v", ops)
	}
}

// TestEdgeCannotMoveItself: a us edge that re-registers claiming eu stays
// in us — for the inventory (so LookupKey never ranks it for eu clients)
// and for placement: it cannot fetch or be sent eu-only material.
func TestEdgeCannotMoveItself(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-only", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-us-1", "us", nil)
	if _, _, err := e.register(t, "edge-us-1", "us"); err != nil {
		t.Fatal(err)
	}
	te, resp, err := e.register(t, "edge-us-1", "eu") // the attack: re-register as eu
	if err != nil || resp.GetRegion() != "us" {
		t.Fatalf("re-Register claiming eu = %v, %v; want region us", resp, err)
	}
	if n := e.nodes(t)["edge-us-1"]; n.GetRegion() != "us" || n.GetLabels()["claimed"] != "" {
		t.Errorf("inventory after re-Register claiming eu: %v, want region us and no claimed label", n)
	}
	_, err = te.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
	code(t, "the us edge fetches eu-only material", err, codes.PermissionDenied)
	s, err := te.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range ev.GetSnapshot().GetKeys() {
		for _, v := range k.GetVersions() {
			if len(v.GetSealedMaterial()) != 0 {
				t.Errorf("Watch sent %s v%d's material to the us edge", k.GetMetadata().GetKeyId(), v.GetVersion())
			}
		}
	}
	e.waitNode(t, "edge-us-1", "the us edge to connect", func(n *kbv1.Node) bool { return n.GetConnected() })
	// LookupKey for an eu client: the us edge serves nothing locally, and
	// a forwarding edge in another region is not listed.
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	lk, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "eu-only", Operation: kbv1.Operation_OPERATION_ENCRYPT, ClientLabels: map[string]string{"region": "eu"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range lk.GetNodes() {
		if n.GetNodeId() == "edge-us-1" {
			t.Errorf("LookupKey for an eu client lists the us edge: %v", lk.GetNodes())
		}
	}
}

// TestRemoveNode: removing an edge cuts its Watch stream at once with a
// NotEnrolled status, refuses its FetchMaterial and Register, and drops it
// from the inventory other edges follow.
func TestRemoveNode(t *testing.T) {
	e := start(t, func(c *Config) { c.Heartbeat = 20 * time.Millisecond })
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-gone", "eu", nil)
	e.enroll(t, "edge-stays", "eu", nil)
	gone, _, err := e.register(t, "edge-gone", "")
	if err != nil {
		t.Fatal(err)
	}
	stays, _, err := e.register(t, "edge-stays", "")
	if err != nil {
		t.Fatal(err)
	}
	gs, err := gone.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Recv(); err != nil {
		t.Fatal(err)
	}
	ss, err := stays.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-gone"}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := gs.Recv()
		if err == nil {
			continue // events sent before the cut
		}
		if !wire.IsNotEnrolled(err) {
			t.Errorf("the removed edge's stream ended with %v, want a NotEnrolled status", err)
		}
		break
	}
	_, err = gone.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "k", KeyVersion: 1})
	if !wire.IsNotEnrolled(err) {
		t.Errorf("FetchMaterial from the removed edge = %v, want a NotEnrolled status", err)
	}
	_, _, err = e.register(t, "edge-gone", "eu")
	if !wire.IsNotEnrolled(err) {
		t.Errorf("Register from the removed edge = %v, want a NotEnrolled status", err)
	}
	if n, ok := e.nodes(t)["edge-gone"]; ok {
		t.Errorf("ListNodes still lists the removed edge: %v", n)
	}
	// The edge that stays hears the inventory without it.
	for {
		ev, err := ss.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if nodes := ev.GetNodes(); nodes != nil {
			listed := false
			for _, n := range nodes.GetNodes() {
				listed = listed || n.GetNodeId() == "edge-gone"
			}
			if !listed {
				break
			}
		}
	}
	// Enrolled again, it may register and fetch again.
	e.enroll(t, "edge-gone", "eu", nil)
	again, _, err := e.register(t, "edge-gone", "")
	if err != nil {
		t.Fatalf("Register after enrolling again: %v", err)
	}
	if _, err := again.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "k", KeyVersion: 1}); err != nil {
		t.Errorf("FetchMaterial after enrolling again: %v", err)
	}
}

// TestSecondWatchReplacesFirst: an edge follows the central tier on one
// stream; opening another cancels the first, so one edge cannot multiply
// the sealing and auditing each stream costs.
func TestSecondWatchReplacesFirst(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-1", "eu", nil)
	te, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	const streams = 5
	var open []kbv1.EdgeSync_WatchClient
	// Bounded, so that streams never cut fail the test rather than hang it.
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for range streams {
		s, err := te.sync.Watch(sctx, &kbv1.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
	}
	for i, s := range open[:streams-1] {
		var err error
		for err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Aborted {
			t.Errorf("stream %d ended with %v, want Aborted: replaced", i, err)
		}
	}
	if n := e.nodes(t)["edge-1"]; !n.GetConnected() {
		t.Errorf("the edge is not connected on its last stream: %v", n)
	}
	// Material was sealed and audited once per stream opened, not more.
	held := 0
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "HoldMaterial" && r.Key == "k" && r.Decision == "allow" {
			held++
		}
	}
	if held != streams {
		t.Errorf("%d HoldMaterial lines for %d streams opened one after the other", held, streams)
	}
}

// TestWatchSendDeadline: a stream whose edge never reads is cut once a
// Send has waited the send deadline, and the edge is listed as
// disconnected. The deadline is injected small; the test waits for the
// cut, it does not time it.
func TestWatchSendDeadline(t *testing.T) {
	e := start(t, func(c *Config) { c.SendTimeout = 100 * time.Millisecond; c.Heartbeat = 10 * time.Millisecond })
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	// Keys whose metadata (64 labels of 250 bytes each) overflows a 64 KiB
	// flow-control window and the server's 64 KiB write quota after it, so
	// that the Send after the snapshot blocks.
	labels := map[string]string{}
	for i := range 64 {
		labels[fmt.Sprintf("l%02d", i)] = strings.Repeat("v", 250)
	}
	for i := range 12 {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("k-%d", i), Labels: labels,
			Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "true"}); err != nil {
			t.Fatal(err)
		}
	}
	e.enroll(t, "edge-deaf", "eu", nil)
	// A fixed window (no BDP growth) and a reader that never reads.
	te, _, err := e.register(t, "edge-deaf", "", grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := te.sync.Watch(ctx, &kbv1.WatchRequest{}); err != nil {
		t.Fatal(err)
	}
	e.waitNode(t, "edge-deaf", "the stream to open", func(n *kbv1.Node) bool { return n.GetConnected() })
	e.waitNode(t, "edge-deaf", "the unread stream to be cut", func(n *kbv1.Node) bool { return n != nil && !n.GetConnected() })
}

// TestWatchWithholdsMaterialWhenAuditFails: Watch used to send material
// whose HoldMaterial audit line could not be written. Now the version goes
// without it.
func TestWatchWithholdsMaterialWhenAuditFails(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	e.enroll(t, "edge-1", "eu", nil)
	te, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := te.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetSnapshot() == nil {
		t.Fatalf("first event %v, %v; want the snapshot", ev, err)
	}
	e.audit.Close() // the log can no longer be written
	// A key made past the audited API (the registry's own), so the
	// change reaches the stream while the log is down.
	if _, err := e.svc.CreateKey(ctx, broker.CreateParams{ID: "k", Type: managed.AES256GCM, Mode: managed.ModeDerive, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		k := ev.GetKey()
		if k == nil {
			continue
		}
		for _, v := range k.GetVersions() {
			if len(v.GetSealedMaterial()) != 0 {
				t.Errorf("Watch sent k v%d's material with the audit log down", v.GetVersion())
			}
		}
		return
	}
}

// TestUpdateNodeMovesPlacement: an admin moving an edge to another region
// takes effect on its open stream and its fetches at once.
func TestUpdateNodeMovesPlacement(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-only", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: `principal.region == "eu"`}); err != nil {
		t.Fatal(err)
	}
	e.enroll(t, "edge-1", "eu", nil)
	te, _, err := e.register(t, "edge-1", "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := te.sync.Watch(ctx, &kbv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Recv()
	if err != nil || len(ev.GetSnapshot().GetKeys()) != 1 || len(ev.GetSnapshot().GetKeys()[0].GetVersions()[0].GetSealedMaterial()) == 0 {
		t.Fatalf("snapshot = %v, %v; want eu-only with its material", ev, err)
	}
	us := "us"
	if _, err := admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: "edge-1", Region: &us}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "eu-only"}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if k := ev.GetKey(); k != nil {
			for _, v := range k.GetVersions() {
				if len(v.GetSealedMaterial()) != 0 {
					t.Errorf("eu-only v%d's material went to the edge moved to us", v.GetVersion())
				}
			}
			break
		}
	}
	_, err = te.sync.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
	code(t, "FetchMaterial(eu-only) by the edge moved to us", err, codes.PermissionDenied)
}
