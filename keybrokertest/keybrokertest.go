// Package keybrokertest starts a keybroker cluster inside a Go test, as
// net/http/httptest starts an HTTP server: a central node and edges in
// the test's process, each a real gRPC server with mutual TLS on a
// loopback port the system chooses, on a softkms keystore or on a
// SoftHSM2 token made for the test, with a development CA that issues
// certificates for any principal. It hands back SDK clients, the nodes'
// addresses, credentials, the policy in force (which a test may replace,
// [Cluster.SetPolicy]) and the audit log ([Cluster.AuditLog]), and
// everything is stopped and removed when the test ends.
//
//	func TestPayments(t *testing.T) {
//		kb := keybrokertest.Start(t, keybrokertest.WithKeys("payments"))
//		c := kb.Client(t) // the app principal, at the first edge
//		ct, err := c.Encrypt(t.Context(), "payments", []byte("card 4111"), nil)
//		...
//	}
//
// The engine is package devcluster — what `keybroker dev` runs — so the
// nodes are assembled from configuration files through the same loading
// and validation as `keybroker central` and `keybroker edge`, and the
// policy is Cedar, checked and enforced as in a deployment.
//
// # Defaults
//
// Without options the cluster is a central node on a softkms keystore and
// two prefetching edges, edge-us in region us and edge-eu in region eu
// ([devcluster.DefaultEdges]), under [devcluster.DefaultPolicy]: admins
// may do everything, clients may use every key, edges may hold every
// key's material and forward their callers' calls. Keys given with
// [WithKeys] or [WithKey] are created by the admin through the central
// node's KeyAdmin API (authorized and audited like any call), and Start
// returns once every edge has them.
//
// # Parallel tests
//
// A softkms cluster has its own temporary directory and system-chosen
// ports, so tests that start one may run in parallel. A SoftHSM2 cluster
// cannot: SoftHSM reads SOFTHSM2_CONF once per process when its module is
// initialised, so [WithSoftHSM] sets it with t.Setenv, which Go refuses in
// a parallel test. Tests start their SoftHSM2 clusters one after another;
// each cluster closes the module when it stops, and the next one opens
// it afresh on its own token. A second SoftHSM2 cluster while one runs (a
// TestMain's from New and a test's from Start, say) is refused: its root
// keys would land on the first one's token.
//
// # Missing SoftHSM2
//
// When softhsm2-util or libsofthsm2.so is not installed, Start with
// [WithSoftHSM] skips the test saying what to install — unless
// KEYBROKER_REQUIRE_SOFTHSM=1 is set (CI), when it fails the test.
// KEYBROKER_SOFTHSM_MODULE names a module in a place the search does not
// look.
//
// # Without a test
//
// [New] and [Cluster.Close] start and stop a cluster with no testing.TB:
// for a TestMain that shares one cluster between a package's tests, and
// for examples. [Cluster.NewClient] is [Cluster.Client] for them.
//
// # Security
//
// Everything here is for tests: the CA's key, the softkms KEK and the
// token's PINs sit in the test's temporary directory, readable by the
// user running the tests, and certificates are issued to any name asked
// for. Never point production clients at it.
package keybrokertest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/softhsm"
	"github.com/keybroker/keybroker/policy"
)

// Principal names of the identities Client and AdminClient use by
// default.
const (
	AppName   = devcluster.AppName
	AdminName = devcluster.AdminName
)

// TokenLabel is the label of the SoftHSM2 token WithSoftHSM makes.
const TokenLabel = "keybrokertest"

// RequireSoftHSMEnv set to 1 turns a missing SoftHSM2 from a skip into a
// failure.
const RequireSoftHSMEnv = "KEYBROKER_REQUIRE_SOFTHSM"

// ErrNoSoftHSM is what New returns, wrapped with what to install, when
// WithSoftHSM is given and SoftHSM2 is not installed.
var ErrNoSoftHSM = softhsm.ErrNotInstalled

