package e2e

// The process tests of the central tier: a real `keybroker central` built
// once by TestMain, real certificates, real roots of trust (a softkms
// keystore, or a SoftHSM2 token), real gRPC over mutual TLS. This file holds
// the harness; the *_e2e_test.go files beside it hold the matrix.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
	softhsmtest "github.com/keybroker/keybroker/softhsm-test"
)

// keybrokerBin is the keybroker binary built once for the process tests.
var keybrokerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keybroker-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keybrokerBin = filepath.Join(dir, "keybroker")
	args := []string{"build", "-o", keybrokerBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, "github.com/keybroker/keybroker/cmd/keybroker")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building keybroker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// processEnv is the environment of the processes the tests start: the
// test's own (SOFTHSM2_CONF, for a pkcs11 cluster), with the race
// detector's one-second sleep at exit turned off — it would cost a second
// for every process started. Races are still reported, and fail the exit
// status.
func processEnv() []string {
	race := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return append(os.Environ(), "GORACE="+race)
}

// e2eTrustDomain is every test cluster's trust domain.
const e2eTrustDomain = "kb.test"

// e2ePolicy is the policy every test cluster starts with. Keys labelled
// owner=<trust domain> belong to the domain's clients; the others only to
// admins.
const e2ePolicy = `
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

// rootKey is a root key to create before the node starts.
type rootKey struct{ object, algorithm string }

// basicRoots are enough for derive, wrap and backend-mode AES keys.
var basicRoots = []rootKey{{"root-prf", "hmac-256"}, {"root-aes", "aes-256"}, {"root-hsm-aes", "aes-256"}}

// rootRoles is every root key a cluster declares, with its one role: the
// derive and wrap defaults, and the roots of backend-mode keys (declared
// whether or not a test creates them; root-absent never is).
var rootRoles = []struct{ object, role string }{
	{"root-prf", "derive"}, {"root-aes", "wrap"}, {"root-hsm-aes", "backend"},
	{"root-mac", "backend"}, {"root-ec", "backend"}, {"root-ed", "backend"}, {"root-absent", "backend"},
}

// rootsOfTrust says where a cluster's root keys live.
type rootsOfTrust struct {
	name string
	// backendURI is the backends[].uri of the configuration.
	backendURI string
	// createURI is the full key URI `keybroker root create` takes.
	createURI func(object string) string
	// ref is the short key URI the configuration and CreateKey use.
	ref func(object string) string
	// ed25519 says whether the backend keeps ed25519 keys (backend mode).
	ed25519 bool
}

// softkmsRoots keeps the root keys in a softkms keystore in dir.
func softkmsRoots(t *testing.T, dir string) *rootsOfTrust {
	t.Helper()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, bytes.Repeat([]byte("ab"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := "path=" + filepath.Join(dir, "softkms.json") + ";kek-source=" + kek
	return &rootsOfTrust{
		name:       "softkms",
		backendURI: "softkms:" + conn,
		createURI:  func(object string) string { return "softkms:" + object + ";" + conn },
		ref:        func(object string) string { return "softkms:" + object },
		ed25519:    true,
	}
}

// pkcs11Roots keeps the root keys on a fresh SoftHSM2 token. It sets
// SOFTHSM2_CONF for the rest of the test (the node inherits it), so its test
// cannot be parallel; it skips without SoftHSM2 unless
// KEYBROKER_REQUIRE_SOFTHSM=1.
func pkcs11Roots(t *testing.T, _ string) *rootsOfTrust {
	t.Helper()
	tok := softhsmtest.New(t)
	return &rootsOfTrust{
		name:       "pkcs11",
		backendURI: tok.URI(""),
		createURI:  tok.URI,
		ref:        func(object string) string { return "pkcs11:token=" + tok.Label + ";object=" + object },
		// SoftHSM 2.6 has EdDSA, but the pkcs11 backend does not offer it.
		ed25519: false,
	}
}

// cluster is a directory with a CA, certificates, root keys, a policy and a
// central config.
type cluster struct {
	dir    string
	ca     *identity.CA
	caFile string
	config string
	policy string
	audit  string
	roots  *rootsOfTrust
}

// newCluster makes a softkms cluster with the basic root keys.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	return newClusterOn(t, softkmsRoots, basicRoots)
}

// newClusterOn makes a cluster whose roots of trust open() provides, with
// the given root keys created by `keybroker root create` (ed25519 ones only
// where the backend keeps ed25519 keys).
func newClusterOn(t *testing.T, open func(*testing.T, string) *rootsOfTrust, keys []rootKey) *cluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewCA(e2eTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt"), config: filepath.Join(dir, "central.yaml"),
		policy: filepath.Join(dir, "policy.cedar"), audit: filepath.Join(dir, "data", "audit.jsonl")}
	if err := ca.WriteCA(c.caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Central, Name: "central-1"},
		[]string{"127.0.0.1", "localhost"}, time.Hour, dir, "central", c.caFile); err != nil {
		t.Fatal(err)
	}
	c.writePolicy(t, e2ePolicy)
	c.roots = open(t, dir)
	for _, k := range keys {
		if k.algorithm == "ed25519" && !c.roots.ed25519 {
			continue
		}
		cmd := exec.CommandContext(t.Context(), keybrokerBin, "root", "create", c.roots.createURI(k.object), "--algorithm", k.algorithm)
		cmd.Env = processEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("keybroker root create %s --algorithm %s: %v\n%s", k.object, k.algorithm, err, out)
		}
	}
	var declared strings.Builder
	for _, r := range rootRoles {
		fmt.Fprintf(&declared, "  - uri: %q\n    role: %s\n", c.roots.ref(r.object), r.role)
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
`, e2eTrustDomain, c.roots.name, c.roots.backendURI, declared.String(), c.roots.ref("root-prf"), c.roots.ref("root-aes"), c.roots.ref("root-hsm-aes"), maxRequestBytes)
	if err := os.WriteFile(c.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// maxRequestBytes is the clusters' limits.max_request_bytes (the default).
const maxRequestBytes = 5 << 20

func (c *cluster) writePolicy(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(c.policy, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// proc is a running keybroker central or edge process. Its stderr (JSON log lines)
// is collected as it arrives, so tests can wait for a line instead of
// sleeping.
type proc struct {
	name    string // "central central.yaml", "edge edge-eu-1.yaml"
	cmd     *exec.Cmd
	addr    string
	opsAddr string

	mu    sync.Mutex
	lines []string
	grew  chan struct{} // closed and replaced whenever a line arrives

	exited  chan struct{} // closed once the process has exited and stderr is drained
	waitErr error         // cmd.Wait's result, set before exited closes
}

// startCentral runs the central process and waits for its "central ready"
// log line, which carries the listen addresses.
func (c *cluster) startCentral(t *testing.T) *proc {
	t.Helper()
	return startNode(t, "central", c.config)
}

// startNode runs `keybroker <kind> --config <config>` and waits for its
// "<kind> ready" log line, which carries the listen addresses.
func startNode(t *testing.T, kind, config string) *proc {
	t.Helper()
	cmd := exec.Command(keybrokerBin, kind, "--config", config)
	cmd.Env = processEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: kind + " " + filepath.Base(config), cmd: cmd, grew: make(chan struct{}), exited: make(chan struct{})}
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
	ready := p.waitLog(t, 0, kind+" ready")
	p.addr, _ = ready["grpc_addr"].(string)
	p.opsAddr, _ = ready["ops_addr"].(string)
	if p.addr == "" || p.opsAddr == "" {
		t.Fatalf("%s ready line without grpc_addr and ops_addr: %v", kind, ready)
	}
	return p
}

// logs returns everything the process has written to stderr so far.
func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// mark is the number of log lines so far: waitLog(mark(), ...) finds only
// lines written after it.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitLog waits for a JSON log line whose msg is msg, among the lines from
// index from on, and returns it decoded. It fails the test if the process
// exits or the test's context ends first.
func (p *proc) waitLog(t *testing.T, from int, msg string) map[string]any {
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
			if p.mark() == from {
				t.Fatalf("%s exited (%v) before logging %q:\n%s", p.name, p.waitErr, msg, p.logs())
			}
		case <-t.Context().Done():
			t.Fatalf("test ended before %s logged %q:\n%s", p.name, msg, p.logs())
		}
	}
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.exited
	if p.waitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM:\n%s", p.name, p.waitErr, p.logs())
	}
}

