// Package devcluster runs a complete keybroker cluster in one process: a
// central node on a root of trust (a software keystore unless told
// otherwise) and edges in their own regions, with a development CA,
// certificates, configuration files, a policy and the root keys, all kept
// in one directory and reused when the cluster starts again from it. It is
// what `keybroker dev` runs, and what benchmarks and examples start when
// they need real nodes talking gRPC over mutual TLS without separate
// processes.
//
// Every node is assembled from the configuration files written to the
// directory, through the same loading and validation as `keybroker
// central` and `keybroker edge`, so the files are a working starting point
// for a real deployment.
//
// # The directory
//
//	ca.crt, ca.key        the development CA (ca.key 0600)
//	certs/                central, every edge, and the admin and app client identities
//	kek, softkms.json     the software root of trust and the key encrypting it (0600)
//	policy.cedar          the policy; written once, then the user's to edit
//	central.yaml, <edge>.yaml
//	central/, <edge>/     data directories
//	central-2.yaml, central-2/, …  further central nodes (Options.Centrals)
//	etcd/                 the etcd member's data and log (Options.Centrals > 1)
//	store                 which store the registry is in (bbolt or etcd)
//	root-of-trust         which root of trust the keys are bound to
//	lock                  held (flock) while a cluster runs from the directory
//
// The CA and the software keystore are development conveniences: the CA's
// key and the KEK sit on disk next to what they protect.
//
// # Edges
//
// Start enrolls every edge at the central node with its spec's region
// (KeyAdmin.EnrollNode, as the admin, audited) before the edge starts: the
// central tier refuses edges no admin enrolled, and an edge's region is
// the enrolled one. An edge enrolled by an earlier start is moved to its
// spec's region (UpdateNode).
//
// # Roots of trust
//
// By default the central node's root of trust is a softkms keystore in the
// directory. [Options.Backend] names another (a SoftHSM2 token, say); the
// root keys the cluster needs ([RootKey]: an HMAC key for derive-mode keys,
// an AES key for wrap-mode keys) are created there when missing and the
// backend can create them, and are otherwise reported by a
// [*MissingRootKeysError] listing what to create. A directory stays on the
// root keys it started with: keys created by one start are bound to them,
// so a later start on other root keys is refused.
//
// # Several central nodes
//
// [Options.Centrals] above one starts that many central nodes — central,
// central-2, central-3, … ([CentralName]), each with its own certificate,
// configuration file, data directory and audit log, all on the same root
// keys — sharing one etcd store, as a deployment's central tier does.
// Unless [Options.Etcd] names an etcd to use, the cluster runs one etcd
// member itself, from Debian's etcd binary (package internal/etcdproc,
// which says why a binary rather than an embedded etcd), with its data in
// etcd/ under the directory, so that the next start finds the keys again;
// it is stopped with the cluster, and killed by the kernel if this process
// dies first. Start fails at once, before anything is written, when the
// binary is missing. Edge i's central.address is central i mod N and its
// central.addresses the others in turn, so the edges spread over the
// centrals and each fails over to the rest.
//
// A directory keeps the store it was first started with (recorded in
// store): keys created in bbolt are not in etcd, so a start that asks for
// the other is refused.
//
// # Ports
//
// With [Options.BasePort] zero the system chooses every port. A non-zero
// BasePort fixes them, so that addresses stay valid across restarts: the
// central node's gRPC port is BasePort, edge i's BasePort+1+i, and
// central-k's (k ≥ 2) the next ones after the last edge's; each node's
// operations port (/healthz, /readyz, /metrics) is its gRPC port plus
// [OpsPortOffset], and with [Options.AWS] its AWS KMS API port its gRPC
// port plus [AWSPortOffset]. A fixed port another process holds fails
// Start with a [*PortInUseError]. etcd's ports are always chosen by the
// system, on loopback.
//
// # AWS clients
//
// With [Options.AWS] every central node and edge serves the AWS KMS API
// (aws_kms) in one region and account. An edge verifies the access keys
// scoped to it (keybroker access-key create --edge edge-us) and serves
// them from the keys placed on it; it relays every other request, as
// signed, to a central node.
package devcluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edge"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/etcdproc"
)