// syncTimeout bounds how long Start waits for the edges to have the
// keys it created: far above what a loaded machine needs, so that a
// cluster that cannot synchronise fails the test instead of hanging it.
const syncTimeout = 2 * time.Minute

// shutdownTimeout bounds the graceful stop at the end of a test.
const shutdownTimeout = 30 * time.Second

// softhsmInUse is held while a SoftHSM2 cluster runs in the process: the
// module is process-wide (see the package documentation).
var softhsmInUse sync.Mutex

// An Option configures a cluster.
type Option func(*settings)

type settings struct {
	softhsm bool
	edges   []devcluster.EdgeSpec
	keys    []*kbv1.CreateKeyRequest
	policy  string
	logger  *slog.Logger
}

// WithSoftHSM puts the central node's root keys on a SoftHSM2 token made
// for the cluster in its temporary directory, instead of a softkms
// keystore. See the package documentation for what it means for parallel
// tests and when SoftHSM2 is missing.
func WithSoftHSM() Option { return func(s *settings) { s.softhsm = true } }

// WithEdges replaces the default edges. With no specs the central node
// runs alone, and clients talk to it.
func WithEdges(specs ...devcluster.EdgeSpec) Option {
	return func(s *settings) { s.edges = append([]devcluster.EdgeSpec{}, specs...) }
}

// WithRegions starts one prefetching edge per region, named edge-REGION,
// in the order given, instead of the default edges.
func WithRegions(regions ...string) Option {
	return func(s *settings) {
		s.edges = []devcluster.EdgeSpec{}
		for _, r := range regions {
			s.edges = append(s.edges, devcluster.EdgeSpec{Name: "edge-" + r, Region: r, Prefetch: true})
		}
	}
}

// WithKeys creates AES-256-GCM keys in derive mode with these ids.
func WithKeys(ids ...string) Option {
	return func(s *settings) {
		for _, id := range ids {
			s.keys = append(s.keys, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
		}
	}
}

// WithKey creates a key as the request says: any type, mode, placement,
// labels or rotation.
func WithKey(req *kbv1.CreateKeyRequest) Option {
	return func(s *settings) { s.keys = append(s.keys, req) }
}

// WithPolicy is the Cedar policy the cluster enforces instead of
// devcluster.DefaultPolicy. It must let the admin create keys when
// WithKeys or WithKey is given, and edges hold material and forward for
// clients at the edges to be served there.
func WithPolicy(cedar string) Option { return func(s *settings) { s.policy = cedar } }

// WithLogger sends every node's logs, each tagged with its node id, to
// l (default: none).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// Cluster is a running cluster.
type Cluster struct {
	dev      *devcluster.Cluster
	auditLog string

	mu       sync.Mutex
	policy   string // guarded by mu: SetPolicy replaces it
	closed   bool
	cleanups []func() error // run by Close, last first
}

// Start starts a cluster for the test and stops it, removing everything,
// when the test ends; it fails the test if the cluster cannot start.
// With WithSoftHSM it skips the test when SoftHSM2 is missing.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	s := apply(opts)
	if s.softhsm {
		if err := softhsm.Check(); err != nil {
			if os.Getenv(RequireSoftHSMEnv) == "1" {
				t.Fatalf("keybrokertest: %v (%s=1 forbids skipping)", err, RequireSoftHSMEnv)
			}
			t.Skipf("keybrokertest: WithSoftHSM: %v", err)
		}
	}
	// t.Setenv restores the variable itself, after Close.
	c, err := start(t.Context(), s, t.TempDir(), func(k, v string) func() error { t.Setenv(k, v); return nil })
	if c != nil {
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Errorf("keybrokertest: stopping the cluster: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("keybrokertest: %v", err)
	}
	return c
}

// New starts a cluster in a temporary directory of its own, which Close
// removes. With WithSoftHSM it sets SOFTHSM2_CONF for the process until
// Close, and fails with an error wrapping ErrNoSoftHSM when SoftHSM2 is
// missing. The context is the one the nodes are started with: keep it
// alive while the cluster runs.
func New(ctx context.Context, opts ...Option) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "keybrokertest-")
	if err != nil {
		return nil, err
	}
	setenv := func(k, v string) (restore func() error) {
		old, had := os.LookupEnv(k)
		_ = os.Setenv(k, v)
		return func() error {
			if had {
				return os.Setenv(k, old)
			}
			return os.Unsetenv(k)
		}
	}
	c, err := start(ctx, apply(opts), dir, setenv)
	if c == nil {
		c = &Cluster{}
	}
	// Close stops the nodes, then removes the directory: cleanups run
	// last first.
	c.cleanups = append([]func() error{func() error { return os.RemoveAll(dir) }}, c.cleanups...)
	if err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

