package edgecache

// The test harness: a real central tier (broker/server on softkms and a
// bbolt store, mutual TLS on loopback) and edge caches connected to it
// with their own edge certificates.

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/server"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/byid"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

const testTD = "kb.test"

// testPolicy lets admins do everything and the client "app" use keys
// labelled owner=app. Which edge may hold which key is each key's
// placement expression.
const testPolicy = `
@id("admins")
permit (principal is Admin, action, resource);

@id("app-keys")
permit (principal is Client, action, resource is Key)
when { principal == Client::"app" && resource.hasTag("owner") && resource.getTag("owner") == "app" };

@id("app-service")
permit (principal == Client::"app", action in [Action::"GenerateRandom", Action::"ListKeys"], resource is Service);

@id("edges-forward")
permit (principal is Edge, action == Action::"Forward", resource);
`

// appLabels marks a key as the app's.
var appLabels = map[string]string{"owner": "app"}

// app is the client the tests act as.
var app = identity.Identity{TrustDomain: testTD, Kind: identity.Client, Name: "app"}

// central is one in-process central node.
type central struct {
	addr      string
	dir       string
	ca        *identity.CA
	caFile    string
	auditPath string
	store     *store.Bolt
	stopOnce  sync.Once
	g         *grpc.Server
	admin     kbv1.KeyAdminClient
	kb        kbv1.KeyBrokerClient // as app
	svc       *broker.Service
	clock     *skewClock // the registry's and service's clock
}

// skewClock is the real clock moved forward by what Add adds, so that the
// lifecycle sweep can be made due without stopping time for leases and
// other real timers.
type skewClock struct {
	mu   sync.Mutex
	skew time.Duration
}

func (c *skewClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skew)
}

func (c *skewClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skew += d
}

// startCentral starts a central node: softkms roots (an HMAC root for
// derive keys, an AES root for wrap and backend keys), a bbolt registry,
// the Cedar policy above and an audit log, served over mutual TLS. Watch
// streams beat every 50ms so the edge's revision catches up quickly.
func startCentral(t *testing.T) *central {
	t.Helper()
	dir := t.TempDir()
	ctx := t.Context()
	kek := filepath.Join(dir, "kek")
	must(t, "writing the KEK", os.WriteFile(kek, bytes.Repeat([]byte("k"), 32), 0o600))
	ks := filepath.Join(dir, "softkms.json")
	sb, err := softkms.New(ctx, softkms.Config{Path: ks, KEKFile: kek})
	must(t, "softkms", err)
	for name, alg := range map[string]backends.Algorithm{"prf": backends.HMAC256, "aes": backends.AES256, "hsm-aes": backends.AES256} {
		_, err := sb.CreateKey(ctx, name, alg)
		must(t, "creating root "+name, err)
	}
	roots, err := broker.NewRoots(map[string]backends.Backend{"soft": sb}, map[string]string{"soft": "softkms:path=" + ks + ";kek-source=" + kek})
	must(t, "roots", err)
	must(t, "declaring root keys", roots.Declare([]broker.RootKey{
		{URI: "softkms:prf", Role: managed.RoleDerive}, {URI: "softkms:aes", Role: managed.RoleWrap}, {URI: "softkms:hsm-aes", Role: managed.RoleBackend}}))
	st, err := store.Open(filepath.Join(dir, "registry.db"), 0)
	must(t, "store", err)
	clk := &skewClock{}
	svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(st, clk.Now), Roots: roots, Now: clk.Now,
		Materials:    broker.NewMaterials(roots, 100, time.Hour, nil),
		DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf", managed.ModeWrap: "softkms:aes"}})
	must(t, "service", err)
	polFile := filepath.Join(dir, "policy.cedar")
	must(t, "writing the policy", os.WriteFile(polFile, []byte(testPolicy), 0o600))
	pe, err := policy.NewEngine(polFile)
	must(t, "policy", err)
	auditPath := filepath.Join(dir, "audit.jsonl")
	al, err := audit.Open(auditPath, 0)
	must(t, "audit", err)
	ca, err := identity.NewCA(testTD, time.Hour)
	must(t, "CA", err)
	caFile := filepath.Join(dir, "ca.crt")
	must(t, "writing the CA", ca.WriteCA(caFile, filepath.Join(dir, "ca.key")))
	files, err := ca.IssueFiles(identity.Identity{TrustDomain: testTD, Kind: identity.Central, Name: "central-1"}, []string{"127.0.0.1"}, time.Hour, dir, "central", caFile)
	must(t, "central certificate", err)
	tlsCfg, err := files.ServerConfig()
	must(t, "server TLS", err)
	srv, err := server.New(server.Config{Service: svc, Policy: pe, Audit: al, NodeID: "central-1", TrustDomain: testTD,
		Address: "127.0.0.1:0", Lease: 30 * time.Second, Heartbeat: 50 * time.Millisecond, ClientCAs: tlsCfg.ClientCAs})
	must(t, "server", err)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.UnaryInterceptor(srv.UnaryInterceptor()), grpc.StreamInterceptor(srv.StreamInterceptor()))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	go g.Serve(lis)
	c := &central{addr: lis.Addr().String(), dir: dir, ca: ca, caFile: caFile, auditPath: auditPath, store: st, g: g, svc: svc, clock: clk}
	t.Cleanup(func() { c.stop(); al.Close(); st.Close(); roots.Close() })
	c.admin = kbv1.NewKeyAdminClient(c.conn(t, identity.Admin, "ops"))
	c.kb = kbv1.NewKeyBrokerClient(c.conn(t, identity.Client, "app"))
	return c
}

