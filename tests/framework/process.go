package framework

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// TrustDomain is every test cluster's trust domain.
const TrustDomain = "kb.test"

// Policy is the policy every test cluster starts with. Keys labelled
// owner=<trust domain> belong to the domain's clients; the others only to
// admins.
const Policy = `
@id("admins")
permit (principal is Admin, action, resource);

@id("app-keys")
permit (principal is Client, action, resource is Key)
when { resource.hasTag("owner") && resource.getTag("owner") == principal.trust_domain };

@id("client-service")
permit (principal is Client, action in [Action::"GenerateRandom", Action::"ListKeys"], resource is Service);

@id("no-sign-for-interns")
forbid (principal == Client::"intern", action == Action::"Sign", resource);

@id("loose")
permit (principal == Client::"loose", action, resource);

@id("edges-forward")
permit (principal is Edge, action == Action::"Forward", resource);
`

// RootKey is a root key to create before the node starts.
type RootKey struct{ Object, Algorithm string }

// BasicRoots are enough for derive, wrap and backend-mode AES keys.
var BasicRoots = []RootKey{{"root-prf", "hmac-256"}, {"root-aes", "aes-256"}, {"root-hsm-aes", "aes-256"}}

// rootRoles is every root key a cluster declares, with its one role: the
// derive and wrap defaults, and the roots of backend-mode keys (declared
// whether or not a test creates them; root-absent never is).
var rootRoles = []struct{ object, role string }{
	{"root-prf", "derive"}, {"root-aes", "wrap"}, {"root-hsm-aes", "backend"},
	{"root-mac", "backend"}, {"root-ec", "backend"}, {"root-ed", "backend"}, {"root-absent", "backend"},
}

// Roots says where a cluster's root keys live.
type Roots struct {
	Name string
	// backendURI is the backends[].uri of the configuration.
	BackendURI string
	// createURI is the full key URI `keybroker root create` takes.
	CreateURI func(object string) string
	// ref is the short key URI the configuration and CreateKey use.
	Ref func(object string) string
	// ed25519 says whether the backend keeps ed25519 keys (backend mode).
	Ed25519 bool
}

