package e2e

// The process tests of the edge tier: one `keybroker central` on a SoftHSM2
// token and three `keybroker edge` processes in two regions, each a real
// process with its own data directory, talking gRPC over mutual TLS.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/sealed"
)

// edgeNode is one edge of the test cluster.
type edgeNode struct {
	name, region string
	prefetch     bool
	staleness    time.Duration
	// via is the address the edge dials for the central tier (a proxy in
	// the fault tests); empty means central's own.
	via string
	// reconnect is the edge's reconnect mapping; empty means quick
	// retries (50ms, up to 500ms).
	reconnect string
	// tls is added to the edge's tls mapping (", deny: deny.txt").
	tls string
	// spiffe, when set, is the socket of a Workload API agent the edge
	// takes its identity from instead of certificate files (tls then
	// holds only what tls adds, and central.server_name is not set).
	spiffe      string
	dir, config string
	p           *proc
}

// edgeCluster is a central node on SoftHSM2 and its edges.
type edgeCluster struct {
	*cluster
	central *proc
	edges   map[string]*edgeNode
	order   []string
	admin   *rpc
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	addr := l.Addr().String()
	l.Close()
	return addr
}

// newEdgeCluster starts central on a fresh SoftHSM2 token, at a fixed port
// (so a restarted central is found again), with a 2s edge lease and a
// one-entry material cache (so tests can make it cold), then the edges.
func newEdgeCluster(t *testing.T, edges ...*edgeNode) *edgeCluster {
	t.Helper()
	// The material cache holds one entry so that misses reach the root of
	// trust; the loads these clusters carry (one principal at full speed,
	// in the fault suite too) are not meant to meet the per-principal
	// backend budget, which TestBackendBudgetEndToEnd tests.
	return newEdgeClusterOn(t, pkcs11Roots, append(basicRoots, rootKey{"root-ec", "ecdsa-p256"}, rootKey{"root-mac", "hmac-256"}), "material_cache: {size: 1}\n"+unboundedBudget, edges...)
}

// unboundedBudget lifts central.yaml's per-principal backend budget out of
// a load test's way.
const unboundedBudget = "backend_budget: {rate: 1000000, burst: 1000000}\n"

// newEdgeClusterOn is newEdgeCluster on the roots of trust open()
// provides, with the given root keys, and extra appended to central.yaml
// (after the 2s edge lease).
func newEdgeClusterOn(t *testing.T, open func(*testing.T, string) *rootsOfTrust, keys []rootKey, extra string, edges ...*edgeNode) *edgeCluster {
	t.Helper()
	c := &edgeCluster{cluster: newClusterOn(t, open, keys), edges: map[string]*edgeNode{}}
	cfg, err := os.ReadFile(c.config)
	must(t, "reading central.yaml", err)
	cfg = bytes.Replace(cfg, []byte("listen: 127.0.0.1:0\n"), []byte("listen: "+freePort(t)+"\n"), 1)
	cfg = append(cfg, "edges: {lease: 2s, heartbeat: 200ms}\n"+extra...)
	must(t, "writing central.yaml", os.WriteFile(c.config, cfg, 0o600))
	c.central = c.startCentral(t)
	c.admin = c.dial(t, c.central.addr, identity.Admin, "ops")
	for _, e := range edges {
		c.addEdge(t, e)
	}
	return c
}

// addEdge enrolls an edge in its region at central, writes its
// certificate and configuration and starts it.
func (c *edgeCluster) addEdge(t *testing.T, e *edgeNode) {
	t.Helper()
	if _, err := c.admin.admin.EnrollNode(t.Context(), &kbv1.EnrollNodeRequest{NodeId: e.name, Region: e.region}); err != nil {
		t.Fatalf("EnrollNode %s: %v", e.name, err)
	}
	c.startEdge(t, e)
}