// cli runs the CLI as identity kind/name and returns its stdout, or its
// stdout and stderr when it fails, and its exit code.
func (c *cluster) cli(t *testing.T, addr string, kind identity.Kind, name string, stdin []byte, args ...string) (string, int) {
	t.Helper()
	r := runCLI(t, c.cliEnv(t, addr, kind, name), stdin, args...)
	if r.code != 0 {
		return r.stdout + r.stderr, r.code
	}
	return r.stdout, r.code
}

// cliEnv is the environment that makes the CLI identity kind/name at addr.
func (c *cluster) cliEnv(t *testing.T, addr string, kind identity.Kind, name string) map[string]string {
	t.Helper()
	files, err := c.ca.IssueFiles(identity.Identity{TrustDomain: e2eTrustDomain, Kind: kind, Name: name}, nil, time.Hour, c.dir, string(kind)+"-"+name, c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{envAddr: addr, envCA: files.CA, envCert: files.Cert, envKey: files.Key}
}

// rpc is a gRPC connection to a node as one identity.
type rpc struct {
	conn  *grpc.ClientConn
	id    string // the SPIFFE id, as audit lines name the principal
	kb    kbv1.KeyBrokerClient
	admin kbv1.KeyAdminClient
}

// dial connects to addr as kind/name, with a certificate from the cluster's
// CA.
func (c *cluster) dial(t *testing.T, addr string, kind identity.Kind, name string) *rpc {
	t.Helper()
	id := identity.Identity{TrustDomain: e2eTrustDomain, Kind: kind, Name: name}
	certPEM, keyPEM, err := c.ca.Issue(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c.dialWith(t, addr, id.String(), certPEM, keyPEM)
}

// dialWith connects to addr presenting certPEM (none when nil), trusting the
// cluster's CA.
func (c *cluster) dialWith(t *testing.T, addr, id string, certPEM, keyPEM []byte) *rpc {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	// Sign forward proofs as the SDK does when an edge asks for one.
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
	return &rpc{conn: conn, id: id, kb: kbv1.NewKeyBrokerClient(conn), admin: kbv1.NewKeyAdminClient(conn)}
}

// withRequestID returns a context sending a fresh x-request-id, and the id.
func withRequestID(t *testing.T) (context.Context, string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	rid := "e2e-" + hex.EncodeToString(b)
	return metadata.AppendToOutgoingContext(t.Context(), "x-request-id", rid), rid
}

// auditLines returns the audit records of request rid: the client's id
// (client_request_id) or, for a node's own calls, the request id. The node
// writes a record before it answers, so the call's line is there when the
// call has returned.
func (c *cluster) auditLines(t *testing.T, rid string) []audit.Record {
	t.Helper()
	return c.auditRecords(t, func(r audit.Record) bool { return r.RequestID == rid || r.ClientRequestID == rid })
}

// auditRecords returns the central audit records that match.
func (c *cluster) auditRecords(t *testing.T, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(c.audit)
	if err != nil {
		t.Fatal(err)
	}
	// Only whole lines: a line being written has no newline yet.
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var out []audit.Record
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("%s line %d: %v: %q", c.audit, i+1, err, line)
		}
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

func TestCentralProcessEndToEnd(t *testing.T) {
	c := newCluster(t)
	p := c.startCentral(t)

	out, code := c.cli(t, p.addr, identity.Admin, "ops", nil, "key", "create", "payments", "--type", "aes-256-gcm", "--mode", "derive", "--label", "owner=kb.test")
	if code != 0 {
		t.Fatalf("key create: exit %d: %s", code, out)
	}
	ct, code := c.cli(t, p.addr, identity.Client, "billing", []byte("card 4111"), "encrypt", "--key", "payments", "--context", "order=7")
	if code != 0 {
		t.Fatalf("encrypt: exit %d: %s", code, ct)
	}
	pt, code := c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Fatalf("decrypt = %q, exit %d", pt, code)
	}
	if out, code := c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=8"); code != 6 {
		t.Errorf("decrypt with the wrong context: exit %d (%s), want 6", code, out)
	}
	if out, code := c.cli(t, p.addr, identity.Client, "billing", nil, "key", "rotate", "payments"); code != 3 {
		t.Errorf("client rotates: exit %d (%s), want 3 (denied)", code, out)
	}

	// Restart: every key, version and ciphertext survives.
	p.stop(t)
	p = c.startCentral(t)
	if out, code := c.cli(t, p.addr, identity.Admin, "ops", nil, "key", "rotate", "payments"); code != 0 {
		t.Fatalf("rotate after restart: exit %d: %s", code, out)
	}
	pt, code = c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Errorf("decrypt after restart and rotation = %q, exit %d", pt, code)
	}
	p.stop(t)
	if out, code := c.cli(t, "", identity.Admin, "ops", nil, "audit", "verify", c.audit); code != 0 || !strings.Contains(out, "verified") {
		t.Errorf("audit verify: exit %d: %s", code, out)
	}
}
