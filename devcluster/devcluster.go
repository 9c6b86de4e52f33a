// Package devcluster runs a complete keybroker cluster in one process: a
// central node on a software root of trust and edges in their own
// regions, with a development CA, certificates, configuration files, a
// policy and the root keys, all kept in one directory and reused when the
// cluster starts again from it. It is what `keybroker dev` runs, and what
// benchmarks and examples start when they need real nodes talking gRPC
// over mutual TLS without separate processes.
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
//
// The CA and the software keystore are development conveniences: the CA's
// key and the KEK sit on disk next to what they protect.
package devcluster

import (
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
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edge"
	"github.com/keybroker/keybroker/identity"
)

// DefaultTrustDomain is the development trust domain.
const DefaultTrustDomain = "keybroker.dev"

// Client identities issued into certs/ at every start.
const (
	AdminName = "admin"
	AppName   = "app"
)

// DefaultPolicy lets the admin administer everything, clients use every
// key and the client-wide operations, and every edge hold every key's
// material (keys narrow that with their placement expression).
const DefaultPolicy = `// keybroker dev policy: edit freely; the central node re-reads it.
@id("admins")
permit (principal is Admin, action, resource);

@id("clients")
permit (principal is Client, action, resource is Key);

@id("client-service")
permit (principal is Client, action in [Action::"GenerateRandom", Action::"ListKeys"], resource is Service);

@id("edges-hold-material")
permit (principal is Edge, action == Action::"HoldMaterial", resource is Key);
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
	// Host is the address every node listens on (default 127.0.0.1);
	// ports are chosen by the system.
	Host string
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
}

// Cluster is a running cluster.
type Cluster struct {
	opts    Options
	ca      *identity.CA
	caFile  string
	Central *central.Node
	Edges   []*edge.Node
	// CentralConfig and EdgeConfigs are the files the nodes were started
	// from.
	CentralConfig string
	EdgeConfigs   []string
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
	if err := c.prepare(ctx); err != nil {
		return c, err
	}
	ccfg, err := config.LoadCentral(c.CentralConfig)
	if err == nil {
		err = ccfg.Check()
	}
	if err != nil {
		return c, err
	}
	if c.Central, err = central.Start(ctx, ccfg, central.Options{Logger: opts.Logger.With("node", "central")}); err != nil {
		return c, err
	}
	for _, e := range opts.Edges {
		path, err := c.writeEdgeConfig(e)
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
			return c, err
		}
		c.Edges = append(c.Edges, n)
	}
	return c, nil
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
	}{{identity.Central, "central"}, {identity.Admin, AdminName}, {identity.Client, AppName}}
	for _, e := range c.opts.Edges {
		issue = append(issue, struct {
			kind identity.Kind
			name string
		}{identity.Edge, e.Name})
	}
	for _, id := range issue {
		if _, err := c.ca.IssueFiles(identity.Identity{TrustDomain: c.ca.TrustDomain, Kind: id.kind, Name: id.name},
			hosts, certValidity, certs, id.name, c.caFile); err != nil {
			return fmt.Errorf("devcluster: issuing %s: %w", id.name, err)
		}
	}
	policyFile := filepath.Join(dir, "policy.cedar")
	if _, err := os.Stat(policyFile); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policyFile, []byte(c.opts.Policy), 0o600); err != nil {
			return fmt.Errorf("devcluster: %w", err)
		}
	}
	backendURI, err := c.softkms()
	if err != nil {
		return err
	}
	if err := ensureRootKeys(ctx, backendURI); err != nil {
		return err
	}
	c.CentralConfig = filepath.Join(dir, "central.yaml")
	y := fmt.Sprintf(`# Written by keybroker's development cluster at every start.
node_id: central
trust_domain: %s
listen: %s
ops_listen: %s
tls: {ca: ca.crt, cert: certs/central.crt, key: certs/central.key}
data_dir: central
backends:
  - name: softkms
    uri: %q
default_root_keys:
  derive: softkms:root-prf
  wrap: softkms:root-aes
policy:
  paths: [policy.cedar]
  reload_interval: 2s
