package framework

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

var _ Controller = (*Processes)(nil)

// StartProcesses starts a central process and one edge process per
// opts.Edges, from configuration files, with their state on disk: the
// Processes of NewProcessesOn on the basic root keys, in a softkms
// keystore or (opts.SoftHSM) on a SoftHSM2 token.
func StartProcesses(t *testing.T, opts Options) *Processes {
	t.Helper()
	roots := SoftkmsRoots
	if opts.SoftHSM {
		roots = PKCS11Roots
	}
	var edges []*EdgeNode
	for _, e := range opts.edges() {
		edges = append(edges, &EdgeNode{Name: e.Name, Region: e.Region, Prefetch: e.Prefetch, Staleness: time.Hour})
	}
	keys := append(slices.Clone(BasicRoots), RootKey{Object: "root-ec", Algorithm: "ecdsa-p256"})
	return NewProcessesOn(t, roots, keys, "", edges...)
}

// Kind is "processes".
func (c *Processes) Kind() string { return "processes" }

// TrustDomain is the test clusters' trust domain.
func (c *Processes) TrustDomain() string { return TrustDomain }

// EdgeNames are the edges' names, in the order they were started.
func (c *Processes) EdgeNames() []string { return slices.Clone(c.Order) }

// proc is a node's process, failing the test when there is no such node.
func (c *Processes) proc(t *testing.T, node string) *Proc {
	t.Helper()
	if node == CentralNode {
		return c.Central
	}
	e, ok := c.Edges[node]
	if !ok {
		t.Fatalf("framework: no node %q in the cluster (edges %v)", node, c.Order)
	}
	return e.Proc
}

// Addr is a node's gRPC address ("" when there is no such node).
func (c *Processes) Addr(node string) string {
	if node == CentralNode {
		return c.Central.Addr
	}
	if e, ok := c.Edges[node]; ok {
		return e.Proc.Addr
	}
	return ""
}

// OpsAddr is a node's operations address ("" when there is no such node).
func (c *Processes) OpsAddr(node string) string {
	if node == CentralNode {
		return c.Central.OpsAddr
	}
	if e, ok := c.Edges[node]; ok {
		return e.Proc.OpsAddr
	}
	return ""
}

// tlsConfig issues a certificate for a principal and returns a client TLS
// configuration with it, trusting the cluster's CA.
func (c *Processes) tlsConfig(t *testing.T, as Principal) *tls.Config {
	t.Helper()
	return c.clientTLS(t, as)
}

// clientTLS is Processes.tlsConfig for any cluster of the setup.
func (c *Setup) clientTLS(t *testing.T, as Principal) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := c.CA.Issue(identity.Identity{TrustDomain: TrustDomain, Kind: as.Kind, Name: as.Name}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}
}