func apply(opts []Option) settings {
	var s settings
	for _, o := range opts {
		o(&s)
	}
	return s
}

// start starts the cluster in dir; it returns the cluster, for Close,
// even when it fails once there is something to undo. setenv sets a
// variable and returns what restores it (nil: nothing to do).
func start(ctx context.Context, s settings, dir string, setenv func(k, v string) (restore func() error)) (*Cluster, error) {
	c := &Cluster{}
	backend := ""
	if s.softhsm {
		// One SoftHSM2 cluster at a time: a second would set
		// SOFTHSM2_CONF after the module had read the first's, and its
		// root keys would go to the first cluster's token.
		if !softhsmInUse.TryLock() {
			return nil, errors.New("another SoftHSM2 cluster is running in this process, and SoftHSM reads SOFTHSM2_CONF once per process: stop it (Close) first")
		}
		c.cleanups = append(c.cleanups, func() error { softhsmInUse.Unlock(); return nil })
		hsm := filepath.Join(dir, "softhsm")
		if !softhsm.ConfSafe(hsm) {
			// A subtest's directory can hold '#' (t.Run("") is #00),
			// which softhsm2.conf cannot say.
			var err error
			if hsm, err = os.MkdirTemp("", "keybrokertest-softhsm-"); err != nil {
				return c, err
			}
			c.cleanups = append(c.cleanups, func() error { return os.RemoveAll(hsm) })
		}
		tok, err := softhsm.Ensure(ctx, hsm, TokenLabel, softhsm.Options{})
		if err != nil {
			return c, err
		}
		// Restored after the nodes stop and before another SoftHSM2
		// cluster may start (cleanups run last first).
		if restore := setenv(softhsm.ConfEnv, tok.Conf); restore != nil {
			c.cleanups = append(c.cleanups, restore)
		}
		backend = tok.URI("")
	}
	dev, err := devcluster.Start(ctx, devcluster.Options{Dir: filepath.Join(dir, "cluster"), Backend: backend,
		Edges: s.edges, Policy: s.policy, Logger: s.logger})
	if err != nil {
		return c, err
	}
	c.dev = dev
	c.cleanups = append(c.cleanups, func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		return dev.Shutdown(sctx)
	})
	if c.policy, err = readFile(filepath.Join(dev.Dir(), "policy.cedar")); err != nil {
		return c, err
	}
	ccfg, err := config.LoadCentral(dev.CentralConfig)
	if err != nil {
		return c, err
	}
	c.auditLog = ccfg.Audit.Path
	if len(s.keys) > 0 {
		if err := c.createKeys(ctx, s.keys); err != nil {
			return c, err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	return c, dev.WaitSynced(sctx)
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// createKeys creates the keys as the admin at the central node.
func (c *Cluster) createKeys(ctx context.Context, keys []*kbv1.CreateKeyRequest) error {
	admin, err := c.NewAdminClient(ctx)
	if err != nil {
		return err
	}
	defer admin.Close()
	ka, err := admin.Admin()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := ka.CreateKey(ctx, k); err != nil {
			return fmt.Errorf("creating key %s: %w", k.GetKeyId(), err)
		}
	}
	return nil
}

// Close stops the nodes and removes what New made; Start's cleanup calls
// it. Calling it again does nothing.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, f := range slices.Backward(c.cleanups) {
		errs = append(errs, f())
	}
	return errors.Join(errs...)
}

