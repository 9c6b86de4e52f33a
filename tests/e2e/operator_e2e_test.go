package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestDevStartLogsNoFailedCall: a first `keybroker dev` start, and the
// next from the same directory, log no "call failed": dev used to probe
// for its demo key with a DescribeKey it expected to be NotFound, and to
// enroll edges an earlier start had enrolled (AlreadyExists), and both
// were logged (and audited) as failed calls.
func TestDevStartLogsNoFailedCall(t *testing.T) {
	dir := t.TempDir()
	for _, start := range []string{"first", "second"} {
		p := framework.StartDev(t, dir, "--port", "0", "--log-format", "json")
		p.WaitReady(t)
		p.Interrupt(t)
		_, stderr := p.Output()
		for _, bad := range []string{`"call failed"`, "lost the central tier"} {
			if strings.Contains(stderr, bad) {
				t.Errorf("the %s keybroker dev start logs %s:\n%s", start, bad, stderr)
			}
		}
	}
}

// TestEdgeWithoutItsCentralTier runs an edge through what an operator
// meets when the central tier goes away and comes back, with real
// processes. The edge's reconnect backoff is made long (1 minute, so a
// retry the timer drives comes 30 s to 1 minute after a failure):
//
//   - started while the central tier is down, the edge says it is
//     waiting for it, not that it lost it;
//   - once the central tier is up, the edge follows it because its
//     connection came back (keybroker_edge_reconnect_wakes_total), well
//     before its backoff would have let it — it used to sit the backoff
//     out, listed as disconnected while calls through it succeeded;
//   - the central tier, stopped with the edge connected, ends the edge's
//     Watch stream and stops, rather than waiting for the stream until its
//     shutdown_timeout (30 s) ran out;
//   - without its central tier the edge answers keybroker nodes from its
//     replica, saying so, and neither its LookupKey nor the SDK's route
//     offers the central tier; it logs that it lost the central tier;
//   - when the central tier comes back, the edge follows it again at once.
func TestEdgeWithoutItsCentralTier(t *testing.T) {
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "")
	ctx := t.Context()
	e := &framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Prefetch: true, Staleness: time.Hour,
		Reconnect: "{initial_backoff: 1m, max_backoff: 2m}"}
	_, err := c.Admin.Admin.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: e.Name, Region: e.Region})
	must(t, "EnrollNode", err)
	_, err = c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"owner": framework.TrustDomain}, Placement: `principal.region == "eu"`})
	must(t, "CreateKey", err)
	centralAddr := c.Central.Addr

	// Well under the backoff's shortest wait (30 s), bounded generously
	// for a loaded machine; the wakes counter says what drove it.
	const followWithin = 25 * time.Second
	followed := func(what string) {
		t.Helper()
		deadline := time.Now().Add(followWithin)
		for {
			resp, err := c.Admin.Admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
			if err == nil && slices.ContainsFunc(resp.GetNodes(), func(n *kbv1.Node) bool { return n.GetNodeId() == e.Name && n.GetConnected() }) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the edge does not follow the central tier within %v, under its backoff:\n%s", what, followWithin, e.Proc.Logs())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A first start without the central tier.
	c.Central.Stop(t)
	c.StartEdge(t, e)
	framework.LogWithin(t, e.Proc, 0, "waiting for the central tier")
	if strings.Contains(e.Proc.Logs(), "lost the central tier") {
		t.Errorf("an edge that never had the central tier logs that it lost it:\n%s", e.Proc.Logs())
	}
	c.Central = c.StartCentral(t)
	followed("the central tier started after the edge")
	if w := c.OpsMetric(t, e.Proc.OpsAddr, "keybroker_edge_reconnect_wakes_total"); w < 1 {
		t.Errorf("keybroker_edge_reconnect_wakes_total = %v after the central tier came up, want >= 1: the timer, not the connection, ended the wait", w)
	}
	if _, stderr, code := c.CLIOut(t, e.Proc.Addr, identity.Admin, "ops", "nodes"); code != 0 || stderr != "" {
		t.Errorf("keybroker nodes at a connected edge = exit %d, stderr %q; want 0 and nothing on stderr", code, stderr)
	}

	// The central tier stops with the edge connected.
	mark := e.Proc.Mark()
	c.Central.Stop(t)
	if strings.Contains(c.Central.Logs(), "graceful stop timed out") {
		t.Errorf("the central tier waited for the edge's Watch stream until its shutdown timeout:\n%s", c.Central.Logs())
	}
	lost := framework.LogWithin(t, e.Proc, mark, "lost the central tier; reconnecting")
	if msg, _ := lost["err"].(string); !strings.Contains(msg, "stopping") {
		t.Errorf("the edge lost the central tier with %q, want the central tier saying it is stopping", msg)
	}

	// Without it, the edge answers from its replica.
	stdout, stderr, code := c.CLIOut(t, e.Proc.Addr, identity.Admin, "ops", "nodes", "--output", "json")
	if code != 0 {
		t.Fatalf("keybroker nodes at an edge without its central tier = exit %d: %s", code, stderr)
	}
	var nodes []nodeJSON
	must(t, "decoding keybroker nodes", json.Unmarshal([]byte(stdout), &nodes))
	ids := map[string]nodeJSON{}
	for _, n := range nodes {
		ids[n.NodeID] = n
	}
	if _, ok := ids["central-1"]; !ok || ids[e.Name].Connected {
		t.Errorf("keybroker nodes from the replica = %+v, want central-1 listed and %s not connected", nodes, e.Name)
	}
	if !strings.Contains(stderr, "edge-eu-1 cannot reach the central tier") || !strings.Contains(stderr, "revision") {
		t.Errorf("keybroker nodes from the replica says on stderr %q, want that it is the edge's replica and at which revision", stderr)
	}
	stdout, stderr, code = c.CLIOut(t, e.Proc.Addr, identity.Admin, "ops", "lookup", "--key", "eu-key", "--op", "encrypt", "--output", "json")
	if code != 0 {
		t.Fatalf("keybroker lookup at an edge without its central tier = exit %d: %s", code, stderr)
	}
	var offered []lookupJSON
	must(t, "decoding keybroker lookup", json.Unmarshal([]byte(stdout), &offered))
	if !slices.ContainsFunc(offered, func(n lookupJSON) bool { return n.NodeID == e.Name }) ||
		slices.ContainsFunc(offered, func(n lookupJSON) bool { return n.Kind != "edge" }) {
		t.Errorf("keybroker lookup at an edge without its central tier = %+v, want %s and no central node", offered, e.Name)
	}
	sdk := c.SDKClient(t, "eu", e.Proc.Addr)
	route, err := sdk.Route(ctx, "eu-key", kbv1.Operation_OPERATION_ENCRYPT)
	must(t, "Route", err)
	if slices.Contains(route, centralAddr) {
		t.Errorf("the SDK routes to the central tier its edge cannot reach: %v", route)
	}

	// It comes back.
	wakes := c.OpsMetric(t, e.Proc.OpsAddr, "keybroker_edge_reconnect_wakes_total")
	c.Central = c.StartCentral(t)
	followed("the central tier restarted")
	if w := c.OpsMetric(t, e.Proc.OpsAddr, "keybroker_edge_reconnect_wakes_total"); w <= wakes {
		t.Errorf("keybroker_edge_reconnect_wakes_total = %v after the central tier came back, want more than %v", w, wakes)
	}
}