// DefaultTrustDomain is the development trust domain.
const DefaultTrustDomain = "keybroker.dev"

// Client identities issued into certs/ at every start.
const (
	AdminName = "admin"
	AppName   = "app"
)

// DefaultPolicy lets the admin administer everything, clients use every
// key and the client-wide operations, every edge hold every key's
// material (keys narrow that with their placement expression), and every
// edge relay its callers' calls — admin calls included — to the central
// tier, which still acts only as the caller a forward proof establishes.
const DefaultPolicy = `// keybroker dev policy: edit freely; the central node re-reads it.
@id("admins")
permit (principal is Admin, action, resource);

@id("clients")
permit (principal is Client, action, resource is Key);

@id("client-service")
permit (principal is Client, action in [Action::"GenerateRandom", Action::"ListKeys"], resource is Service);

@id("edges-hold-material")
permit (principal is Edge, action == Action::"HoldMaterial", resource is Key);

// Edges relay their callers' calls, admin calls included (a production
// policy may add: when { !context.admin }).
@id("edges-forward")
permit (principal is Edge, action == Action::"Forward", resource);
`

// EdgeSpec describes one edge.
type EdgeSpec struct {
	// Name is the edge's node id; Region its region label.
	Name, Region string
	// Prefetch receives material with Watch rather than on first use.
	Prefetch bool
	// MaxStaleness is how long past its lease the edge serves while the
	// central node is unreachable (config default when zero and
	// FailClosed is false).
	MaxStaleness time.Duration
	FailClosed   bool
}

// DefaultEdges are two prefetching edges, in us and eu.
func DefaultEdges() []EdgeSpec {
	return []EdgeSpec{{Name: "edge-us", Region: "us", Prefetch: true}, {Name: "edge-eu", Region: "eu", Prefetch: true}}
}

// Options configure a cluster.
type Options struct {
	// Dir holds everything (see the package documentation); created 0700
	// if missing. Required.
	Dir string
	// TrustDomain defaults to DefaultTrustDomain. A directory keeps the
	// trust domain of its CA.
	TrustDomain string
	// Host is the address every node listens on and clients dial
	// (default 127.0.0.1). It must be dialable: not a wildcard.
	Host string
	// BasePort fixes every node's ports (see the package documentation);
	// zero lets the system choose them. At most MaxFixedEdges edges, and
	// the highest port must not pass 65535.
	BasePort int
	// Backend is the URI of the central node's root of trust, the backend
	// alone (no key), e.g.
	// pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin.
	// Empty means a softkms keystore in Dir.
	Backend string
	// Edges default to DefaultEdges; an empty non-nil slice starts none.
	Edges []EdgeSpec
	// Policy is written to policy.cedar when the file does not exist
	// (default DefaultPolicy).
	Policy string
	// Lease and Heartbeat are the central node's edge lease and heartbeat
	// interval (config defaults when zero).
	Lease, Heartbeat time.Duration
	// DataKeyReuse is the reuse period of data keys at every node
	// (config default when zero).
	DataKeyReuse time.Duration
	// Logger receives every node's logs, each tagged with its node id.
	Logger *slog.Logger
	// Centrals is the number of central nodes (default 1). More than one
	// share an etcd store (see the package documentation).
	Centrals int
	// Etcd keeps the registry in etcd. Nil keeps it in bbolt with one
	// central node and means &EtcdOptions{} with more.
	Etcd *EtcdOptions
	// AWS, when set, serves the AWS KMS API on every central node and
	// edge (aws_kms), on ports of their own: with BasePort, node's gRPC
	// port + AWSPortOffset.
	AWS *AWSOptions
}

// AWSOptions are the dev cluster's AWS KMS API: one region and account
// for every node (an edge relays what it does not serve to a central,
// which verifies it with its own).
type AWSOptions struct {
	// Region defaults to DefaultAWSRegion, Account to DefaultAWSAccount.
	Region, Account string
}