// stop takes the central node off the network (idempotent).
func (c *central) stop() { c.stopOnce.Do(c.g.Stop) }

// conn dials the central node as kind/name.
func (c *central) conn(t *testing.T, kind identity.Kind, name string) *grpc.ClientConn {
	t.Helper()
	return dial(t, c.ca, c.dir, c.caFile, c.addr, identity.Identity{TrustDomain: testTD, Kind: kind, Name: name})
}

// dial connects to addr over mutual TLS with a certificate for id, signing
// forward proofs as the SDK does when an edge asks for one.
func dial(t *testing.T, ca *identity.CA, dir, caFile, addr string, id identity.Identity, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return dialSigning(t, ca, dir, caFile, addr, id, true, opts...)
}

func dialSigning(t *testing.T, ca *identity.CA, dir, caFile, addr string, id identity.Identity, sign bool, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	files, err := ca.IssueFiles(id, nil, time.Hour, dir, string(id.Kind)+"-"+id.Name, caFile)
	must(t, "issuing a certificate for "+id.String(), err)
	cfg, err := files.ClientConfig("127.0.0.1")
	must(t, "client TLS", err)
	base := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if sign {
		signer, _ := cfg.Certificates[0].PrivateKey.(crypto.Signer)
		base = append(base, grpc.WithChainUnaryInterceptor(forwardproof.NewInterceptor(signer, nil).Unary))
	}
	cc, err := grpc.NewClient(addr, append(base, opts...)...)
	must(t, "dial "+addr, err)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// revision is the central registry's revision now.
func (c *central) revision() uint64 { return c.store.Revision() }

// createKeys creates keys at the central tier.
func (c *central) createKeys(t *testing.T, reqs ...*kbv1.CreateKeyRequest) {
	t.Helper()
	for _, r := range reqs {
		if _, err := c.admin.CreateKey(t.Context(), r); err != nil {
			t.Fatalf("CreateKey %s: %v", r.GetKeyId(), err)
		}
	}
}

// auditLines reads the central audit log.
func (c *central) auditLines(t *testing.T) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(c.auditPath)
	must(t, "reading the audit log", err)
	var out []audit.Record
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r audit.Record
		must(t, "audit line", json.Unmarshal(l, &r))
		out = append(out, r)
	}
	return out
}

// holdLines counts the central's HoldMaterial decisions for key by edge.
func (c *central) holdLines(t *testing.T, edge, key, decision string) int {
	t.Helper()
	n := 0
	for _, r := range c.auditLines(t) {
		if r.Operation == audit.Operation(policy.HoldMaterial) && r.Key == key && strings.HasSuffix(r.Principal, "/edge/"+edge) && string(r.Decision) == decision {
			n++
		}
	}
	return n
}

// node is what ListNodes at the central tier says of an edge.
func (c *central) node(t *testing.T, id string) *kbv1.Node {
	t.Helper()
	resp, err := c.admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
	must(t, "ListNodes", err)
	for _, n := range resp.GetNodes() {
		if n.GetNodeId() == id {
			return n
		}
	}
	return nil
}

// edgeConn connects to the central node as edge id.
func (c *central) edgeConn(t *testing.T, id string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return dial(t, c.ca, c.dir, c.caFile, c.addr, identity.Identity{TrustDomain: testTD, Kind: identity.Edge, Name: id}, opts...)
}

// deadConn is a connection to an address where nothing listens: an edge
// that cannot reach the central tier.
func deadConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	addr := l.Addr().String()
	l.Close()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(nil)))
	must(t, "dial", err)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// enroll enrolls edge id at c with region and labels, unless it is
// enrolled already (a test restarting an edge).
func (c *central) enroll(t *testing.T, id, region string, labels map[string]string) {
	t.Helper()
	_, err := c.admin.EnrollNode(t.Context(), &kbv1.EnrollNodeRequest{NodeId: id, Region: region, Labels: labels})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatalf("EnrollNode %s: %v", id, err)
	}
}