`, c.ca.TrustDomain, hostPort(c.opts.Host), hostPort(c.opts.Host), backendURI)
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
	return writeFile(c.CentralConfig, y)
}

// certValidity is how long this start's certificates are valid; a
// restart issues new ones.
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
	ca, err := identity.NewCA(c.opts.TrustDomain, 10*365*24*time.Hour)
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if err := ca.WriteCA(c.caFile, keyFile); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	c.ca = ca
	return nil
}

// softkms makes the KEK on first use and returns the backend URI.
func (c *Cluster) softkms() (string, error) {
	kek := filepath.Join(c.opts.Dir, "kek")
	if _, err := os.Stat(kek); errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return "", err
		}
		if err := os.WriteFile(kek, []byte(hex.EncodeToString(raw)), 0o600); err != nil {
			return "", fmt.Errorf("devcluster: %w", err)
		}
	}
	return "softkms:path=" + filepath.Join(c.opts.Dir, "softkms.json") + ";kek-source=" + kek, nil
}

// rootKeys are the keys the default root keys name.
var rootKeys = []struct {
	name string
	alg  backends.Algorithm
}{{"root-prf", backends.HMAC256}, {"root-aes", backends.AES256}, {"root-ecdsa", backends.ECDSAP256}}

// ensureRootKeys creates the root keys the backend does not have yet.
func ensureRootKeys(ctx context.Context, uri string) error {
	b, err := central.Backends().Open(ctx, uri, backends.Options{})
	if err != nil {
		return err
	}
	defer b.Close()
	kc, ok := b.(backends.KeyCreator)
	if !ok {
		return errors.New("devcluster: the backend cannot create root keys")
	}
	for _, k := range rootKeys {
		_, err := b.Describe(ctx, k.name)
		if errors.Is(err, backends.ErrNotFound) {
			_, err = kc.CreateKey(ctx, k.name, k.alg)
		}
		if err != nil {
			return fmt.Errorf("devcluster: root key %s: %w", k.name, err)
		}
	}
	return nil
}

func (c *Cluster) writeEdgeConfig(e EdgeSpec) (string, error) {
	path := filepath.Join(c.opts.Dir, e.Name+".yaml")
	y := fmt.Sprintf(`# Written by keybroker's development cluster at every start.
node_id: %s
trust_domain: %s
listen: %s
ops_listen: %s
tls: {ca: ca.crt, cert: certs/%s.crt, key: certs/%s.key}
data_dir: %s
region: %s
central: {address: %q, server_name: %q}
prefetch: %t
reconnect: {initial_backoff: 50ms, max_backoff: 2s}
`, e.Name, c.ca.TrustDomain, hostPort(c.opts.Host), hostPort(c.opts.Host), e.Name, e.Name, e.Name, e.Region,
		c.Central.Addr(), c.opts.Host, e.Prefetch)
	switch {
	case e.FailClosed:
		y += "max_staleness: 0s\n"
	case e.MaxStaleness > 0:
		y += fmt.Sprintf("max_staleness: %s\n", e.MaxStaleness)
	}
	y += c.reuseYAML()
	return path, writeFile(path, y)
}

func (c *Cluster) reuseYAML() string {
	if c.opts.DataKeyReuse <= 0 {
		return ""
	}
	return fmt.Sprintf("data_key_reuse: {period: %s}\n", c.opts.DataKeyReuse)
}

// hostPort is a YAML listen address on host with a port the system picks.
func hostPort(host string) string {
	return fmt.Sprintf("%q", net.JoinHostPort(host, "0"))
}

func writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	return nil
}

// Dir is the cluster's directory (absolute).
func (c *Cluster) Dir() string { return c.opts.Dir }

// TrustDomain is the cluster's trust domain.
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

// WaitSynced waits until every edge follows the central node and has
// applied everything the central registry has committed, or ctx ends.
func (c *Cluster) WaitSynced(ctx context.Context) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		rev := c.Central.Service().Registry().Store().Revision()
		synced := true
		for _, e := range c.Edges {
			if !e.Cache().Connected() || e.Cache().Revision() < rev {
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

// Shutdown stops the edges, then the central node.
func (c *Cluster) Shutdown(ctx context.Context) error {
	var errs []error
	for _, e := range c.Edges {
		errs = append(errs, e.Shutdown(ctx))
	}
	if c.Central != nil {
		errs = append(errs, c.Central.Shutdown(ctx))
	}
	return errors.Join(errs...)
}