// The dev cluster's AWS region and account when AWSOptions leaves them
// out (the account is AWS's documentation example).
const (
	DefaultAWSRegion  = "us-east-1"
	DefaultAWSAccount = "111122223333"
)

// AWSPortOffset is the distance from a node's gRPC port to its AWS KMS
// API port when Options.BasePort fixes the ports.
const AWSPortOffset = 2 * OpsPortOffset

// awsYAML is node's aws_kms block ("" without Options.AWS).
func (c *Cluster) awsYAML(node int) string {
	a := c.opts.AWS
	if a == nil {
		return ""
	}
	port := 0
	if c.opts.BasePort != 0 {
		port = c.opts.port(node, false) + AWSPortOffset
	}
	return fmt.Sprintf("aws_kms: {listen: %q, region: %s, account: %q}\n", net.JoinHostPort(c.opts.Host, strconv.Itoa(port)),
		cmp.Or(a.Region, DefaultAWSRegion), cmp.Or(a.Account, DefaultAWSAccount))
}

// EtcdOptions say which etcd the central nodes share.
type EtcdOptions struct {
	// Endpoints are the client URLs of an etcd to use, plain http on
	// loopback (the dev cluster gives etcd no TLS). Empty runs one etcd
	// member from the etcd binary, with its data in etcd/ in the
	// directory.
	Endpoints []string
}

// EtcdPrefix is where a dev cluster's objects live in etcd: apart from a
// deployment's default /keybroker/, in case an etcd is shared.
const EtcdPrefix = "/keybroker-dev/"

// CentralName is the node id of central node i (from 0): central, then
// central-2, central-3, ….
func CentralName(i int) string {
	if i == 0 {
		return "central"
	}
	return fmt.Sprintf("central-%d", i+1)
}

// etcdStartTimeout bounds the wait for the cluster's own etcd member to
// serve.
const etcdStartTimeout = time.Minute

// OpsPortOffset is the distance from a node's gRPC port to its
// operations port when Options.BasePort fixes the ports.
const OpsPortOffset = 10

// MaxFixedEdges is the most edges a cluster with fixed ports can have:
// their gRPC ports must stay below the central node's operations port.
// Central nodes after the first count against it too.
const MaxFixedEdges = OpsPortOffset - 1

// Cluster is a running cluster.
type Cluster struct {
	opts    Options
	ca      *identity.CA
	caFile  string
	lock    *os.File
	backend string
	roots   []RootKey
	etcd    *etcdproc.Cluster // the etcd member this cluster runs, if any
	etcdEPs []string          // the etcd the centrals share, if any
	// recordStore records the store the directory's registry is in.
	recordStore func() error
	// Central is the first central node (node id "central"); Centrals
	// are all of them, Central first.
	Central  *central.Node
	Centrals []*central.Node
	Edges    []*edge.Node
	// CentralConfig (the first central's), CentralConfigs (every
	// central's, in the order of Centrals) and EdgeConfigs are the files
	// the nodes were started from.
	CentralConfig  string
	CentralConfigs []string
	EdgeConfigs    []string
}