// Client is an SDK client as opts say, failing over quickly as the
// in-process cluster's clients do.
func (c *Processes) Client(t *testing.T, opts ClientOptions) *client.Client {
	t.Helper()
	cfg := client.Config{TLS: c.tlsConfig(t, opts.principal()), Region: opts.Region,
		Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Getenv: func(string) string { return "" }}
	switch {
	case opts.Node != "":
		cfg.Addrs, cfg.Direct = []string{c.proc(t, opts.Node).Addr}, true
	case opts.principal().Kind == identity.Admin || len(c.Order) == 0:
		cfg.Addrs = []string{c.Central.Addr}
	default:
		cfg.Addrs = []string{c.Edges[c.Order[0]].Proc.Addr}
	}
	cl, err := client.New(t.Context(), cfg)
	must(t, "client.New", err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// AdminClient is an SDK client as Admin at the central node.
func (c *Processes) AdminClient(t *testing.T) *client.Client {
	t.Helper()
	return c.Client(t, ClientOptions{As: Admin, Node: CentralNode})
}

// Conn is a raw gRPC connection to a node as a principal.
func (c *Processes) Conn(t *testing.T, node string, as Principal) *Conn {
	t.Helper()
	return c.Dial(t, c.proc(t, node).Addr, as.Kind, as.Name)
}

// TLSFiles issues a certificate for a principal into the cluster's
// directory.
func (c *Processes) TLSFiles(t *testing.T, as Principal) identity.TLSFiles {
	t.Helper()
	files, err := c.CA.IssueFiles(identity.Identity{TrustDomain: TrustDomain, Kind: as.Kind, Name: as.Name}, nil, time.Hour, c.Dir, string(as.Kind)+"-"+as.Name, c.CAFile)
	must(t, "IssueFiles", err)
	return files
}

// CLI runs the built keybroker binary as a principal against a node.
func (c *Processes) CLI(t *testing.T, as Principal, node string, stdin []byte, args ...string) Result {
	t.Helper()
	return CLI(t, c.CLIEnv(t, c.proc(t, node).Addr, as.Kind, as.Name), stdin, args...)
}

// Audit is the records of a node's audit log that match: central's, or
// an edge's in its data directory.
func (c *Processes) Audit(t *testing.T, node string, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	if node == CentralNode {
		return c.AuditRecords(t, match)
	}
	c.proc(t, node)
	return readAudit(t, filepath.Join(c.Edges[node].Dir, "audit.jsonl"), match)
}

// BackendRoot is the backend root key of the type's algorithm, when the
// cluster made it.
func (c *Processes) BackendRoot(typ kbv1.KeyType) string {
	object := map[kbv1.KeyType]string{kbv1.KeyType_KEY_TYPE_AES_256_GCM: "root-hsm-aes", kbv1.KeyType_KEY_TYPE_HMAC_SHA256: "root-mac",
		kbv1.KeyType_KEY_TYPE_ECDSA_P256: "root-ec", kbv1.KeyType_KEY_TYPE_ED25519: "root-ed"}[typ]
	if !slices.Contains(c.made, object) {
		return ""
	}
	return c.Roots.Ref(object)
}

// SetPolicy writes the policy file and sends central SIGHUP (the
// clusters do not poll), returning once central logs that it reloaded.
func (c *Processes) SetPolicy(t *testing.T, cedar string) {
	t.Helper()
	c.WritePolicy(t, cedar)
	mark := c.Central.Mark()
	must(t, "SIGHUP", c.Central.Cmd.Process.Signal(syscall.SIGHUP))
	LogWithin(t, c.Central, mark, "policy reloaded")
}

// WaitSynced waits until every edge is connected and has acknowledged
// central's current revision.
func (c *Processes) WaitSynced(t *testing.T) {
	t.Helper()
	// A ListKeys as the admin tells the current revision: every key
	// carries the revision that last changed it, and a cluster's revision
	// moves only when a key does (enrollment aside, which WaitApplied's
	// connected check covers).
	var rev uint64
	resp, err := c.Admin.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{})
	must(t, "ListKeys", err)
	for _, k := range resp.GetKeys() {
		rev = max(rev, k.GetRevision())
	}
	c.WaitApplied(t, rev)
}

// Metric sums a metric on a node's /metrics, read as an admin.
func (c *Processes) Metric(t *testing.T, node, name, match string) float64 {
	t.Helper()
	return c.MetricAt(t, c.proc(t, node).OpsAddr, name, match)
}

// Stop sends a node SIGTERM and waits for its clean exit.
func (c *Processes) Stop(t *testing.T, node string) {
	t.Helper()
	c.proc(t, node).Stop(t)
}

// Kill sends a node SIGKILL and waits until it is gone.
func (c *Processes) Kill(t *testing.T, node string) {
	t.Helper()
	c.proc(t, node).Kill()
}

// Restart starts a stopped or killed node again from its configuration
// and data directory. Central comes back on its fixed port, and the
// admin connection is made again.
func (c *Processes) Restart(t *testing.T, node string) {
	t.Helper()
	if p := c.proc(t, node); p.Running() {
		t.Fatalf("framework: Restart %s while it runs", node)
	}
	if node == CentralNode {
		c.Central = c.StartCentral(t)
		c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
		return
	}
	e := c.Edges[node]
	e.Proc = StartNode(t, "edge", e.Config)
}