// startEdge writes an enrolled edge's certificate and configuration and
// starts it.
func (c *edgeCluster) startEdge(t *testing.T, e *edgeNode) {
	t.Helper()
	e.dir = filepath.Join(c.dir, e.name)
	e.config = filepath.Join(c.dir, e.name+".yaml")
	id := fmt.Sprintf("tls: {ca: ca.crt, cert: %s.crt, key: %s.key%s}\n", e.name, e.name, e.tls)
	serverName := ", server_name: 127.0.0.1"
	if e.spiffe != "" {
		id = fmt.Sprintf("spiffe: {socket: %q}\n", e.spiffe)
		if e.tls != "" {
			id += "tls: {" + strings.TrimPrefix(e.tls, ", ") + "}\n"
		}
		serverName = ""
	} else if _, err := c.ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Edge, Name: e.name},
		[]string{"127.0.0.1"}, time.Hour, c.dir, e.name, c.caFile); err != nil {
		t.Fatal(err)
	}
	y := fmt.Sprintf(`node_id: %s
trust_domain: %s
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
%sdata_dir: %s
region: %s
central: {address: %q%s}
prefetch: %t
max_staleness: %s
reconnect: %s
`, e.name, e2eTrustDomain, id, e.name, e.region, cmp.Or(e.via, c.central.addr), serverName, e.prefetch, e.staleness,
		cmp.Or(e.reconnect, "{initial_backoff: 50ms, max_backoff: 500ms}"))
	must(t, "writing edge config", os.WriteFile(e.config, []byte(y), 0o600))
	e.p = startNode(t, "edge", e.config)
	c.edges[e.name] = e
	c.order = append(c.order, e.name)
}

// applyWait bounds waitApplied so that a lost event fails the test with the
// edges' logs rather than hanging it until the package timeout.
const applyWait = 60 * time.Second