// Start prepares the directory and starts the central node, then the
// edges. The edges follow the central node in the background; Start does
// not wait for them to synchronise.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("devcluster: no directory")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Edges == nil {
		opts.Edges = DefaultEdges()
	}
	if opts.Policy == "" {
		opts.Policy = DefaultPolicy
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Centrals < 0 {
		return nil, fmt.Errorf("devcluster: %d central nodes", opts.Centrals)
	}
	opts.Centrals = max(opts.Centrals, 1)
	if opts.Etcd == nil && opts.Centrals > 1 {
		opts.Etcd = &EtcdOptions{}
	}
	if err := opts.checkEtcd(); err != nil {
		return nil, err
	}
	if err := opts.checkPorts(); err != nil {
		return nil, err
	}
	if ip := net.ParseIP(opts.Host); ip != nil && ip.IsUnspecified() {
		return nil, fmt.Errorf("devcluster: host %s is a wildcard: give an address clients can dial, such as 127.0.0.1", opts.Host)
	}
	if err := opts.probePorts(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devcluster: %w", err)
	}
	c = &Cluster{opts: opts, caFile: filepath.Join(dir, "ca.crt")}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = c.Shutdown(sctx)
			c = nil
		}
	}()
	if err := c.lockDir(); err != nil {
		return c, err
	}
	if err := c.prepare(ctx); err != nil {
		return c, err
	}
	if err := c.startEtcd(ctx); err != nil {
		return c, err
	}
	if err := c.recordStore(); err != nil {
		return c, err
	}
	roots, err := sharedRoots()
	if err != nil {
		return c, err
	}
	for i := range opts.Centrals {
		if err := c.writeCentralConfig(i); err != nil {
			return c, err
		}
		ccfg, err := config.LoadCentral(c.CentralConfigs[i])
		if err == nil {
			err = ccfg.Check()
		}
		if err != nil {
			return c, err
		}
		name := CentralName(i)
		n, err := central.Start(ctx, ccfg, central.Options{Logger: opts.Logger.With("node", name), Backends: roots})
		if err != nil {
			return c, c.portError(err, name, opts.centralNode(i))
		}
		c.Centrals = append(c.Centrals, n)
	}
	c.Central, c.CentralConfig = c.Centrals[0], c.CentralConfigs[0]
	if err := c.enrollEdges(ctx); err != nil {
		return c, err
	}
	for i, e := range opts.Edges {
		path, err := c.writeEdgeConfig(i, e)
		if err != nil {
			return c, err
		}
		c.EdgeConfigs = append(c.EdgeConfigs, path)
		ecfg, err := config.LoadEdge(path)
		if err == nil {
			err = ecfg.Check()
		}
		if err != nil {
			return c, err
		}
		n, err := edge.Start(ctx, ecfg, edge.Options{Logger: opts.Logger.With("node", e.Name)})
		if err != nil {
			return c, c.portError(err, e.Name, i+1)
		}
		c.Edges = append(c.Edges, n)
	}
	return c, nil
}

// enrollEdges enrolls every edge at the central node, as the admin over
// gRPC (so that it is authorized and audited like any enrollment), with
// its spec's region: an edge's region is set at the central tier, never by
// the edge. An edge enrolled by an earlier start in the same directory is
// moved to its spec's region.
func (c *Cluster) enrollEdges(ctx context.Context) error {
	if len(c.opts.Edges) == 0 {
		return nil
	}
	tlsCfg, err := c.ClientTLS(identity.Admin, AdminName)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return err
	}
	defer cc.Close()
	admin := kbv1.NewKeyAdminClient(cc)
	for _, e := range c.opts.Edges {
		// An edge enrolled by an earlier start is updated, not enrolled
		// again: read from the registry in this process, so that a
		// restart does not log and audit an AlreadyExists it expects.
		var err error
		if n, nerr := c.Central.Service().Registry().Node(ctx, e.Name); nerr == nil && n.Enrolled {
			err = status.Error(codes.AlreadyExists, "enrolled by an earlier start")
		} else {
			_, err = admin.EnrollNode(ctx, &kbv1.EnrollNodeRequest{NodeId: e.Name, Region: e.Region})
		}
		if status.Code(err) == codes.AlreadyExists {
			_, err = admin.UpdateNode(ctx, &kbv1.UpdateNodeRequest{NodeId: e.Name, Region: &e.Region, ReplaceLabels: true})
		}
		if err != nil {
			return fmt.Errorf("devcluster: enrolling edge %s: %w", e.Name, err)
		}
	}
	return nil
}