// SoftkmsRoots keeps the root keys in a softkms keystore in dir.
func SoftkmsRoots(t *testing.T, dir string) *Roots {
	t.Helper()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, bytes.Repeat([]byte("ab"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := "path=" + filepath.Join(dir, "softkms.json") + ";kek-source=" + kek
	return &Roots{
		Name:       "softkms",
		BackendURI: "softkms:" + conn,
		CreateURI:  func(object string) string { return "softkms:" + object + ";" + conn },
		Ref:        func(object string) string { return "softkms:" + object },
		Ed25519:    true,
	}
}

// PKCS11Roots keeps the root keys on a fresh SoftHSM2 token. It sets
// SOFTHSM2_CONF for the rest of the test (the node inherits it), so its test
// cannot be parallel; it skips without SoftHSM2 unless
// KEYBROKER_REQUIRE_SOFTHSM=1.
func PKCS11Roots(t *testing.T, _ string) *Roots {
	t.Helper()
	tok := softhsmtest.New(t)
	return &Roots{
		Name:       "pkcs11",
		BackendURI: tok.URI(""),
		CreateURI:  tok.URI,
		Ref:        func(object string) string { return "pkcs11:token=" + tok.Label + ";object=" + object },
		// SoftHSM 2.6 has EdDSA, but the pkcs11 backend does not offer it.
		Ed25519: false,
	}
}

// Setup is a directory with a CA, certificates, root keys, a policy and a
// central config.
type Setup struct {
	Dir        string       // everything below lives here
	CA         *identity.CA // issues any principal's certificate
	CAFile     string       // ca.crt
	Config     string       // central.yaml
	PolicyFile string       // policy.cedar, which WritePolicy replaces
	AuditLog   string       // central's audit log, data/audit.jsonl
	Roots      *Roots       // where the root keys live

	made []string // the root key objects created
}

// NewSetup makes a softkms cluster with the basic root keys.
func NewSetup(t *testing.T) *Setup {
	t.Helper()
	return NewSetupOn(t, SoftkmsRoots, BasicRoots)
}

// NewSetupOn makes a cluster whose roots of trust open() provides, with
// the given root keys created by `keybroker root create` (ed25519 ones only
// where the backend keeps ed25519 keys).
func NewSetupOn(t *testing.T, open func(*testing.T, string) *Roots, keys []RootKey) *Setup {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewCA(TrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &Setup{Dir: dir, CA: ca, CAFile: filepath.Join(dir, "ca.crt"), Config: filepath.Join(dir, "central.yaml"),
		PolicyFile: filepath.Join(dir, "policy.cedar"), AuditLog: filepath.Join(dir, "data", "audit.jsonl")}
	if err := ca.WriteCA(c.CAFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueFiles(identity.Identity{TrustDomain: TrustDomain, Kind: identity.Central, Name: "central-1"},
		[]string{"127.0.0.1", "localhost"}, time.Hour, dir, "central", c.CAFile); err != nil {
		t.Fatal(err)
	}
	c.WritePolicy(t, Policy)
	c.Roots = open(t, dir)
	for _, k := range keys {
		if k.Algorithm == "ed25519" && !c.Roots.Ed25519 {
			continue
		}
		c.made = append(c.made, k.Object)
		cmd := exec.CommandContext(t.Context(), Binary(), "root", "create", c.Roots.CreateURI(k.Object), "--algorithm", k.Algorithm)
		cmd.Env = ProcessEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("keybroker root create %s --algorithm %s: %v\n%s", k.Object, k.Algorithm, err, out)
		}
	}
	var declared strings.Builder
	for _, r := range rootRoles {
		fmt.Fprintf(&declared, "  - uri: %q\n    role: %s\n", c.Roots.Ref(r.object), r.role)
	}
	// Polling is off: the reload tests drive reloads with SIGHUP alone.
	cfg := fmt.Sprintf(`node_id: central-1
trust_domain: %s
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
tls: {ca: ca.crt, cert: central.crt, key: central.key}
data_dir: data
backends:
  - name: %s
    uri: %q
root_keys:
%sdefault_root_keys:
  derive: %q
  wrap: %q
  backend: %q
policy:
  paths: [policy.cedar]
  reload_interval: 0s
limits:
  max_request_bytes: %d
`, TrustDomain, c.Roots.Name, c.Roots.BackendURI, declared.String(), c.Roots.Ref("root-prf"), c.Roots.Ref("root-aes"), c.Roots.Ref("root-hsm-aes"), MaxRequestBytes)
	if err := os.WriteFile(c.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// MaxRequestBytes is the clusters' limits.max_request_bytes (the default).
const MaxRequestBytes = 5 << 20

// WritePolicy replaces the policy file; central reads it on SIGHUP (see
// Processes.SetPolicy) or when it starts.
func (c *Setup) WritePolicy(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(c.PolicyFile, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Proc is a running keybroker central or edge process. Its stderr (JSON log lines)
// is collected as it arrives, so tests can wait for a line instead of
// sleeping.
type Proc struct {
	name    string // "central central.yaml", "edge edge-eu-1.yaml"
	Cmd     *exec.Cmd
	Addr    string
	OpsAddr string

	mu    sync.Mutex
	lines []string
	grew  chan struct{} // closed and replaced whenever a line arrives

	exited  chan struct{} // closed once the process has exited and stderr is drained
	waitErr error         // cmd.Wait's result, set before exited closes
}

// StartCentral runs the central process and waits for its "central ready"
// log line, which carries the listen addresses.
func (c *Setup) StartCentral(t *testing.T) *Proc {
	t.Helper()
	return StartNode(t, "central", c.Config)
}

// StartNode runs `keybroker <kind> --config <config>` and waits for its
// "<kind> ready" log line, which carries the listen addresses.
func StartNode(t *testing.T, kind, config string) *Proc {
	t.Helper()
	cmd := exec.Command(Binary(), kind, "--config", config)
	cmd.Env = ProcessEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Proc{name: kind + " " + filepath.Base(config), Cmd: cmd, grew: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	ready := p.WaitLog(t, 0, kind+" ready")
	p.Addr, _ = ready["grpc_addr"].(string)
	p.OpsAddr, _ = ready["ops_addr"].(string)
	if p.Addr == "" || p.OpsAddr == "" {
		t.Fatalf("%s ready line without grpc_addr and ops_addr: %v", kind, ready)
	}
	return p
}

// Logs returns everything the process has written to stderr so far.
func (p *Proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Mark is the number of log lines so far: waitLog(mark(), ...) finds only
// lines written after it.
func (p *Proc) Mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// WaitLog waits for a JSON log line whose msg is msg, among the lines from
// index from on, and returns it decoded. It fails the test if the process
// exits or the test's context ends first.
func (p *Proc) WaitLog(t *testing.T, from int, msg string) map[string]any {
	t.Helper()
	for {
		p.mu.Lock()
		lines, grew := p.lines[from:], p.grew
		p.mu.Unlock()
		for _, line := range lines {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		}
		from += len(lines)
		select {
		case <-grew:
		case <-p.exited:
			if p.Mark() == from {
				t.Fatalf("%s exited (%v) before logging %q:\n%s", p.name, p.waitErr, msg, p.Logs())
			}
		case <-t.Context().Done():
			t.Fatalf("test ended before %s logged %q:\n%s", p.name, msg, p.Logs())
		}
	}
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM and waits for a clean exit.
func (p *Proc) Stop(t *testing.T) {
	t.Helper()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	<-p.exited
	if p.waitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM:\n%s", p.name, p.waitErr, p.Logs())
	}
}

// CLIAs runs the CLI as identity kind/name and returns its stdout, or its
// stdout and stderr when it fails, and its exit code.
func (c *Setup) CLIAs(t *testing.T, addr string, kind identity.Kind, name string, stdin []byte, args ...string) (string, int) {
	t.Helper()
	r := CLI(t, c.CLIEnv(t, addr, kind, name), stdin, args...)
	if r.Code != 0 {
		return r.Stdout + r.Stderr, r.Code
	}
	return r.Stdout, r.Code
}

// CLIEnv is the environment that makes the CLI identity kind/name at addr.
func (c *Setup) CLIEnv(t *testing.T, addr string, kind identity.Kind, name string) map[string]string {
	t.Helper()
	files, err := c.CA.IssueFiles(identity.Identity{TrustDomain: TrustDomain, Kind: kind, Name: name}, nil, time.Hour, c.Dir, string(kind)+"-"+name, c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{EnvAddr: addr, EnvCA: files.CA, EnvCert: files.Cert, EnvKey: files.Key}
}

// Conn is a gRPC connection to a node as one identity.
type Conn struct {
	Conn  *grpc.ClientConn
	ID    string // the SPIFFE id, as audit lines name the principal
	KB    kbv1.KeyBrokerClient
	Admin kbv1.KeyAdminClient
}

// Dial connects to addr as kind/name, with a certificate from the cluster's
// CA.
func (c *Setup) Dial(t *testing.T, addr string, kind identity.Kind, name string) *Conn {
	t.Helper()
	id := identity.Identity{TrustDomain: TrustDomain, Kind: kind, Name: name}
	certPEM, keyPEM, err := c.CA.Issue(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c.DialWith(t, addr, id.String(), certPEM, keyPEM)
}

// DialWith connects to addr presenting certPEM (none when nil), trusting the
// cluster's CA.
func (c *Setup) DialWith(t *testing.T, addr, id string, certPEM, keyPEM []byte) *Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return dialTLS(t, addr, id, cfg)
}

// dialTLS connects to addr with cfg as principal id, signing forward
// proofs with cfg's certificate key as the SDK does when an edge asks for
// one; the connection is closed when the test ends.
func dialTLS(t *testing.T, addr, id string, cfg *tls.Config) *Conn {
	t.Helper()
	var signer crypto.Signer
	if len(cfg.Certificates) > 0 {
		signer, _ = cfg.Certificates[0].PrivateKey.(crypto.Signer)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
		grpc.WithChainUnaryInterceptor(forwardproof.NewInterceptor(signer, nil).Unary))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Conn{Conn: conn, ID: id, KB: kbv1.NewKeyBrokerClient(conn), Admin: kbv1.NewKeyAdminClient(conn)}
}

// WithRequestID returns a context sending a fresh x-request-id, and the id.
func WithRequestID(t *testing.T) (context.Context, string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	rid := "e2e-" + hex.EncodeToString(b)
	return metadata.AppendToOutgoingContext(t.Context(), "x-request-id", rid), rid
}

// AuditLines returns the audit records of request rid: the client's id
// (client_request_id) or, for a node's own calls, the request id. The node
// writes a record before it answers, so the call's line is there when the
// call has returned.
func (c *Setup) AuditLines(t *testing.T, rid string) []audit.Record {
	t.Helper()
	return c.AuditRecords(t, func(r audit.Record) bool { return r.RequestID == rid || r.ClientRequestID == rid })
}

// AuditRecords returns the central audit records that match.
func (c *Setup) AuditRecords(t *testing.T, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	return readAudit(t, c.AuditLog, match)
}

// EdgeNode is one edge of the test cluster.
type EdgeNode struct {
	Name, Region string
	Prefetch     bool
	Staleness    time.Duration
	// via is the address the edge dials for the central tier (a proxy in
	// the fault tests); empty means central's own.
	Via string
	// Centrals, when set, are the central nodes the edge dials, in order
	// (central.address and central.addresses); Via and the cluster's
	// central are then not used.
	Centrals []string
	// reconnect is the edge's reconnect mapping; empty means quick
	// retries (50ms, up to 500ms).
	Reconnect string
	// tls is added to the edge's tls mapping (", deny: deny.txt").
	TLS string
	// spiffe, when set, is the socket of a Workload API agent the edge
	// takes its identity from instead of certificate files (tls then
	// holds only what tls adds, and central.server_name is not set).
	SPIFFE string
	// Extra is appended to the edge's edge.yaml (an aws_kms or xks block).
	Extra       string
	Dir, Config string
	Proc        *Proc
}

// Processes is a central node on SoftHSM2 and its edges.
type Processes struct {
	*Setup
	Central *Proc
	Edges   map[string]*EdgeNode
	Order   []string
	Admin   *Conn
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// FreeAddr is a free loopback address (127.0.0.1:port) for a listener a
// test configures, never one it has handed out before in this process: a
// port closed a moment ago can be the next one the kernel gives, and two
// listeners configured on one address fail to start.
func FreeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, "listen", err)
		addr := l.Addr().String()
		l.Close()
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
	t.Fatal("FreeAddr: 100 ports in a row were ones already handed out")
	return ""
}

// handedOut holds the addresses FreeAddr has returned.
var handedOut sync.Map

// NewProcesses starts central on a fresh SoftHSM2 token, at a fixed port
// (so a restarted central is found again), with a 2s edge lease and a
// one-entry material cache (so tests can make it cold), then the edges.
func NewProcesses(t *testing.T, edges ...*EdgeNode) *Processes {
	t.Helper()
	// The material cache holds one entry so that misses reach the root of
	// trust; the loads these clusters carry (one principal at full speed,
	// in the fault suite too) are not meant to meet the per-principal
	// backend budget, which TestBackendBudgetEndToEnd tests.
	return NewProcessesOn(t, PKCS11Roots, append(BasicRoots, RootKey{"root-ec", "ecdsa-p256"}, RootKey{"root-mac", "hmac-256"}), "material_cache: {size: 1}\n"+UnboundedBudget, edges...)
}

// UnboundedBudget lifts central.yaml's per-principal backend budget out of
// a load test's way.
const UnboundedBudget = "backend_budget: {rate: 1000000, burst: 1000000}\n"

// NewProcessesOn is newEdgeCluster on the roots of trust open()
// provides, with the given root keys, and extra appended to central.yaml
// (after the 2s edge lease).
func NewProcessesOn(t *testing.T, open func(*testing.T, string) *Roots, keys []RootKey, extra string, edges ...*EdgeNode) *Processes {
	t.Helper()
	c := &Processes{Setup: NewSetupOn(t, open, keys), Edges: map[string]*EdgeNode{}}
	cfg, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	cfg = bytes.Replace(cfg, []byte("listen: 127.0.0.1:0\n"), []byte("listen: "+FreeAddr(t)+"\n"), 1)
	cfg = append(cfg, "edges: {lease: 2s, heartbeat: 200ms}\n"+extra...)
	must(t, "writing central.yaml", os.WriteFile(c.Config, cfg, 0o600))
	c.Central = c.StartCentral(t)
	c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
	for _, e := range edges {
		c.AddEdge(t, e)
	}
	return c
}

// AddEdge enrolls an edge in its region at central, writes its
// certificate and configuration and starts it.
func (c *Processes) AddEdge(t *testing.T, e *EdgeNode) {
	t.Helper()
	if _, err := c.Admin.Admin.EnrollNode(t.Context(), &kbv1.EnrollNodeRequest{NodeId: e.Name, Region: e.Region}); err != nil {
		t.Fatalf("EnrollNode %s: %v", e.Name, err)
	}
	c.StartEdge(t, e)
}

// StartEdge writes an enrolled edge's certificate and configuration and
// starts it.
func (c *Processes) StartEdge(t *testing.T, e *EdgeNode) {
	t.Helper()
	startEdge(t, c.Setup, e, c.Central.Addr)
	c.Edges[e.Name] = e
	c.Order = append(c.Order, e.Name)
}

// startEdge writes an enrolled edge's certificate and configuration and
// starts it, dialling e.Centrals, else e.Via, else central.
func startEdge(t *testing.T, c *Setup, e *EdgeNode, central string) {
	t.Helper()
	e.Dir = filepath.Join(c.Dir, e.Name)
	e.Config = filepath.Join(c.Dir, e.Name+".yaml")
	id := fmt.Sprintf("tls: {ca: ca.crt, cert: %s.crt, key: %s.key%s}\n", e.Name, e.Name, e.TLS)
	serverName := ", server_name: 127.0.0.1"
	if e.SPIFFE != "" {
		id = fmt.Sprintf("spiffe: {socket: %q}\n", e.SPIFFE)
		if e.TLS != "" {
			id += "tls: {" + strings.TrimPrefix(e.TLS, ", ") + "}\n"
		}
		serverName = ""
	} else if _, err := c.CA.IssueFiles(identity.Identity{TrustDomain: TrustDomain, Kind: identity.Edge, Name: e.Name},
		[]string{"127.0.0.1"}, time.Hour, c.Dir, e.Name, c.CAFile); err != nil {
		t.Fatal(err)
	}
	address, others := cmp.Or(e.Via, central), ""
	if len(e.Centrals) > 0 {
		address = e.Centrals[0]
		if len(e.Centrals) > 1 {
			others = fmt.Sprintf(", addresses: [%s]", strings.Join(e.Centrals[1:], ", "))
		}
	}
	y := fmt.Sprintf(`node_id: %s
trust_domain: %s
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
%sdata_dir: %s
region: %s
central: {address: %q%s%s}
prefetch: %t
max_staleness: %s
reconnect: %s
`, e.Name, TrustDomain, id, e.Name, e.Region, address, others, serverName, e.Prefetch, e.Staleness,
		cmp.Or(e.Reconnect, "{initial_backoff: 50ms, max_backoff: 500ms}")) + e.Extra
	must(t, "writing edge config", os.WriteFile(e.Config, []byte(y), 0o600))
	e.Proc = StartNode(t, "edge", e.Config)
}

// ApplyWait bounds WaitApplied and WaitSynced so that a lost event fails the test with the
// edges' logs rather than hanging it until the package timeout.
const ApplyWait = 60 * time.Second

// WaitApplied waits until every edge follows central and has acknowledged
// revision rev — no sleeps: ListNodes reports what each edge acknowledged.
func (c *Processes) WaitApplied(t *testing.T, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(ApplyWait)
	for {
		resp, err := c.Admin.Admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
		if err == nil {
			ok := 0
			for _, n := range resp.GetNodes() {
				if n.GetKind() == "edge" && n.GetConnected() && n.GetAppliedRevision() >= rev {
					ok++
				}
			}
			if ok == len(c.Edges) {
				return
			}
		}
		if time.Now().After(deadline) {
			for _, name := range c.Order {
				p := c.Edges[name].Proc
				t.Logf("%s log:\n%s", name, p.Logs())
			}
			t.Fatalf("edges did not acknowledge revision %d within %v: %v %v", rev, ApplyWait, resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// OpsMetric sums the samples of a Prometheus metric on a node's /metrics.
func (c *Processes) OpsMetric(t *testing.T, opsAddr, name string) float64 {
	t.Helper()
	return c.MetricAt(t, opsAddr, name, "")
}

// DialEdgeSync connects to central as an edge.
func (c *Processes) DialEdgeSync(t *testing.T, name string) kbv1.EdgeSyncClient {
	t.Helper()
	id := identity.Identity{TrustDomain: TrustDomain, Kind: identity.Edge, Name: name}
	certPEM, keyPEM, err := c.CA.Issue(id, nil, time.Hour)
	must(t, "Issue", err)
	return kbv1.NewEdgeSyncClient(c.DialWith(t, c.Central.Addr, id.String(), certPEM, keyPEM).Conn)
}

// Listed is central's ListNodes answer by node id, as the admin.
func (c *Processes) Listed(t *testing.T) map[string]*kbv1.Node {
	t.Helper()
	resp, err := c.Admin.Admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
	must(t, "ListNodes", err)
	out := map[string]*kbv1.Node{}
	for _, n := range resp.GetNodes() {
		out[n.GetNodeId()] = n
	}
	return out
}

// IssueCustom issues from the cluster's CA (its key read from ca.key) a
// certificate for id with exactly the extended key usages eku, as PEM —
// the certificates corporate CAs hand out, which identity.CA does not.
func (c *Setup) IssueCustom(t *testing.T, id identity.Identity, eku []x509.ExtKeyUsage, hosts []string) (certPEM, keyPEM []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(c.Dir, "ca.key"))
	must(t, "reading ca.key", err)
	b, _ := pem.Decode(raw)
	caKey, err := x509.ParseECPrivateKey(b.Bytes)
	must(t, "parsing ca.key", err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, "key", err)
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: id.Name}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku, URIs: []*url.URL{id.URL()}}
	for _, h := range hosts {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(h))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.CA.Cert, &key.PublicKey, caKey)
	must(t, "issuing", err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, "marshalling the key", err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// RogueServer serves grpc.health.v1 and nothing else with a certificate of
// the cluster's CA for id: a peer of the trust domain posing as a node.
func (c *Setup) RogueServer(t *testing.T, id identity.Identity) string {
	t.Helper()
	var hosts []string // a client certificate carries none, and needs none: servers are known by SPIFFE id
	if id.Kind != identity.Client && id.Kind != identity.Admin {
		hosts = []string{"127.0.0.1"}
	}
	certPEM, keyPEM, err := c.CA.Issue(id, hosts, time.Hour)
	must(t, "issuing", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "pair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// CLIOut runs the CLI as kind/name and returns stdout, stderr and the
// exit code.
func (c *Setup) CLIOut(t *testing.T, addr string, kind identity.Kind, name string, args ...string) (string, string, int) {
	t.Helper()
	r := CLI(t, c.CLIEnv(t, addr, kind, name), nil, args...)
	return r.Stdout, r.Stderr, r.Code
}

// LogWithin is p.waitLog bounded by applyWait, so that a line that never
// comes fails the test rather than hanging it.
func LogWithin(t *testing.T, p *Proc, from int, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(ApplyWait)
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
			t.Fatalf("%s did not log %q within %v:\n%s", p.name, msg, ApplyWait, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
