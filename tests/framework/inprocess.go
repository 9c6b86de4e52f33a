package framework

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/keybrokertest"
)

// InProcess is a Cluster inside the test binary: a keybrokertest cluster
// (central and edges as goroutines, each a real gRPC server with mutual
// TLS on a loopback port) under Policy.
type InProcess struct {
	KB    *keybrokertest.Cluster
	edges []Edge
}

var _ Cluster = (*InProcess)(nil)

// StartInProcess starts an in-process cluster for the test, stopped when
// the test ends.
func StartInProcess(t *testing.T, opts Options) *InProcess {
	t.Helper()
	var specs []devcluster.EdgeSpec
	for _, e := range opts.edges() {
		specs = append(specs, devcluster.EdgeSpec{Name: e.Name, Region: e.Region, Prefetch: e.Prefetch, MaxStaleness: time.Hour})
	}
	kbo := []keybrokertest.Option{keybrokertest.WithEdges(specs...), keybrokertest.WithPolicy(Policy)}
	if opts.SoftHSM {
		kbo = append(kbo, keybrokertest.WithSoftHSM())
	}
	return &InProcess{KB: keybrokertest.Start(t, kbo...), edges: opts.edges()}
}

// Kind is "in-process".
func (c *InProcess) Kind() string { return "in-process" }

// TrustDomain is the development trust domain.
func (c *InProcess) TrustDomain() string { return c.KB.TrustDomain() }

// EdgeNames are the edges' names.
func (c *InProcess) EdgeNames() []string {
	var names []string
	for _, e := range c.edges {
		names = append(names, e.Name)
	}
	return names
}

// edgeIndex is the index of the named edge, failing the test when there
// is none.
func (c *InProcess) edgeIndex(t *testing.T, node string) int {
	t.Helper()
	i := slices.IndexFunc(c.edges, func(e Edge) bool { return e.Name == node })
	if i < 0 {
		t.Fatalf("framework: no node %q in the cluster (edges %v)", node, c.EdgeNames())
	}
	return i
}

// Addr is a node's gRPC address.
func (c *InProcess) Addr(node string) string {
	if node == CentralNode {
		return c.KB.CentralAddr()
	}
	i := slices.IndexFunc(c.edges, func(e Edge) bool { return e.Name == node })
	if i < 0 {
		return ""
	}
	return c.KB.EdgeAddrs()[i]
}

// OpsAddr is a node's operations address.
func (c *InProcess) OpsAddr(node string) string {
	dev := c.KB.Dev()
	if node == CentralNode {
		return dev.Central.OpsAddr()
	}
	i := slices.IndexFunc(c.edges, func(e Edge) bool { return e.Name == node })
	if i < 0 {
		return ""
	}
	return dev.Edges[i].OpsAddr()
}

// Client is an SDK client as opts say.
func (c *InProcess) Client(t *testing.T, opts ClientOptions) *client.Client {
	t.Helper()
	as := opts.principal()
	co := []keybrokertest.ClientOption{keybrokertest.As(as.Name), keybrokertest.InRegion(opts.Region)}
	if opts.Node != "" {
		addr := c.Addr(opts.Node)
		if addr == "" {
			c.edgeIndex(t, opts.Node)
		}
		co = append(co, keybrokertest.At(addr))
	}
	if as.Kind == identity.Admin {
		if opts.Node == "" {
			co = append(co, keybrokertest.At(c.KB.CentralAddr()))
		}
		return c.KB.AdminClient(t, co...)
	}
	return c.KB.Client(t, co...)
}

// AdminClient is an SDK client as Admin at the central node.
func (c *InProcess) AdminClient(t *testing.T) *client.Client {
	t.Helper()
	return c.KB.AdminClient(t, keybrokertest.As(Admin.Name))
}

// Conn is a raw gRPC connection to a node as a principal.
func (c *InProcess) Conn(t *testing.T, node string, as Principal) *Conn {
	t.Helper()
	addr := c.Addr(node)
	if addr == "" {
		c.edgeIndex(t, node)
	}
	id := identity.Identity{TrustDomain: c.TrustDomain(), Kind: as.Kind, Name: as.Name}
	return dialTLS(t, addr, id.String(), c.KB.TLSConfig(t, as.Kind, as.Name))
}

// TLSFiles issues a certificate for a principal.
func (c *InProcess) TLSFiles(t *testing.T, as Principal) identity.TLSFiles {
	t.Helper()
	return c.KB.TLSFiles(t, as.Kind, as.Name)
}

// CLI runs the built keybroker binary as a principal against a node.
func (c *InProcess) CLI(t *testing.T, as Principal, node string, stdin []byte, args ...string) Result {
	t.Helper()
	addr := c.Addr(node)
	if addr == "" {
		c.edgeIndex(t, node)
	}
	f := c.TLSFiles(t, as)
	return CLI(t, map[string]string{EnvAddr: addr, EnvCA: f.CA, EnvCert: f.Cert, EnvKey: f.Key}, stdin, args...)
}

// Audit is the records of a node's audit log that match.
func (c *InProcess) Audit(t *testing.T, node string, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	if node == CentralNode {
		return readAudit(t, c.KB.AuditLog(), match)
	}
	cfg, err := config.LoadEdge(c.KB.Dev().EdgeConfigs[c.edgeIndex(t, node)])
	must(t, "loading the edge's configuration", err)
	return readAudit(t, cfg.Audit.Path, match)
}

// BackendRoot is a backend root key of the type's algorithm.
func (c *InProcess) BackendRoot(typ kbv1.KeyType) string {
	for _, k := range c.KB.Dev().RootKeys() {
		if k.Role == "backend" && k.Algorithm == algorithmOf[typ] {
			return k.URI
		}
	}
	return ""
}

// algorithmOf is the root key algorithm a backend-mode key of each type
// needs.
var algorithmOf = map[kbv1.KeyType]backends.Algorithm{
	kbv1.KeyType_KEY_TYPE_AES_256_GCM: backends.AES256, kbv1.KeyType_KEY_TYPE_HMAC_SHA256: backends.HMAC256,
	kbv1.KeyType_KEY_TYPE_ECDSA_P256: backends.ECDSAP256, kbv1.KeyType_KEY_TYPE_ED25519: backends.Ed25519,
}

// SetPolicy replaces the policy; the central node enforces it when
// SetPolicy returns.
func (c *InProcess) SetPolicy(t *testing.T, cedar string) {
	t.Helper()
	must(t, "SetPolicy", c.KB.SetPolicy(cedar))
}

// WaitSynced waits until every edge has applied what central committed.
func (c *InProcess) WaitSynced(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), ApplyWait)
	defer cancel()
	must(t, "waiting for the edges", c.KB.Sync(ctx))
}

// Metric sums a metric on a node's /metrics, read as an admin.
func (c *InProcess) Metric(t *testing.T, node, name, match string) float64 {
	t.Helper()
	addr := c.OpsAddr(node)
	if addr == "" {
		c.edgeIndex(t, node)
	}
	cfg := c.KB.TLSConfig(t, identity.Admin, "monitor")
	if cfg.RootCAs == nil {
		pem, err := os.ReadFile(filepath.Clean(c.KB.CAFile()))
		must(t, "reading the CA", err)
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AppendCertsFromPEM(pem)
	}
	return scrapeMetric(t, cfg, addr, name, match)
}