// prepare makes or reuses the CA, issues this start's certificates,
// writes the policy if missing, creates the root keys if missing and
// writes central.yaml.
func (c *Cluster) prepare(ctx context.Context) error {
	dir := c.opts.Dir
	if err := c.loadOrCreateCA(); err != nil {
		return err
	}
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	hosts := []string{c.opts.Host, "localhost"}
	issue := []struct {
		kind identity.Kind
		name string
	}{{identity.Admin, AdminName}, {identity.Client, AppName}}
	for i := range c.opts.Centrals {
		issue = append(issue, struct {
			kind identity.Kind
			name string
		}{identity.Central, CentralName(i)})
	}
	for _, e := range c.opts.Edges {
		issue = append(issue, struct {
			kind identity.Kind
			name string
		}{identity.Edge, e.Name})
	}
	for _, id := range issue {
		var h []string // clients and admins carry no host names
		if id.kind.Serves() {
			h = hosts
		}
		if _, err := c.ca.IssueFiles(identity.Identity{TrustDomain: c.ca.TrustDomain, Kind: id.kind, Name: id.name},
			h, certValidity, certs, id.name, c.caFile); err != nil {
			return fmt.Errorf("devcluster: issuing %s: %w", id.name, err)
		}
	}
	policyFile := filepath.Join(dir, "policy.cedar")
	if _, err := os.Stat(policyFile); errors.Is(err, os.ErrNotExist) {
		if err := writeFile(policyFile, c.opts.Policy); err != nil {
			return err
		}
	}
	c.backend = c.opts.Backend
	if c.backend == "" {
		var err error
		if c.backend, err = c.softkms(); err != nil {
			return err
		}
	}
	roots, err := rootKeysFor(c.backend)
	if err != nil {
		return err
	}
	c.roots = roots
	c.CentralConfig = filepath.Join(dir, "central.yaml")
	// Before anything is created in the backend or a store.
	record, err := c.checkSameRoots()
	if err != nil {
		return err
	}
	recordStore, err := c.checkSameStore()
	if err != nil {
		return err
	}
	if err := ensureRootKeys(ctx, c.backend, roots); err != nil {
		return err
	}
	if err := record(); err != nil {
		return err
	}
	c.recordStore = recordStore // once the store has started
	return nil
}

// writeCentralConfig writes the configuration of central node i, after
// prepare and startEtcd.
func (c *Cluster) writeCentralConfig(i int) error {
	name := CentralName(i)
	path := filepath.Join(c.opts.Dir, name+".yaml")
	node := c.opts.centralNode(i)
	y := fmt.Sprintf(`# Written by keybroker's development cluster at every start.
node_id: %s
trust_domain: %s
listen: %s
ops_listen: %s
tls: {ca: ca.crt, cert: certs/%s.crt, key: certs/%s.key}
data_dir: %s
backends:
  - name: %s
    uri: %q
root_keys:
%sdefault_root_keys:
  derive: %q
  wrap: %q
policy:
  paths: [policy.cedar]
  reload_interval: 2s
`, name, c.ca.TrustDomain, c.listen(node, false), c.listen(node, true), name, name, name, backendName(c.backend), c.backend,
		c.rootKeysYAML(), c.rootURI("derive"), c.rootURI("wrap"))
	if len(c.etcdEPs) > 0 {
		y += fmt.Sprintf("store:\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n", quoteList(c.etcdEPs), EtcdPrefix)
	}
	if c.opts.Lease > 0 || c.opts.Heartbeat > 0 {
		y += "edges:\n"
		if c.opts.Lease > 0 {
			y += fmt.Sprintf("  lease: %s\n", c.opts.Lease)
		}
		if c.opts.Heartbeat > 0 {
			y += fmt.Sprintf("  heartbeat: %s\n", c.opts.Heartbeat)
		}
	}
	y += c.reuseYAML()
	y += c.awsYAML(node)
	if err := writeFile(path, y); err != nil {
		return err
	}
	c.CentralConfigs = append(c.CentralConfigs, path)
	return nil
}

