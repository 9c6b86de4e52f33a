package edgecache

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
)

// logBuffer is a log destination tests read while the cache writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFirstStartWaitsNotLost: an edge that has never followed the central
// tier logs that it is connecting and waiting for it — not that it "lost
// the central tier", which it never had (what a first start used to log,
// once per retry).
func TestFirstStartWaitsNotLost(t *testing.T) {
	var logs logBuffer
	cfg := edgeConfig(t, nil, "edge-1", t.TempDir())
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ec := open(t, cfg)
	startRun(t, ec)
	waitFor(t, "three attempts", func() bool { return ec.Stats().Reconnects >= 3 })
	out := logs.String()
	for _, want := range []string{"connecting to the central tier", "waiting for the central tier"} {
		if !strings.Contains(out, want) {
			t.Errorf("the first start's log does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "lost the central tier") {
		t.Errorf("an edge that never had the central tier logs that it lost it:\n%s", out)
	}
}

// TestEdgeWithoutCentral: an edge that has lost the central tier
//   - answers ListNodes from its replica, saying so (from_replica: the
//     edge, its revision, when it last heard from the central tier), with
//     its own entry not connected, where it used to fail Unavailable;
//   - authorizes that call with the replica's policy as the central tier
//     would: a client the policy does not let list nodes is refused;
//   - no longer offers the central tier in LookupKey, which the SDK would
//     route to;
//   - audits both answers;
//   - logs that it lost the central tier (it had it).
func TestEdgeWithoutCentral(t *testing.T) {
	c := startCentral(t)
	var logs logBuffer
	cfg := edgeConfig(t, c, "edge-1", t.TempDir())
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ec := open(t, cfg)
	startRun(t, ec)
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE,
		Labels: appLabels, Placement: `principal.region == "eu"`})
	synced(t, c, ec)
	es := serveEdge(t, c, ec)
	ctx := t.Context()
	admin, appKB := es.admin(t), es.kb(t, identity.Client, "app")
	appAdmin := kbv1.NewKeyAdminClient(dial(t, c.ca, es.dir, c.caFile, es.addr, app))
	lookup := func() []string {
		t.Helper()
		resp, err := appKB.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "eu-key", Operation: kbv1.Operation_OPERATION_ENCRYPT})
		must(t, "LookupKey", err)
		var ids []string
		for _, n := range resp.GetNodes() {
			ids = append(ids, n.GetNodeId())
		}
		return ids
	}
	if got := lookup(); !slices.Contains(got, "central-1") {
		t.Fatalf("LookupKey with the central tier up = %v, want central-1 offered", got)
	}
	resp, err := admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
	must(t, "ListNodes with the central tier up", err)
	if resp.GetFromReplica() != nil {
		t.Errorf("ListNodes forwarded to the central tier says from_replica %v", resp.GetFromReplica())
	}

	rev := ec.Revision()
	c.stop()
	waitFor(t, "the edge to lose the central tier", func() bool { return !ec.Connected() })

	resp, err = admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
	if err != nil {
		t.Fatalf("ListNodes at an edge without its central tier = %v, want the replica's inventory", err)
	}
	r := resp.GetFromReplica()
	if r.GetNodeId() != "edge-1" || r.GetRevision() != rev || r.GetSyncedAt() == nil {
		t.Errorf("from_replica = %v, want edge-1 at revision %d with its last synchronisation time", r, rev)
	}
	ids := map[string]*kbv1.Node{}
	for _, n := range resp.GetNodes() {
		ids[n.GetNodeId()] = n
	}
	if ids["central-1"] == nil || ids["edge-1"] == nil || ids["edge-1"].GetConnected() {
		t.Errorf("replica inventory = %v, want central-1 and edge-1, edge-1 not connected", resp.GetNodes())
	}
	if _, err := appAdmin.ListNodes(ctx, &kbv1.ListNodesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListNodes as a client the policy does not allow, from the replica = %v, want PermissionDenied", err)
	}
	// Both answers from the replica are audited at the edge.
	data, err := os.ReadFile(filepath.Join(es.dir, "audit.jsonl"))
	must(t, "reading the edge's audit log", err)
	var allowed, denied int
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r audit.Record
		must(t, "audit line", json.Unmarshal(l, &r))
		if r.Operation != "ListNodes" || r.Backend != servedLocal {
			continue
		}
		switch {
		case r.Decision == "allow" && r.Outcome == "ok" && strings.HasSuffix(r.Principal, "/admin/ops"):
			allowed++
		case r.Decision == "deny" && r.Outcome == codes.PermissionDenied.String() && strings.HasSuffix(r.Principal, "/client/app"):
			denied++
		}
	}
	if allowed != 1 || denied != 1 {
		t.Errorf("the edge audited %d allowed and %d denied ListNodes from its replica, want 1 and 1:\n%s", allowed, denied, data)
	}
	if got := lookup(); slices.Contains(got, "central-1") || !slices.Contains(got, "edge-1") {
		t.Errorf("LookupKey at an edge without its central tier = %v, want edge-1 and not central-1", got)
	}
	if !strings.Contains(logs.String(), "lost the central tier") {
		t.Errorf("the edge does not log that it lost the central tier:\n%s", logs.String())
	}
}
