package e2e

// Edge enrollment across real processes over mutual TLS: an edge no admin
// enrolled, an edge re-registering into another region, and an edge
// removed while it follows the central tier.

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	krpc "github.com/keybroker/keybroker/rpc"
	"github.com/keybroker/keybroker/sealed"
)

// lookupIDs is LookupKey(key, encrypt) for a client in region, at r, as
// node ids.
func lookupIDs(t *testing.T, r *rpc, key, region string) []string {
	t.Helper()
	resp, err := r.kb.LookupKey(t.Context(), &kbv1.LookupKeyRequest{KeyId: key, Operation: kbv1.Operation_OPERATION_ENCRYPT,
		ClientLabels: map[string]string{"region": region}})
	must(t, "LookupKey", err)
	var ids []string
	for _, n := range resp.GetNodes() {
		ids = append(ids, n.GetNodeId())
	}
	return ids
}

// eventually polls cond until it holds, failing after applyWait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(applyWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *edgeCluster) listed(t *testing.T) map[string]*kbv1.Node {
	t.Helper()
	resp, err := c.admin.admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
	must(t, "ListNodes", err)
	out := map[string]*kbv1.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetNodeId()] = n
	}
	return out
}

func TestEnrollmentEndToEnd(t *testing.T) {
	c := newEdgeCluster(t,
		&edgeNode{name: "edge-eu", region: "eu", prefetch: true, staleness: time.Hour},
		&edgeNode{name: "edge-us", region: "us", prefetch: true, staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": e2eTrustDomain}
	m, err := c.admin.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-only", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner, Placement: `principal.region == "eu"`})
	must(t, "CreateKey", err)
	c.waitApplied(t, m.GetRevision())
	atCentral := c.dial(t, c.central.addr, identity.Client, "app")
	if got := lookupIDs(t, atCentral, "eu-only", "eu"); len(got) == 0 || got[0] != "edge-eu" {
		t.Fatalf("LookupKey for eu clients = %v, want edge-eu first", got)
	}

	t.Run("an edge no admin enrolled is refused", func(t *testing.T) {
		rogue := &edgeNode{name: "edge-rogue", region: "eu", prefetch: true, staleness: time.Hour}
		c.startEdge(t, rogue)
		rec := rogue.p.waitLog(t, 0, "waiting for the central tier")
		if msg, _ := rec["err"].(string); !strings.Contains(msg, "not enrolled") || !strings.Contains(msg, "keybroker node enroll edge-rogue --region") {
			t.Errorf("the rogue edge's error = %q, want it not enrolled and the command that enrolls it", msg)
		}
		if n, ok := c.listed(t)["edge-rogue"]; ok {
			t.Errorf("ListNodes lists the edge no admin enrolled: %v", n)
		}
		if got := lookupIDs(t, atCentral, "eu-only", "eu"); slices.Contains(got, "edge-rogue") {
			t.Errorf("LookupKey lists the edge no admin enrolled: %v", got)
		}
		// The admin enrolls it with the CLI: it joins.
		out, code := c.cli(t, c.central.addr, identity.Admin, "ops", nil, "node", "enroll", "edge-rogue", "--region", "eu")
		if code != 0 || !strings.Contains(out, "edge-rogue") {
			t.Fatalf("keybroker node enroll = %d, %q", code, out)
		}
		eventually(t, "the enrolled edge to connect", func() bool { return c.listed(t)["edge-rogue"].GetConnected() })
		// And removed with the CLI, it leaves.
		out, code = c.cli(t, c.central.addr, identity.Admin, "ops", nil, "node", "remove", "edge-rogue")
		if code != 0 || !strings.Contains(out, "removed edge-rogue") {
			t.Fatalf("keybroker node remove = %d, %q", code, out)
		}
		rogue.p.kill()
	})

	t.Run("a us edge re-registering as eu stays in us", func(t *testing.T) {
		// The edge-us certificate, as a compromised edge-us would use it.
		us := kbv1.NewEdgeSyncClient(c.dial(t, c.central.addr, identity.Edge, "edge-us").conn)
		sk, err := sealed.GenerateKey()
		must(t, "sealing key", err)
		req := &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: c.edges["edge-us"].p.addr, Prefetch: true}
		//lint:ignore SA1019 the attack sends the deprecated region and labels: they must be ignored
		req.Region, req.Labels = "eu", map[string]string{"pci": "yes"}
		resp, err := us.Register(ctx, req)
		if err != nil || resp.GetRegion() != "us" || len(resp.GetLabels()) != 0 {
			t.Fatalf("Register claiming eu = %v, %v; want region us, no labels", resp, err)
		}
		if n := c.listed(t)["edge-us"]; n.GetRegion() != "us" || n.GetLabels()["pci"] != "" {
			t.Errorf("ListNodes after the claim: %v, want region us", n)
		}
		_, err = us.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
		if code(err) != codes.PermissionDenied {
			t.Errorf("edge-us FetchMaterial(eu-only) after claiming eu = %v, want PermissionDenied", err)
		}
		for _, at := range []*rpc{atCentral, c.dial(t, c.edges["edge-eu"].p.addr, identity.Client, "app")} {
			if got := lookupIDs(t, at, "eu-only", "eu"); len(got) == 0 || got[0] != "edge-eu" || slices.Contains(got, "edge-us") {
				t.Errorf("LookupKey for eu clients after edge-us claimed eu = %v, want edge-eu first and no edge-us", got)
			}
		}
	})

	t.Run("a removed edge is cut off mid-stream", func(t *testing.T) {
		eu := c.edges["edge-eu"]
		mark := eu.p.mark()
		if _, err := c.admin.admin.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-eu"}); err != nil {
			t.Fatal(err)
		}
		// The stream is cut with the news; the edge forgets its replica.
		eu.p.waitLog(t, mark, "the central tier says this edge is not enrolled: forgetting every key and its material")
		if n, ok := c.listed(t)["edge-eu"]; ok {
			t.Errorf("ListNodes still lists the removed edge: %v", n)
		}
		edgeCert := kbv1.NewEdgeSyncClient(c.dial(t, c.central.addr, identity.Edge, "edge-eu").conn)
		_, err := edgeCert.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
		if !krpc.IsNotEnrolled(err) {
			t.Errorf("FetchMaterial from the removed edge = %v, want a NotEnrolled refusal", err)
		}
		atUS := c.dial(t, c.edges["edge-us"].p.addr, identity.Client, "app")
		for name, at := range map[string]*rpc{"central": atCentral, "edge-us": atUS} {
			eventually(t, "LookupKey at "+name+" to drop the removed edge", func() bool {
				return !slices.Contains(lookupIDs(t, at, "eu-only", "eu"), "edge-eu")
			})
		}
		// The removed edge serves nothing from what it held.
		atEU := c.dial(t, eu.p.addr, identity.Client, "app")
		if _, err := atEU.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-only", Plaintext: []byte("x")}); err == nil {
			t.Error("the removed edge still encrypts with eu-only")
		}
	})
}