// quoteList is a YAML flow list of quoted strings.
func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// certValidity is how long this start's certificates are valid; a
// restart issues new ones. It is longer than a deployment's defaults
// (identity.NodeValidity, identity.ClientValidity) so that a development
// cluster left running, and the env file it wrote, keep working.
const certValidity = 90 * 24 * time.Hour

func (c *Cluster) loadOrCreateCA() error {
	keyFile := filepath.Join(c.opts.Dir, "ca.key")
	if _, err := os.Stat(c.caFile); err == nil {
		ca, err := identity.LoadCA(c.caFile, keyFile)
		if err != nil {
			return fmt.Errorf("devcluster: %w", err)
		}
		if ca.TrustDomain != c.opts.TrustDomain && c.opts.TrustDomain != DefaultTrustDomain {
			return fmt.Errorf("devcluster: %s is the CA of trust domain %q, not %q", c.caFile, ca.TrustDomain, c.opts.TrustDomain)
		}
		c.ca = ca
		return nil
	}
	ca, err := identity.NewCA(c.opts.TrustDomain, identity.CAValidity)
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if err := ca.WriteCA(c.caFile, keyFile); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	c.ca = ca
	return nil
}

// rootKeysYAML declares every root key with its one role; a backend root
// serves the one key type its algorithm is.
func (c *Cluster) rootKeysYAML() string {
	var y strings.Builder
	for _, k := range c.roots {
		fmt.Fprintf(&y, "  - uri: %q\n    role: %s\n", k.URI, k.Role)
		if t := backendKeyType[k.Algorithm]; k.Role == "backend" && t != "" {
			fmt.Fprintf(&y, "    types: [%s]\n", t)
		}
	}
	return y.String()
}

// backendKeyType is the managed key type a backend root key of each
// algorithm serves.
var backendKeyType = map[backends.Algorithm]string{
	backends.ECDSAP256: "ecdsa-p256", backends.Ed25519: "ed25519", backends.AES256: "aes-256-gcm", backends.HMAC256: "hmac-sha256",
}

// rootURI is the key URI of the root key for role.
func (c *Cluster) rootURI(role string) string {
	for _, k := range c.roots {
		if k.Role == role {
			return k.URI
		}
	}
	return ""
}

// backendName names the backend in central.yaml: its scheme.
func backendName(uri string) string {
	scheme, _, _ := strings.Cut(uri, ":")
	return scheme
}

// rootOfTrustFile records which root of trust the directory's keys are
// bound to.
const rootOfTrustFile = "root-of-trust"

// defaultRoot is what rootOfTrustFile holds for the softkms keystore in
// the directory, which moves with it.
const defaultRoot = "the softkms keystore in this directory"

// checkSameRoots refuses to move a directory to another root of trust:
// the keys in its registry are bound to the root keys of the start that
// created them, and would stop working. It returns what to record once
// the root keys are in place; a directory from before the record was kept
// was on its softkms keystore, the only one there was.
func (c *Cluster) checkSameRoots() (record func() error, err error) {
	now := rootIdentity(c.backend)
	if u, ok := mustParse(c.backend).(*backends.SoftKMSURI); ok && u.Path == filepath.Join(c.opts.Dir, "softkms.json") {
		now = defaultRoot
	}
	path := filepath.Join(c.opts.Dir, rootOfTrustFile)
	was, record, err := c.recorded(path, now, defaultRoot)
	if err != nil {
		return nil, err
	}
	if was != "" && was != now {
		return nil, fmt.Errorf("devcluster: %s was set up on %s (recorded in %s), and this start is on %s: "+
			"the keys created there would stop working; start on the same root of trust, or use another directory", c.opts.Dir, was, path, now)
	}
	return record, nil
}

// recorded reads what the file at path recorded of a directory's set-up:
// was is "" for a new directory, before for one set up before such records
// were kept (it has a central.yaml); record writes now, when nothing was
// recorded, once the start is under way.
func (c *Cluster) recorded(path, now, before string) (was string, record func() error, err error) {
	switch data, err := os.ReadFile(path); {
	case err == nil:
		return strings.TrimSpace(string(data)), func() error { return nil }, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", nil, fmt.Errorf("devcluster: %w", err)
	}
	if _, err := os.Stat(c.CentralConfig); err == nil {
		was = before
	}
	return was, func() error { return writeFile(path, now+"\n") }, nil
}