// waitApplied waits until every edge follows central and has acknowledged
// revision rev — no sleeps: ListNodes reports what each edge acknowledged.
func (c *edgeCluster) waitApplied(t *testing.T, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(applyWait)
	for {
		resp, err := c.admin.admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
		if err == nil {
			ok := 0
			for _, n := range resp.GetNodes() {
				if n.GetKind() == "edge" && n.GetConnected() && n.GetAppliedRevision() >= rev {
					ok++
				}
			}
			if ok == len(c.edges) {
				return
			}
		}
		if time.Now().After(deadline) {
			for _, name := range c.order {
				p := c.edges[name].p
				t.Logf("%s log:\n%s", name, p.logs())
			}
			t.Fatalf("edges did not acknowledge revision %d within %v: %v %v", rev, applyWait, resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opsMetric sums the samples of a Prometheus metric on a node's /metrics.
func (c *edgeCluster) opsMetric(t *testing.T, opsAddr, name string) float64 {
	t.Helper()
	return c.faultMetric(t, opsAddr, name, "")
}

func code(err error) codes.Code { return status.Code(err) }

func TestEdgesEndToEnd(t *testing.T) {
	c := newEdgeCluster(t,
		&edgeNode{name: "edge-eu-1", region: "eu", prefetch: true, staleness: time.Hour},
		&edgeNode{name: "edge-eu-2", region: "eu", prefetch: false, staleness: time.Hour},
		&edgeNode{name: "edge-us-1", region: "us", prefetch: true, staleness: 2 * time.Second},
	)
	ctx := t.Context()
	// Processes and connections that outlive the subtest that starts them
	// belong to the whole test, so its cleanups stop them.
	top := t
	owner := map[string]string{"owner": e2eTrustDomain}
	aes, derive, wrap, backend := kbv1.KeyType_KEY_TYPE_AES_256_GCM, kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP, kbv1.KeyMode_KEY_MODE_BACKEND
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "shared", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "eu-data", Type: aes, Mode: wrap, Labels: owner, Placement: `principal.region == "eu"`},
		{KeyId: "hsm", Type: aes, Mode: backend, Labels: owner},
		{KeyId: "cold", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "tags", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "signer", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: wrap, Labels: owner, Placement: "true"},
	} {
		m, err := c.admin.admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.waitApplied(t, rev)

	// Clients of every node, as the same application.
	clients := map[string]*rpc{"central-1": c.dial(t, c.central.addr, identity.Client, "app")}
	nodes := []string{"central-1"}
	for _, name := range c.order {
		clients[name] = c.dial(t, c.edges[name].p.addr, identity.Client, "app")
		nodes = append(nodes, name)
	}
	ectx := map[string]string{"tenant": "7"}

	t.Run("encrypt anywhere, decrypt anywhere", func(t *testing.T) {
		for _, key := range []string{"shared", "eu-data", "hsm"} {
			for _, src := range nodes {
				pt := []byte("from " + src + " with " + key)
				enc, err := clients[src].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
				must(t, "Encrypt "+key+" at "+src, err)
				for _, dst := range nodes {
					dec, err := clients[dst].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx})
					if err != nil || !bytes.Equal(dec.GetPlaintext(), pt) {
						t.Errorf("%s: encrypted at %s, Decrypt at %s = %q, %v", key, src, dst, dec.GetPlaintext(), err)
					}
				}
			}
		}
		for _, src := range nodes {
			mac, err := clients[src].kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
			must(t, "GenerateMac at "+src, err)
			sig, err := clients[src].kb.Sign(ctx, &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
			must(t, "Sign at "+src, err)
			for _, dst := range nodes {
				vm, err := clients[dst].kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "tags", Message: []byte("m"), Mac: mac.GetMac()})
				if err != nil || !vm.GetValid() {
					t.Errorf("MAC from %s verified at %s = %v, %v", src, dst, vm.GetValid(), err)
				}
				vs, err := clients[dst].kb.Verify(ctx, &kbv1.VerifyRequest{KeyId: "signer", Input: &kbv1.VerifyRequest_Message{Message: []byte("m")}, Signature: sig.GetSignature()})
				if err != nil || !vs.GetValid() {
					t.Errorf("signature from %s verified at %s = %v, %v", src, dst, vs.GetValid(), err)
				}
			}
		}
	})

	t.Run("every key type and mode, made anywhere, checked everywhere", func(t *testing.T) {
		types := []kbv1.KeyType{aes, kbv1.KeyType_KEY_TYPE_HMAC_SHA256, kbv1.KeyType_KEY_TYPE_ECDSA_P256, kbv1.KeyType_KEY_TYPE_ED25519}
		// Backend mode needs a root key of the type's own algorithm on the
		// token; SoftHSM2 keeps no Ed25519 keys for it.
		backendRoot := map[kbv1.KeyType]string{aes: c.roots.ref("root-hsm-aes"), kbv1.KeyType_KEY_TYPE_HMAC_SHA256: c.roots.ref("root-mac"),
			kbv1.KeyType_KEY_TYPE_ECDSA_P256: c.roots.ref("root-ec")}
		var rev uint64
		var ids []string
		kinds := map[string]kbv1.KeyType{}
		for _, typ := range types {
			for _, mode := range []kbv1.KeyMode{derive, wrap, backend} {
				req := &kbv1.CreateKeyRequest{KeyId: strings.ToLower(fmt.Sprintf("m-%s-%s", typ, mode)), Type: typ, Mode: mode, Labels: owner, Placement: "true"}
				if mode == backend {
					if req.RootKey = backendRoot[typ]; req.RootKey == "" {
						continue
					}
				}
				req.KeyId = strings.NewReplacer("_", "-").Replace(req.KeyId)
				m, err := c.admin.admin.CreateKey(ctx, req)
				must(t, "CreateKey "+req.KeyId, err)
				rev = max(rev, m.GetRevision())
				ids = append(ids, req.KeyId)
				kinds[req.KeyId] = typ
			}
		}
		c.waitApplied(t, rev)
		msg := []byte("every node")
		for _, id := range ids {
			for _, src := range nodes {
				for _, dst := range nodes {
					var err error
					ok := true
					switch kinds[id] {
					case aes:
						var enc *kbv1.EncryptResponse
						if enc, err = clients[src].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: msg}); err == nil {
							var dec *kbv1.DecryptResponse
							dec, err = clients[dst].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
							ok = bytes.Equal(dec.GetPlaintext(), msg)
						}
					case kbv1.KeyType_KEY_TYPE_HMAC_SHA256:
						var mac *kbv1.GenerateMacResponse
						if mac, err = clients[src].kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: id, Message: msg}); err == nil {
							var v *kbv1.VerifyMacResponse
							v, err = clients[dst].kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: id, Message: msg, Mac: mac.GetMac()})
							ok = v.GetValid()
						}
					default:
						var sig *kbv1.SignResponse
						if sig, err = clients[src].kb.Sign(ctx, &kbv1.SignRequest{KeyId: id, Input: &kbv1.SignRequest_Message{Message: msg}}); err == nil {
							var v *kbv1.VerifyResponse
							v, err = clients[dst].kb.Verify(ctx, &kbv1.VerifyRequest{KeyId: id, Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.GetSignature()})
							ok = v.GetValid()
						}
					}
					if err != nil || !ok {
						t.Errorf("%s: made at %s, checked at %s: ok=%v, %v", id, src, dst, ok, err)
					}
				}
			}
		}
		if len(ids) != 11 {
			t.Errorf("%d type and mode combinations tried, want 11", len(ids))
		}
	})

	t.Run("placement: eu keys are served in eu and forwarded from us", func(t *testing.T) {
		for name, wantVia := range map[string]string{"edge-eu-1": "", "edge-eu-2": "", "edge-us-1": "edge-us-1"} {
			rctx, rid := withRequestID(t)
			if _, err := clients[name].kb.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("x")}); err != nil {
				t.Fatalf("Encrypt eu-data at %s: %v", name, err)
			}
			lines := c.auditLines(t, rid)
			switch {
			case wantVia == "" && len(lines) != 0:
				t.Errorf("%s served eu-data locally, but central audited %+v", name, lines)
			case wantVia != "" && (len(lines) != 1 || lines[0].Via != wantVia || lines[0].Principal != clients[name].id || lines[0].Outcome != "ok"):
				t.Errorf("%s forwarded eu-data: central audit lines %+v, want one ok line as %s via %s", name, lines, clients[name].id, wantVia)
			}
		}
		// The us edge asking for the material itself is refused and audited.
		us := c.dialEdgeSync(t, "edge-us-1")
		rctx, rid := withRequestID(t)
		_, err := us.FetchMaterial(rctx, &kbv1.FetchMaterialRequest{KeyId: "eu-data"})
		if code(err) != codes.PermissionDenied {
			t.Errorf("FetchMaterial(eu-data) by edge-us-1 = %v, want PermissionDenied", err)
		}
		if lines := c.auditLines(t, rid); len(lines) != 1 || lines[0].Decision != "deny" || lines[0].Operation != "HoldMaterial" {
			t.Errorf("the refusal's audit lines = %+v, want one HoldMaterial deny", lines)
		}
	})

	t.Run("LookupKey is the same from every node and following it works", func(t *testing.T) {
		for region, want := range map[string][]string{
			"eu": {"edge-eu-1/MATERIAL_HELD", "edge-eu-2/PLACEMENT_ALLOWS_FETCH", "central-1/ROOT_OF_TRUST"},
			"us": {"edge-eu-1/MATERIAL_HELD", "edge-eu-2/PLACEMENT_ALLOWS_FETCH", "edge-us-1/FORWARD_ONLY", "central-1/ROOT_OF_TRUST"},
		} {
			for _, from := range nodes {
				resp, err := clients[from].kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "eu-data", Operation: kbv1.Operation_OPERATION_ENCRYPT, ClientLabels: map[string]string{"region": region}})
				must(t, "LookupKey at "+from, err)
				var got []string
				for _, n := range resp.GetNodes() {
					got = append(got, n.GetNodeId()+"/"+strings.TrimPrefix(n.GetReason().String(), "LOOKUP_REASON_"))
				}
				if !slices.Equal(got, want) {
					t.Errorf("LookupKey(eu-data, encrypt, region=%s) at %s = %v, want %v", region, from, got, want)
				}
				first := c.dial(t, resp.GetNodes()[0].GetAddress(), identity.Client, "app")
				if _, err := first.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("x")}); err != nil {
					t.Errorf("following LookupKey to %s: %v", resp.GetNodes()[0].GetNodeId(), err)
				}
			}
		}
		// The CLI asks the same question of an edge and prints the same answer.
		out, code := c.cli(t, c.edges["edge-us-1"].p.addr, identity.Client, "app", nil,
			"lookup", "--key", "eu-data", "--op", "encrypt", "--label", "region=us", "--output", "json")
		var listed []struct {
			NodeID string `json:"node_id"`
			Reason string `json:"reason"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 4 || listed[0].NodeID != "edge-eu-1" || listed[3].NodeID != "central-1" {
			t.Errorf("keybroker lookup at edge-us-1 = %d %s; want edge-eu-1 first, central-1 last", code, out)
		}
		out, code = c.cli(t, c.edges["edge-eu-2"].p.addr, identity.Admin, "ops", nil, "nodes", "--output", "json")
		var nodesOut []struct {
			NodeID    string `json:"node_id"`
			Kind      string `json:"kind"`
			Connected bool   `json:"connected"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &nodesOut) != nil || len(nodesOut) != 4 {
			t.Errorf("keybroker nodes at edge-eu-2 = %d %s; want central and three edges", code, out)
		}
		for _, n := range nodesOut {
			if !n.Connected {
				t.Errorf("keybroker nodes: %s (%s) not connected", n.NodeID, n.Kind)
			}
		}
		if out, code := c.cli(t, c.central.addr, identity.Client, "app", nil, "lookup", "--key", "eu-data", "--op", "teleport"); code != 2 || !strings.Contains(out, "--op must be one of") {
			t.Errorf("keybroker lookup --op teleport = %d %s; want a usage error", code, out)
		}
	})

	t.Run("1000 cold decrypts of one data key: one FetchMaterial, one backend call", func(t *testing.T) {
		enc, err := clients["central-1"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "cold", Plaintext: []byte("cold")})
		must(t, "Encrypt cold", err)
		// The central material cache holds one version: using another key
		// evicts cold's, so the fetch below must ask the HSM again.
		_, err = clients["central-1"].kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("evict")})
		must(t, "GenerateMac tags", err)
		eu2 := c.edges["edge-eu-2"]
		fetches := c.opsMetric(t, eu2.p.opsAddr, "keybroker_edge_fetches_total")
		hsm := c.opsMetric(t, c.central.opsAddr, "keybroker_pkcs11_operations_total")
		var wg sync.WaitGroup
		var failed atomic.Int64
		rids := map[string]bool{}
		for range 1000 {
			rctx, rid := withRequestID(t)
			rids[rid] = true
			wg.Go(func() {
				dec, err := clients["edge-eu-2"].kb.Decrypt(rctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
				if err != nil || string(dec.GetPlaintext()) != "cold" {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n != 0 {
			t.Fatalf("%d of 1000 decrypts failed", n)
		}
		if got := c.opsMetric(t, eu2.p.opsAddr, "keybroker_edge_fetches_total") - fetches; got != 1 {
			t.Errorf("FetchMaterial calls for 1000 cold decrypts = %v, want 1", got)
		}
		if got := c.opsMetric(t, c.central.opsAddr, "keybroker_pkcs11_operations_total") - hsm; got != 1 {
			t.Errorf("HSM operations for 1000 cold decrypts = %v, want 1", got)
		}
		// The fetch is audited at central under the request id of the
		// decrypt that caused it, with the HSM call it cost.
		fetched := c.auditRecords(t, func(r audit.Record) bool { return rids[r.ClientRequestID] })
		if len(fetched) != 1 || fetched[0].Operation != "HoldMaterial" || fetched[0].Principal != "spiffe://"+e2eTrustDomain+"/edge/edge-eu-2" ||
			!slices.Equal(fetched[0].BackendCalls, []string{"pkcs11:derive"}) {
			t.Errorf("central audit lines of the 1000 decrypts = %+v; want one HoldMaterial by edge-eu-2 with backend_calls [pkcs11:derive]", fetched)
		}
	})

	// Ciphertexts made before the changes below, for after them.
	euCT, err := clients["edge-eu-1"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("kept")})
	must(t, "Encrypt eu-data", err)
	sharedCT, err := clients["edge-us-1"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("shared")})
	must(t, "Encrypt shared", err)

	t.Run("disable and rotate reach every edge", func(t *testing.T) {
		rot, err := c.admin.admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "shared"})
		must(t, "RotateKey", err)
		dis, err := c.admin.admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "eu-data"})
		must(t, "DisableKey", err)
		c.waitApplied(t, max(rot.GetRevision(), dis.GetRevision()))
		for _, name := range c.order {
			if _, err := clients[name].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: euCT.GetCiphertext()}); code(err) != codes.FailedPrecondition {
				t.Errorf("Decrypt of a disabled key at %s = %v, want FailedPrecondition", name, err)
			}
			enc, err := clients[name].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v2")})
			if err != nil || enc.GetKeyVersion() != 2 {
				t.Errorf("Encrypt after rotation at %s = version %d, %v; want version 2", name, enc.GetKeyVersion(), err)
			}
		}
		en, err := c.admin.admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "eu-data"})
		must(t, "EnableKey", err)
		c.waitApplied(t, en.GetRevision())
	})

	t.Run("kill -9 central under load: placed keys keep working, misses fail fast", func(t *testing.T) {
		var errs atomic.Int64
		var done atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, name := range []string{"edge-eu-1", "edge-us-1"} {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := clients[name].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()}); err != nil {
						errs.Add(1)
						t.Errorf("Decrypt at %s while central died: %v", name, err)
						return
					}
					done.Add(1)
				}
			})
		}
		for done.Load() < 200 {
			time.Sleep(time.Millisecond) // let the load start; not an assertion
		}
		c.central.kill()
		after := done.Load()
		for done.Load() < after+500 && errs.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		close(stop)
		wg.Wait()
		if n := errs.Load(); n != 0 {
			t.Fatalf("%d errors on placed keys after central died", n)
		}
		// A miss (a backend-mode key must be forwarded) fails fast.
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := clients["edge-eu-1"].kb.Encrypt(fctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
		if code(err) != codes.Unavailable || fctx.Err() != nil {
			t.Errorf("Encrypt(hsm) at an edge with central down = %v, want Unavailable at once", err)
		}
	})

	t.Run("past lease plus max_staleness an edge refuses", func(t *testing.T) {
		for {
			_, err := clients["edge-us-1"].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()})
			if code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "max_staleness") {
				break
			}
			if err != nil {
				t.Fatalf("Decrypt at a stale edge = %v, want success, then Unavailable naming max_staleness", err)
			}
			select {
			case <-ctx.Done():
				t.Fatal("edge-us-1 never went stale")
			case <-time.After(50 * time.Millisecond):
			}
		}
		// The other edges' windows (1h) are open.
		if _, err := clients["edge-eu-1"].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()}); err != nil {
			t.Errorf("edge-eu-1 within its window: %v", err)
		}
	})

	t.Run("an edge restarted without central serves from disk; no plaintext material on disk", func(t *testing.T) {
		eu1 := c.edges["edge-eu-1"]
		dk, err := clients["edge-eu-1"].kb.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "shared"})
		must(t, "GenerateDataKey", err)
		eu1.p.stop(t)
		secrets := materialOnDisk(t, eu1.dir, eu1.name)
		if len(secrets) == 0 {
			t.Fatal("no sealed material in edge-eu-1's replica")
		}
		secrets = append(secrets, dk.GetPlaintext())
		scanForSecrets(t, eu1.dir, secrets)
		eu1.p = startNode(top, "edge", eu1.config)
		cl := c.dial(top, eu1.p.addr, identity.Client, "app")
		for _, ct := range [][]byte{sharedCT.GetCiphertext(), euCT.GetCiphertext()} {
			if _, err := cl.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct}); err != nil {
				t.Errorf("Decrypt at a restarted edge with central down: %v", err)
			}
		}
		clients["edge-eu-1"] = cl
	})

	t.Run("central restarts: edges reconnect and resynchronise", func(t *testing.T) {
		c.central = c.startCentral(top)
		c.admin = c.dial(top, c.central.addr, identity.Admin, "ops")
		m, err := c.admin.admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "shared"})
		must(t, "RotateKey", err)
		c.waitApplied(t, m.GetRevision())
		for _, name := range c.order {
			enc, err := clients[name].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v3")})
			if err != nil || enc.GetKeyVersion() != 3 {
				t.Errorf("Encrypt at %s after central came back = version %d, %v; want 3", name, enc.GetKeyVersion(), err)
			}
		}
	})
}