// A ClientOption configures a client.
type ClientOption func(*clientSettings)

type clientSettings struct {
	name   string
	addrs  []string
	region string
	edit   []func(*client.Config)
}

// As names the client's principal (default AppName for Client, AdminName
// for AdminClient); its certificate is issued on the spot.
func As(name string) ClientOption { return func(s *clientSettings) { s.name = name } }

// At pins the client to these nodes, in order, without asking LookupKey
// (client.Config.Direct): for a test about one node.
func At(addrs ...string) ClientOption {
	return func(s *clientSettings) { s.addrs = append([]string{}, addrs...) }
}

// InRegion is the client's region (client.Config.Region).
func InRegion(region string) ClientOption { return func(s *clientSettings) { s.region = region } }

// WithClientConfig edits the client's configuration last, for anything
// the other options do not cover.
func WithClientConfig(edit func(*client.Config)) ClientOption {
	return func(s *clientSettings) { s.edit = append(s.edit, edit) }
}

// Client returns an SDK client acting as a client principal (AppName
// unless As says otherwise), closed when the test ends. It starts at the
// first edge (the central node when there are none) and routes by
// LookupKey from there, unless At pins it.
func (c *Cluster) Client(t testing.TB, opts ...ClientOption) *client.Client {
	t.Helper()
	cl, err := c.NewClient(t.Context(), opts...)
	if err != nil {
		t.Fatalf("keybrokertest: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// AdminClient returns an SDK client acting as an admin (AdminName unless
// As says otherwise), at the central node unless At says otherwise,
// closed when the test ends. Its Admin method gives the KeyAdmin API.
func (c *Cluster) AdminClient(t testing.TB, opts ...ClientOption) *client.Client {
	t.Helper()
	cl, err := c.NewAdminClient(t.Context(), opts...)
	if err != nil {
		t.Fatalf("keybrokertest: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// NewClient is Client for code without a testing.TB; the caller closes
// the client.
func (c *Cluster) NewClient(ctx context.Context, opts ...ClientOption) (*client.Client, error) {
	seed := c.dev.Central.Addr()
	if len(c.dev.Edges) > 0 {
		seed = c.dev.Edges[0].Addr()
	}
	return c.newClient(ctx, identity.Client, AppName, seed, opts)
}

// NewAdminClient is AdminClient for code without a testing.TB; the
// caller closes the client.
func (c *Cluster) NewAdminClient(ctx context.Context, opts ...ClientOption) (*client.Client, error) {
	return c.newClient(ctx, identity.Admin, AdminName, c.dev.Central.Addr(), opts)
}

func (c *Cluster) newClient(ctx context.Context, kind identity.Kind, name, seed string, opts []ClientOption) (*client.Client, error) {
	s := clientSettings{name: name}
	for _, o := range opts {
		o(&s)
	}
	tlsCfg, err := c.dev.ClientTLS(kind, s.name)
	if err != nil {
		return nil, err
	}
	cfg := client.Config{Addrs: []string{seed}, TLS: tlsCfg, Region: s.region,
		// Fail over quickly: a test waits on it.
		Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		// The test's own environment (KEYBROKER_*) never reaches the client.
		Getenv: func(string) string { return "" }}
	if s.addrs != nil {
		cfg.Addrs, cfg.Direct = s.addrs, true
	}
	for _, edit := range s.edit {
		edit(&cfg)
	}
	return client.New(ctx, cfg)
}

// CentralAddr is the central node's gRPC address (host:port).
func (c *Cluster) CentralAddr() string { return c.dev.Central.Addr() }

// EdgeAddrs are the edges' gRPC addresses, in the order they were given.
func (c *Cluster) EdgeAddrs() []string {
	addrs := make([]string, len(c.dev.Edges))
	for i, e := range c.dev.Edges {
		addrs[i] = e.Addr()
	}
	return addrs
}

// EdgeAddr is the address of the first edge in region, or "" when no
// edge is there.
func (c *Cluster) EdgeAddr(region string) string {
	for i, s := range c.dev.EdgeSpecs() {
		if s.Region == region {
			return c.dev.Edges[i].Addr()
		}
	}
	return ""
}

// TLSFiles issues a certificate for the principal of that kind and name
// (any name: identity.Client, identity.Admin, even identity.Edge for a
// test of what a rogue edge can do) and writes it, with its key (0600),
// to a directory of the test's; the CA file is the cluster's. For tools
// and SDK configurations that take files (client.Config.CAFile...).
func (c *Cluster) TLSFiles(t testing.TB, kind identity.Kind, name string) identity.TLSFiles {
	t.Helper()
	f, err := c.dev.IssueFiles(kind, name, t.TempDir())
	if err != nil {
		t.Fatalf("keybrokertest: issuing %s %s: %v", kind, name, err)
	}
	return f
}

// TLSConfig issues a certificate for the principal of that kind and name
// and returns a mutual-TLS client configuration with it, trusting the
// cluster's CA, for raw gRPC clients (kbv1.NewKeyBrokerClient).
func (c *Cluster) TLSConfig(t testing.TB, kind identity.Kind, name string) *tls.Config {
	t.Helper()
	cfg, err := c.dev.ClientTLS(kind, name)
	if err != nil {
		t.Fatalf("keybrokertest: issuing %s %s: %v", kind, name, err)
	}
	return cfg
}

// Policy is the Cedar policy the cluster enforces.
func (c *Cluster) Policy() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy
}

// TrustDomain is the trust domain of every certificate the cluster
// issues.
func (c *Cluster) TrustDomain() string { return c.dev.TrustDomain() }

// CAFile is the CA certificate every node and client trusts.
func (c *Cluster) CAFile() string { return c.dev.CAFile() }

// Backend is the URI of the central node's root of trust: the softkms
// keystore, or the SoftHSM2 token (with its module and PIN file).
func (c *Cluster) Backend() string { return c.dev.Backend() }

// SetPolicy replaces the Cedar policy the cluster enforces and reloads it
// at the central node before it returns, so the next call is decided by
// it. A policy that does not parse or check is refused with the reason,
// and the one in force stays.
func (c *Cluster) SetPolicy(cedar string) error {
	path := filepath.Join(c.dev.Dir(), "policy.cedar")
	if _, err := policy.Parse(map[string][]byte{path: []byte(cedar)}); err != nil {
		return fmt.Errorf("keybrokertest: %w", err)
	}
	if err := atomicfile.Write(path, []byte(cedar), 0o600); err != nil {
		return fmt.Errorf("keybrokertest: %w", err)
	}
	c.dev.Central.ReloadPolicy()
	c.mu.Lock()
	c.policy = cedar
	c.mu.Unlock()
	return nil
}

// AuditLog is the central node's audit log: one JSON line per decision
// (audit.Record), each written before the call it records is answered.
// Read it while the cluster runs; `keybroker audit verify` checks its
// chain.
func (c *Cluster) AuditLog() string { return c.auditLog }

// Sync waits until every edge has applied every change the central node
// has committed — after a test changes keys through the admin API, say —
// or ctx ends.
func (c *Cluster) Sync(ctx context.Context) error { return c.dev.WaitSynced(ctx) }

// Dev is the devcluster underneath, for what this package does not
// cover: stopping one edge, the nodes' operations addresses, the
// directory. Stopping it early is the test's business; Close still runs.
func (c *Cluster) Dev() *devcluster.Cluster { return c.dev }