// mustParse parses a URI rootKeysFor has already accepted.
func mustParse(uri string) backends.KeyURI {
	u, _ := backends.ParseKeyURI(uri)
	return u
}

// rootIdentity names a backend by what selects its keys, leaving out
// where its module and PIN file are, which may move.
func rootIdentity(uri string) string {
	u := mustParse(uri)
	if u == nil {
		return uri
	}
	if p, ok := u.(*backends.PKCS11URI); ok {
		short := *p
		short.ModulePath, short.ModuleName, short.PinSource, short.MaxSessions = "", "", "", 0
		return short.BackendURI()
	}
	return u.BackendURI()
}

// softkms makes the KEK on first use and returns the backend URI.
func (c *Cluster) softkms() (string, error) {
	kek := filepath.Join(c.opts.Dir, "kek")
	if _, err := os.Stat(kek); errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		if err := writeFile(kek, hex.EncodeToString(raw)); err != nil {
			return "", err
		}
	}
	return (&backends.SoftKMSURI{Path: filepath.Join(c.opts.Dir, "softkms.json"), KEKSource: kek}).String(), nil
}

// writeEdgeConfig writes the configuration of edge i.
func (c *Cluster) writeEdgeConfig(i int, e EdgeSpec) (string, error) {
	path := filepath.Join(c.opts.Dir, e.Name+".yaml")
	addrs := c.edgeCentrals(i)
	y := fmt.Sprintf(`# Written by keybroker's development cluster at every start.
node_id: %s
trust_domain: %s
listen: %s
ops_listen: %s
tls: {ca: ca.crt, cert: certs/%s.crt, key: certs/%s.key}
data_dir: %s
region: %s
central: {address: %q, addresses: [%s], server_name: %q}
prefetch: %t
reconnect: {initial_backoff: 50ms, max_backoff: 2s}
`, e.Name, c.ca.TrustDomain, c.listen(i+1, false), c.listen(i+1, true), e.Name, e.Name, e.Name, e.Region,
		addrs[0], quoteList(addrs[1:]), c.opts.Host, e.Prefetch)
	switch {
	case e.FailClosed:
		y += "max_staleness: 0s\n"
	case e.MaxStaleness > 0:
		y += fmt.Sprintf("max_staleness: %s\n", e.MaxStaleness)
	}
	y += c.reuseYAML()
	y += c.awsYAML(i + 1)
	return path, writeFile(path, y)
}

// edgeCentrals are the central addresses of edge i, in the order it
// tries them: central i mod N first, then the others in turn, so that the
// edges spread over the centrals and each can fail over to every other.
func (c *Cluster) edgeCentrals(i int) []string {
	n := len(c.Centrals)
	out := make([]string, n)
	for k := range n {
		out[k] = c.Centrals[(i+k)%n].Addr()
	}
	return out
}

func (c *Cluster) reuseYAML() string {
	if c.opts.DataKeyReuse <= 0 {
		return ""
	}
	return fmt.Sprintf("data_key_reuse: {period: %s}\n", c.opts.DataKeyReuse)
}

// listen is the YAML listen address of node (see Options.port): its gRPC
// port, or its operations port.
func (c *Cluster) listen(node int, ops bool) string {
	return fmt.Sprintf("%q", net.JoinHostPort(c.opts.Host, strconv.Itoa(c.opts.port(node, ops))))
}

