package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// TestDevStartLogsNoFailedCall: a first `keybroker dev` start, and the
// next from the same directory, log no "call failed": dev used to probe
// for its demo key with a DescribeKey it expected to be NotFound, and to
// enroll edges an earlier start had enrolled (AlreadyExists), and both
// were logged (and audited) as failed calls.
func TestDevStartLogsNoFailedCall(t *testing.T) {
	dir := t.TempDir()
	for _, start := range []string{"first", "second"} {
		p := startDev(t, dir, "--port", "0", "--log-format", "json")
		p.waitReady(t)
		p.interrupt(t)
		_, stderr := p.output()
		for _, bad := range []string{`"call failed"`, "lost the central tier"} {
			if strings.Contains(stderr, bad) {
				t.Errorf("the %s keybroker dev start logs %s:\n%s", start, bad, stderr)
			}
		}
	}
}

// cliOut runs the CLI as kind/name and returns stdout, stderr and the
// exit code.
func (c *cluster) cliOut(t *testing.T, addr string, kind identity.Kind, name string, args ...string) (string, string, int) {
	t.Helper()
	r := runCLI(t, c.cliEnv(t, addr, kind, name), nil, args...)
	return r.stdout, r.stderr, r.code
}

// logWithin is p.waitLog bounded by applyWait, so that a line that never
// comes fails the test rather than hanging it.
func logWithin(t *testing.T, p *proc, from int, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(applyWait)
	for {
		p.mu.Lock()
		lines := slices.Clone(p.lines[from:])
		p.mu.Unlock()
		for _, line := range lines {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v:\n%s", p.name, msg, applyWait, p.logs())
		}
		time.Sleep(20 * time.Millisecond)
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
	c := newEdgeClusterOn(t, softkmsRoots, basicRoots, "")
	ctx := t.Context()
	e := &edgeNode{name: "edge-eu-1", region: "eu", prefetch: true, staleness: time.Hour,
		reconnect: "{initial_backoff: 1m, max_backoff: 2m}"}
	_, err := c.admin.admin.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: e.name, Region: e.region})
	must(t, "EnrollNode", err)
	_, err = c.admin.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"owner": e2eTrustDomain}, Placement: `principal.region == "eu"`})
	must(t, "CreateKey", err)
	centralAddr := c.central.addr

	// Well under the backoff's shortest wait (30 s), bounded generously
	// for a loaded machine; the wakes counter says what drove it.
	const followWithin = 25 * time.Second
	followed := func(what string) {
		t.Helper()
		deadline := time.Now().Add(followWithin)
		for {
			resp, err := c.admin.admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
			if err == nil && slices.ContainsFunc(resp.GetNodes(), func(n *kbv1.Node) bool { return n.GetNodeId() == e.name && n.GetConnected() }) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the edge does not follow the central tier within %v, under its backoff:\n%s", what, followWithin, e.p.logs())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A first start without the central tier.
	c.central.stop(t)
	c.startEdge(t, e)
	logWithin(t, e.p, 0, "waiting for the central tier")
	if strings.Contains(e.p.logs(), "lost the central tier") {
		t.Errorf("an edge that never had the central tier logs that it lost it:\n%s", e.p.logs())
	}
	c.central = c.startCentral(t)
	followed("the central tier started after the edge")
	if w := c.opsMetric(t, e.p.opsAddr, "keybroker_edge_reconnect_wakes_total"); w < 1 {
		t.Errorf("keybroker_edge_reconnect_wakes_total = %v after the central tier came up, want >= 1: the timer, not the connection, ended the wait", w)
	}
	if _, stderr, code := c.cliOut(t, e.p.addr, identity.Admin, "ops", "nodes"); code != 0 || stderr != "" {
		t.Errorf("keybroker nodes at a connected edge = exit %d, stderr %q; want 0 and nothing on stderr", code, stderr)
	}

	// The central tier stops with the edge connected.
	mark := e.p.mark()
	c.central.stop(t)
	if strings.Contains(c.central.logs(), "graceful stop timed out") {
		t.Errorf("the central tier waited for the edge's Watch stream until its shutdown timeout:\n%s", c.central.logs())
	}
	lost := logWithin(t, e.p, mark, "lost the central tier; reconnecting")
	if msg, _ := lost["err"].(string); !strings.Contains(msg, "stopping") {
		t.Errorf("the edge lost the central tier with %q, want the central tier saying it is stopping", msg)
	}

	// Without it, the edge answers from its replica.
	stdout, stderr, code := c.cliOut(t, e.p.addr, identity.Admin, "ops", "nodes", "--output", "json")
	if code != 0 {
		t.Fatalf("keybroker nodes at an edge without its central tier = exit %d: %s", code, stderr)
	}
	var nodes []nodeJSON
	must(t, "decoding keybroker nodes", json.Unmarshal([]byte(stdout), &nodes))
	ids := map[string]nodeJSON{}
	for _, n := range nodes {
		ids[n.NodeID] = n
	}
	if _, ok := ids["central-1"]; !ok || ids[e.name].Connected {
		t.Errorf("keybroker nodes from the replica = %+v, want central-1 listed and %s not connected", nodes, e.name)
	}
	if !strings.Contains(stderr, "edge-eu-1 cannot reach the central tier") || !strings.Contains(stderr, "revision") {
		t.Errorf("keybroker nodes from the replica says on stderr %q, want that it is the edge's replica and at which revision", stderr)
	}
	stdout, stderr, code = c.cliOut(t, e.p.addr, identity.Admin, "ops", "lookup", "--key", "eu-key", "--op", "encrypt", "--output", "json")
	if code != 0 {
		t.Fatalf("keybroker lookup at an edge without its central tier = exit %d: %s", code, stderr)
	}
	var offered []lookupJSON
	must(t, "decoding keybroker lookup", json.Unmarshal([]byte(stdout), &offered))
	if !slices.ContainsFunc(offered, func(n lookupJSON) bool { return n.NodeID == e.name }) ||
		slices.ContainsFunc(offered, func(n lookupJSON) bool { return n.Kind != "edge" }) {
		t.Errorf("keybroker lookup at an edge without its central tier = %+v, want %s and no central node", offered, e.name)
	}
	sdk := c.faultSDKClient(t, "eu", e.p.addr)
	route, err := sdk.Route(ctx, "eu-key", kbv1.Operation_OPERATION_ENCRYPT)
	must(t, "Route", err)
	if slices.Contains(route, centralAddr) {
		t.Errorf("the SDK routes to the central tier its edge cannot reach: %v", route)
	}

	// It comes back.
	wakes := c.opsMetric(t, e.p.opsAddr, "keybroker_edge_reconnect_wakes_total")
	c.central = c.startCentral(t)
	followed("the central tier restarted")
	if w := c.opsMetric(t, e.p.opsAddr, "keybroker_edge_reconnect_wakes_total"); w <= wakes {
		t.Errorf("keybroker_edge_reconnect_wakes_total = %v after the central tier came back, want more than %v", w, wakes)
	}
}
