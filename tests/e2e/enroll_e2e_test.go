package e2e

// Edge enrollment across real processes over mutual TLS: an edge no admin
// enrolled, an edge re-registering into another region, and an edge
// removed while it follows the central tier.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/tests/framework"
)

// lookupIDs is LookupKey(key, encrypt) for a client in region, at r, as
// node ids.
func lookupIDs(t *testing.T, r *framework.Conn, key, region string) []string {
	t.Helper()
	resp, err := r.KB.LookupKey(t.Context(), &kbv1.LookupKeyRequest{KeyId: key, Operation: kbv1.Operation_OPERATION_ENCRYPT,
		ClientLabels: map[string]string{"region": region}})
	must(t, "LookupKey", err)
	var ids []string
	for _, n := range resp.GetNodes() {
		ids = append(ids, n.GetNodeId())
	}
	return ids
}

func TestEnrollmentEndToEnd(t *testing.T) {
	c := framework.NewProcesses(t,
		&framework.EdgeNode{Name: "edge-eu", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-us", Region: "us", Prefetch: true, Staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	m, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-only", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner, Placement: `principal.region == "eu"`})
	must(t, "CreateKey", err)
	c.WaitApplied(t, m.GetRevision())
	atCentral := c.Dial(t, c.Central.Addr, identity.Client, "app")
	if got := lookupIDs(t, atCentral, "eu-only", "eu"); len(got) == 0 || got[0] != "edge-eu" {
		t.Fatalf("LookupKey for eu clients = %v, want edge-eu first", got)
	}

	t.Run("an edge no admin enrolled is refused", func(t *testing.T) {
		rogue := &framework.EdgeNode{Name: "edge-rogue", Region: "eu", Prefetch: true, Staleness: time.Hour}
		c.StartEdge(t, rogue)
		rec := rogue.Proc.WaitLog(t, 0, "waiting for the central tier")
		if msg, _ := rec["err"].(string); !strings.Contains(msg, "not enrolled") || !strings.Contains(msg, "keybroker node enroll edge-rogue --region") {
			t.Errorf("the rogue edge's error = %q, want it not enrolled and the command that enrolls it", msg)
		}
		if n, ok := c.Listed(t)["edge-rogue"]; ok {
			t.Errorf("ListNodes lists the edge no admin enrolled: %v", n)
		}
		if got := lookupIDs(t, atCentral, "eu-only", "eu"); slices.Contains(got, "edge-rogue") {
			t.Errorf("LookupKey lists the edge no admin enrolled: %v", got)
		}
		// The admin enrolls it with the CLI: it joins.
		out, code := c.CLIAs(t, c.Central.Addr, identity.Admin, "ops", nil, "node", "enroll", "edge-rogue", "--region", "eu")
		if code != 0 || !strings.Contains(out, "edge-rogue") {
			t.Fatalf("keybroker node enroll = %d, %q", code, out)
		}
		framework.Poll(t, "the enrolled edge to connect", func() (bool, string) {
			return c.Listed(t)["edge-rogue"].GetConnected(), "not connected"
		})
		// And removed with the CLI, it leaves.
		out, code = c.CLIAs(t, c.Central.Addr, identity.Admin, "ops", nil, "node", "remove", "edge-rogue")
		if code != 0 || !strings.Contains(out, "removed edge-rogue") {
			t.Fatalf("keybroker node remove = %d, %q", code, out)
		}
		rogue.Proc.Kill()
	})

	t.Run("a us edge re-registering as eu stays in us", func(t *testing.T) {
		// The edge-us certificate, as a compromised edge-us would use it.
		us := kbv1.NewEdgeSyncClient(c.Dial(t, c.Central.Addr, identity.Edge, "edge-us").Conn)
		sk, err := sealed.GenerateKey()
		must(t, "sealing key", err)
		req := &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: c.Edges["edge-us"].Proc.Addr, Prefetch: true}
		//lint:ignore SA1019 the attack sends the deprecated region and labels: they must be ignored
		req.Region, req.Labels = "eu", map[string]string{"pci": "yes"}
		resp, err := us.Register(ctx, req)
		if err != nil || resp.GetRegion() != "us" || len(resp.GetLabels()) != 0 {
			t.Fatalf("Register claiming eu = %v, %v; want region us, no labels", resp, err)
		}
		if n := c.Listed(t)["edge-us"]; n.GetRegion() != "us" || n.GetLabels()["pci"] != "" {
			t.Errorf("ListNodes after the claim: %v, want region us", n)
		}
		_, err = us.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
		if code(err) != codes.PermissionDenied {
			t.Errorf("edge-us FetchMaterial(eu-only) after claiming eu = %v, want PermissionDenied", err)
		}
		for _, at := range []*framework.Conn{atCentral, c.Dial(t, c.Edges["edge-eu"].Proc.Addr, identity.Client, "app")} {
			if got := lookupIDs(t, at, "eu-only", "eu"); len(got) == 0 || got[0] != "edge-eu" || slices.Contains(got, "edge-us") {
				t.Errorf("LookupKey for eu clients after edge-us claimed eu = %v, want edge-eu first and no edge-us", got)
			}
		}
	})

	t.Run("a removed edge is cut off mid-stream", func(t *testing.T) {
		eu := c.Edges["edge-eu"]
		mark := eu.Proc.Mark()
		if _, err := c.Admin.Admin.RemoveNode(ctx, &kbv1.RemoveNodeRequest{NodeId: "edge-eu"}); err != nil {
			t.Fatal(err)
		}
		// The stream is cut with the news; the edge forgets its replica.
		eu.Proc.WaitLog(t, mark, "the central tier says this edge is not enrolled: forgetting every key and its material")
		if n, ok := c.Listed(t)["edge-eu"]; ok {
			t.Errorf("ListNodes still lists the removed edge: %v", n)
		}
		edgeCert := kbv1.NewEdgeSyncClient(c.Dial(t, c.Central.Addr, identity.Edge, "edge-eu").Conn)
		_, err := edgeCert.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-only", KeyVersion: 1})
		if !wire.IsNotEnrolled(err) {
			t.Errorf("FetchMaterial from the removed edge = %v, want a NotEnrolled refusal", err)
		}
		atUS := c.Dial(t, c.Edges["edge-us"].Proc.Addr, identity.Client, "app")
		for name, at := range map[string]*framework.Conn{"central": atCentral, "edge-us": atUS} {
			framework.Poll(t, "LookupKey at "+name+" to drop the removed edge", func() (bool, string) {
				ids := lookupIDs(t, at, "eu-only", "eu")
				return !slices.Contains(ids, "edge-eu"), fmt.Sprintf("LookupKey lists %v", ids)
			})
		}
		// The removed edge serves nothing from what it held.
		atEU := c.Dial(t, eu.Proc.Addr, identity.Client, "app")
		if _, err := atEU.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-only", Plaintext: []byte("x")}); err == nil {
			t.Error("the removed edge still encrypts with eu-only")
		}
	})
}