// writeFile replaces path through a fresh temporary file, so a link
// planted at path (or at any name it is written under) is not followed.
func writeFile(path, content string) error {
	if err := atomicfile.Write(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	return nil
}

// Dir is the cluster's directory (absolute).
func (c *Cluster) Dir() string { return c.opts.Dir }

// TrustDomain is the cluster's trust domain (keybrokertest hands it out).
func (c *Cluster) TrustDomain() string { return c.ca.TrustDomain }

// CAFile is the CA certificate every node and client trusts.
func (c *Cluster) CAFile() string { return c.caFile }

// ClientFiles are the certificate files of the admin or app identity
// written to certs/.
func (c *Cluster) ClientFiles(name string) identity.TLSFiles {
	certs := filepath.Join(c.opts.Dir, "certs")
	return identity.TLSFiles{CA: c.caFile, Cert: filepath.Join(certs, name+".crt"), Key: filepath.Join(certs, name+".key")}
}

// ClientTLS issues a fresh certificate for any identity in the cluster's
// trust domain and returns a client TLS configuration with it (server name
// the cluster's host).
func (c *Cluster) ClientTLS(kind identity.Kind, name string) (*tls.Config, error) {
	certPEM, keyPEM, err := c.ca.Issue(identity.Identity{TrustDomain: c.ca.TrustDomain, Kind: kind, Name: name}, nil, certValidity)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: c.opts.Host}, nil
}

// IssueFiles issues a fresh certificate for any identity in the
// cluster's trust domain and writes it to dir as name.crt and name.key
// (the key 0600), for clients that take files.
func (c *Cluster) IssueFiles(kind identity.Kind, name, dir string) (identity.TLSFiles, error) {
	var hosts []string // clients and admins carry no host names
	if kind.Serves() {
		hosts = []string{c.opts.Host, "localhost"}
	}
	return c.ca.IssueFiles(identity.Identity{TrustDomain: c.ca.TrustDomain, Kind: kind, Name: name}, hosts, certValidity, dir, name, c.caFile)
}

// WaitSynced waits until every edge follows a central node, holds a
// lease (an edge serves nothing before its first heartbeat) and has
// applied everything the central registry has committed (the latest
// revision any central node knows of), or ctx ends.
func (c *Cluster) WaitSynced(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var rev uint64
		for _, n := range c.Centrals {
			rev = max(rev, n.Service().Registry().Store().Revision())
		}
		synced := true
		for _, e := range c.Edges {
			if !e.Cache().Connected() || e.Cache().LeaseExpires().IsZero() || e.Cache().Revision() < rev {
				synced = false
			}
		}
		if synced {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devcluster: edges not synchronised at revision %d: %w", rev, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// Backend is the URI of the central node's root of trust.
func (c *Cluster) Backend() string { return c.backend }

// RootKeys are the root keys of the central node, in Backend.
func (c *Cluster) RootKeys() []RootKey { return slices.Clone(c.roots) }

// EdgeSpecs are the edges the cluster was started with, in the order of
// Edges.
func (c *Cluster) EdgeSpecs() []EdgeSpec { return slices.Clone(c.opts.Edges) }

// EtcdEndpoints are the client URLs of the etcd the central nodes
// share; none when the registry is in bbolt.
func (c *Cluster) EtcdEndpoints() []string { return slices.Clone(c.etcdEPs) }

// EtcdDone is closed if the etcd member this cluster runs exits before
// Shutdown; nil (never ready) when the cluster runs none.
func (c *Cluster) EtcdDone() <-chan struct{} {
	if c.etcd == nil {
		return nil
	}
	return c.etcd.Members[0].Done()
}

// EtcdMember is the etcd member this cluster runs (its process, data
// directory and log), or nil.
func (c *Cluster) EtcdMember() *etcdproc.Member {
	if c.etcd == nil {
		return nil
	}
	return c.etcd.Members[0]
}

// Shutdown stops the edges, then the central nodes, then the etcd member
// the cluster runs, and releases the directory.
func (c *Cluster) Shutdown(ctx context.Context) error {
	var errs []error
	for _, e := range c.Edges {
		errs = append(errs, e.Shutdown(ctx))
	}
	for _, n := range c.Centrals {
		errs = append(errs, n.Shutdown(ctx))
	}
	c.etcd.Stop()
	c.unlockDir()
	return errors.Join(errs...)
}