// edgeConfig is a Config for edge id, enrolled in region eu, connected to c (nil:
// to nowhere), with its data in dir.
func edgeConfig(t *testing.T, c *central, id, dir string) Config {
	t.Helper()
	var cc grpc.ClientConnInterface
	if c != nil {
		c.enroll(t, id, "eu", nil)
		cc = c.edgeConn(t, id)
	} else {
		cc = deadConn(t)
	}
	return Config{NodeID: id, TrustDomain: testTD, Address: id + ".example:7443", MaxStaleness: time.Hour,
		DataDir: dir, Central: cc, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
}

// open opens a cache and closes it at the end of the test.
func open(t *testing.T, cfg Config) *Cache {
	t.Helper()
	ec, err := Open(cfg)
	must(t, "Open", err)
	t.Cleanup(func() { ec.Close() })
	return ec
}

// running is a Cache.Run in progress.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

// startRun starts ec.Run; stop (also run at cleanup) cancels it and waits.
func startRun(t *testing.T, ec *Cache) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- ec.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run = %v after cancellation, want nil", err)
	}
	r.done <- nil // a later stop returns at once
}

// waitFor polls cond until it holds, failing the test after a bound.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// synced waits until ec has applied the central registry's current
// revision, holds a lease, and the central node lists it as connected with
// that revision acknowledged.
func synced(t *testing.T, c *central, ec *Cache) uint64 {
	t.Helper()
	var rev uint64
	waitFor(t, "the edge to apply and acknowledge the central revision", func() bool {
		rev = c.revision()
		if ec.Revision() < rev || ec.LeaseExpires().IsZero() || !ec.Connected() {
			return false
		}
		n := c.node(t, ec.cfg.NodeID)
		return n != nil && n.GetConnected() && n.GetAppliedRevision() >= rev
	})
	return rev
}

// asApp is ctx carrying the client identity an edge forwards as.
func asApp(ctx context.Context) context.Context { return identity.NewContext(ctx, app) }

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// edgeServer is an edge cache served over gRPC.
type edgeServer struct {
	c         *central
	addr, dir string
}

// serveEdge serves ec's KeyBroker and KeyAdmin over mutual TLS, assembled
// as package edge does.
func serveEdge(t *testing.T, c *central, ec *Cache) *edgeServer {
	t.Helper()
	dir := t.TempDir()
	al, err := audit.Open(filepath.Join(dir, "audit.jsonl"), 0)
	must(t, "edge audit", err)
	srv, err := rpc.New(rpc.Config{Performer: ec.Performer(), Policy: ec.Policy(), Audit: al, NodeID: ec.cfg.NodeID, TrustDomain: testTD})
	must(t, "rpc.New", err)
	files, err := c.ca.IssueFiles(identity.Identity{TrustDomain: testTD, Kind: identity.Edge, Name: ec.cfg.NodeID}, []string{"127.0.0.1"}, time.Hour, dir, "edge-server", c.caFile)
	must(t, "edge certificate", err)
	tlsCfg, err := files.ServerConfig()
	must(t, "edge server TLS", err)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.UnaryInterceptor(srv.UnaryInterceptorThen(ec.UnaryInterceptor(srv))), grpc.StreamInterceptor(srv.StreamInterceptor()))
	kbv1.RegisterKeyBrokerServer(g, srv.KeyBroker())
	kbv1.RegisterKeyAdminServer(g, ec.Admin(srv))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	go g.Serve(lis)
	t.Cleanup(func() { g.Stop(); al.Close() })
	return &edgeServer{c: c, addr: lis.Addr().String(), dir: dir}
}

// kb is a KeyBroker client of the edge as kind/name.
func (e *edgeServer) kb(t *testing.T, kind identity.Kind, name string) kbv1.KeyBrokerClient {
	t.Helper()
	return kbv1.NewKeyBrokerClient(dial(t, e.c.ca, e.dir, e.c.caFile, e.addr, identity.Identity{TrustDomain: testTD, Kind: kind, Name: name}))
}

// admin is a KeyAdmin client of the edge as admin ops.
func (e *edgeServer) admin(t *testing.T) kbv1.KeyAdminClient {
	t.Helper()
	return kbv1.NewKeyAdminClient(dial(t, e.c.ca, e.dir, e.c.caFile, e.addr, identity.Identity{TrustDomain: testTD, Kind: identity.Admin, Name: "ops"}))
}

// edgeOps is the edge's performer driven by key id, as the pipeline
// would without the policy and the audit (byid), with its other methods.
type edgeOps struct {
	byid.Ops
	p pipeline.Performer
}

func opsByID(ec *Cache) edgeOps {
	p := ec.Performer()
	return edgeOps{Ops: byid.Ops{P: p}, p: p}
}

func (o edgeOps) Get(ctx context.Context, id string) (*managed.Key, error) { return o.p.Get(ctx, id) }

func (o edgeOps) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	return o.p.GenerateRandom(ctx, n)
}

func (o edgeOps) ListKeys(ctx context.Context, sel map[string]string, size int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	return o.p.ListKeys(ctx, sel, size, token, visible)
}

func (o edgeOps) LookupKey(ctx context.Context, k *managed.Key, op policy.Action, labels map[string]string) ([]placement.Candidate, error) {
	return o.p.LookupKey(ctx, k, op, labels)
}

func (o edgeOps) Served(k *managed.Key, op policy.Action) string { return o.p.Served(k, op) }