// dialEdgeSync connects to central as an edge.
func (c *edgeCluster) dialEdgeSync(t *testing.T, name string) kbv1.EdgeSyncClient {
	t.Helper()
	id := identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Edge, Name: name}
	certPEM, keyPEM, err := c.ca.Issue(id, nil, time.Hour)
	must(t, "Issue", err)
	return kbv1.NewEdgeSyncClient(c.dialWith(t, c.central.addr, id.String(), certPEM, keyPEM).conn)
}

// materialOnDisk opens every sealed material blob in an edge's replica
// with the edge's own sealing key, to learn what must never appear in
// plaintext on its disk.
func materialOnDisk(t *testing.T, dir, edgeID string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
	must(t, "reading sealing.key", err)
	sk, err := sealed.ParsePrivateKey(raw)
	must(t, "ParsePrivateKey", err)
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	must(t, "opening replica.db", err)
	defer db.Close()
	var out [][]byte
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("keys")).ForEach(func(_, v []byte) error {
			ek := &kbv1.EdgeKey{}
			if err := proto.Unmarshal(v, ek); err != nil {
				return err
			}
			for _, ver := range ek.GetVersions() {
				if len(ver.GetSealedMaterial()) == 0 {
					continue
				}
				m, err := sealed.Open(sk, ver.GetSealedMaterial(), edgeID, ek.GetMetadata().GetKeyId(), ver.GetVersion())
				if err != nil {
					return err
				}
				out = append(out, bytes.Clone(m.Reveal()))
			}
			return nil
		})
	})
	must(t, "reading replica.db", err)
	return out
}

// scanForSecrets fails if any file under dir holds a secret raw, in hex or
// in base64.
func scanForSecrets(t *testing.T, dir string, secrets [][]byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s))} {
				if bytes.Contains(data, form) {
					t.Errorf("%s holds plaintext key material", path)
				}
			}
		}
		return nil
	})
	must(t, "scanning the data dir", err)
}
