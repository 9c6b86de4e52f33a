// Package central assembles keybroker's central process from its
// configuration: the roots of trust, the registry store, the material
// service, the Cedar policy engine, the audit log, the gRPC services over
// mutual TLS, and the operations endpoints.
//
// # Lifecycle
//
// [Start] opens everything and starts serving; it fails (closing what it
// opened) on any error, so a half-started node never serves. The node
// then runs two loops: policy reload every policy.reload_interval (a bad
// policy is logged and the old one stays), and a lifecycle sweep every
// minute (due rotations, expired pending deletions), each step audited as
// principal "system" before it is taken: a key whose audit line cannot be
// written is left alone until a later sweep, so no key is destroyed
// unaudited (a step that then fails gets a second line with its error).
// [Node.Shutdown] stops
// accepting calls, lets in-flight calls finish within the shutdown timeout,
// then closes the store and the backends, and then the audit log (flushing
// it). Listeners, identity, audit log, servers and the stop order are the
// node shell's (package internal/node).
//
// # Operations endpoints
//
// The ops listener serves /healthz (the process is up), /readyz (every
// backend healthy, policy loaded) and /metrics (Prometheus) over the same
// mutual TLS as the gRPC port: keybroker requires client certificates on
// every port, and the ops port admits only the principals ops.allow names
// (admins by default). /readyz names a failing backend's kind of failure
// (unavailable, permission_denied, …), never its error text, which goes to
// the log.
//
// # Backend budget
//
// Every call to a root of trust made on a principal's behalf is charged to
// that principal's token bucket (backend_budget; package internal/budget,
// charged by the decorator every root is behind, backends.Instrument, through
// broker.Roots' admission hook); refusals are ResourceExhausted, audited,
// and counted in keybroker_backend_budget_refusals_total. Edges have
// buckets of their own size (edge_rate, edge_burst): their calls derive the
// material they hold, one per key version when a prefetching edge first
// synchronises, not requests.
package central

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/awskms"
	"github.com/keybroker/keybroker/backends/gcpkms"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/server"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/internal/node"
	"github.com/keybroker/keybroker/internal/tick"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
	"github.com/keybroker/keybroker/xks"
)

// Backends returns the registry of every built-in root of trust. Every
// backend it opens is behind backends.Instrument (named by its scheme,
// recording no metrics), so whoever opens one — the roots, keybroker ca,
// devcluster — gets its arguments checked; the roots re-instrument theirs
// with their configured names, metrics and budget.
func Backends() *backends.Registry {
	r := backends.NewRegistry()
	for scheme, open := range map[string]backends.OpenFunc{
		"softkms": softkms.Open, "pkcs11": pkcs11.Open, "awskms": awskms.Open, "gcpkms": gcpkms.Open,
	} {
		if err := r.Register(scheme, backends.InstrumentOpen(scheme, open)); err != nil {
			panic(err) // a programming error: the set above is fixed
		}
	}
	return r
}

// SweepInterval is how often due rotations and deletions are carried out.
const SweepInterval = time.Minute

// Node is a running central process.
type Node struct {
	sh     *node.Shell // listeners, identity, audit log, servers, loops
	cfg    *config.Central
	log    *slog.Logger
	roots  *broker.Roots
	store  store.Store
	svc    *broker.Service
	policy *policy.Engine
	// policies keeps the policy in force on the store's set (store.etcd);
	// nil with bbolt, where the files are the policy.
	policies *policyShare
	audit    *audit.Log
	rpc      *rpc.Server // maps errors to the codes audit lines record
	awsAddr  string      // the AWS KMS API's address, when served
	xksAddr  string      // the XKS proxy API's address, when served
	// signingKeys keeps the AWS access keys' signing keys (aws_kms, xks).
	signingKeys *awsjson.Cached
}

// AWSAddr is the address the AWS KMS API listens on ("" when not served).
func (n *Node) AWSAddr() string { return n.awsAddr }

// XKSAddr is the address the XKS proxy API listens on ("" when not served).
func (n *Node) XKSAddr() string { return n.xksAddr }

// Options are the host process's contributions.
type Options struct {
	Logger *slog.Logger
	// Backends opens roots of trust; nil means Backends().
	Backends *backends.Registry
}

// Start opens and starts a central node.
func Start(ctx context.Context, cfg *config.Central, opts Options) (n *Node, err error) {
	sh := node.New("central", opts.Logger)
	log := sh.Log()
	reg := opts.Backends
	if reg == nil {
		reg = Backends()
	}
	n = &Node{sh: sh, cfg: cfg, log: log}
	started := n // every failure below returns nil, err: clean up what was opened
	defer func() {
		if err != nil {
			_ = sh.Close(started.closeOwn)
		}
	}()
	metrics := sh.Metrics()

	if err := sh.OpenIdentity(ctx, cfg.Node, checkSelf(cfg)); err != nil {
		return nil, err
	}
	if _, err := sh.MakeDataDir(cfg.Node); err != nil {
		return nil, err
	}
	var rcs []broker.RootConfig
	for _, b := range cfg.Backends {
		rcs = append(rcs, broker.RootConfig{Name: b.Name, URI: b.URI})
	}
	if n.roots, err = broker.OpenRoots(ctx, reg, rcs, backends.Options{Logger: log, Metrics: metrics}); err != nil {
		return nil, err
	}
	var declared []broker.RootKey
	for _, rk := range cfg.DeclaredRootKeys() {
		d := broker.RootKey{URI: rk.URI, Role: rk.Role}
		for _, t := range rk.Types {
			d.Types = append(d.Types, managed.KeyType(t))
		}
		declared = append(declared, d)
	}
	if err := n.roots.Declare(declared); err != nil {
		return nil, fmt.Errorf("central: root_keys: %w", err)
	}
	if err := metrics.Register(n.roots.Metrics()); err != nil {
		return nil, err
	}
	if err := metrics.Register(newBudgetRefusals(n.roots)); err != nil {
		return nil, err
	}
	bud, err := budget.New(budget.Config{Rate: float64(cfg.BackendBudget.Rate), Burst: cfg.BackendBudget.Burst, MaxPrincipals: cfg.BackendBudget.MaxPrincipals})
	if err != nil {
		return nil, err
	}
	n.roots.SetBudget(bud)
	edgeBud, err := budget.New(budget.Config{Rate: float64(cfg.BackendBudget.EdgeRate), Burst: cfg.BackendBudget.EdgeBurst, MaxPrincipals: cfg.BackendBudget.MaxPrincipals})
	if err != nil {
		return nil, err
	}
	n.roots.SetEdgeBudget(edgeBud)
	if n.store, err = openStore(ctx, cfg); err != nil {
		return nil, err
	}
	defaults := map[managed.Mode]string{}
	for mode, uri := range map[managed.Mode]string{managed.ModeDerive: cfg.DefaultRootKeys.Derive, managed.ModeWrap: cfg.DefaultRootKeys.Wrap, managed.ModeBackend: cfg.DefaultRootKeys.Backend} {
		if uri != "" {
			defaults[mode] = uri
		}
	}
	keys := broker.NewRegistry(n.store, nil)
	if e := cfg.Store.Etcd; e != nil {
		keys.FailClosedAfter(e.Staleness())
	}
	n.svc, err = broker.NewService(broker.ServiceConfig{
		Registry:     keys,
		Roots:        n.roots,
		Materials:    broker.NewMaterials(n.roots, cfg.MaterialCache.Size, cfg.MaterialCache.TTL, nil),
		DefaultRoots: defaults,
		Reuse:        cfg.DataKeyReuse.ReusePolicy(),

		MaxDataKeysPerVersion: cfg.DataKeyReuse.MaxDataKeysPerVersion,
	})
	if err != nil {
		return nil, err
	}
	if c, ok := n.store.(store.Current); ok {
		if err := metrics.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keybroker_store_silence_seconds",
			Help: "Seconds since etcd last answered this node's change feed (a progress notification is asked for every second); past store.etcd.max_staleness the node serves no key."},
			func() float64 { return time.Since(c.Heard()).Seconds() })); err != nil {
			return nil, err
		}
	}
	if err := metrics.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keybroker_data_keys_refused_total",
		Help: "Data keys refused because their key version had wrapped data_key_reuse.max_data_keys_per_version here (rotate the key)."},
		func() float64 { return float64(n.svc.DataKeysRefused()) })); err != nil {
		return nil, err
	}
	if n.policy, err = policy.NewEngine(cfg.Policy.Paths...); err != nil {
		return nil, err
	}
	if err := sh.OpenAudit(cfg.Node); err != nil {
		return nil, err
	}
	n.audit = sh.Audit()
	if cfg.Store.Etcd != nil {
		// The policy in force is the store's set (policyshare.go).
		n.policies = &policyShare{st: n.store, engine: n.policy, node: cfg.NodeID, log: log, audit: n.auditPolicy}
		if err := n.policies.start(ctx); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
	}
	advertise, err := sh.Listen(cfg.Node)
	if err != nil {
		return nil, err
	}
	// Forwarded calls are verified against the bundle the listener
	// verifies direct callers against, and the same revocation lists.
	presence, shared := n.store.(store.Presence)
	var centrals func(context.Context) ([]server.Central, error)
	if shared {
		centrals = func(ctx context.Context) ([]server.Central, error) { return liveCentrals(ctx, presence) }
	}
	var revoked func(string)
	if cfg.AWSKMS != nil || cfg.XKS != nil {
		n.signingKeys = awsjson.NewCached(n.svc, 10_000)
		revoked = n.signingKeys.Forget
	}
	srv, err := server.New(server.Config{Service: n.svc, Policy: n.policy, Audit: n.audit, NodeID: cfg.NodeID,
		TrustDomain: cfg.TrustDomain, Address: advertise, Lease: cfg.Edges.Lease, Heartbeat: cfg.Edges.HeartbeatInterval(),
		Roots: sh.ID().Roots, Revoked: sh.ID().Revoked, Logger: log, Centrals: centrals, AccessKeyRevoked: revoked})
	if err != nil {
		return nil, err
	}
	n.rpc = srv.Server
	sh.Serve(ctx, node.Serving{Node: cfg.Node, Ready: n.ready,
		Unary: srv.UnaryInterceptor(), Stream: srv.StreamInterceptor(), Register: srv.Register})
	if shared {
		// The other centrals offer this one in LookupKey while it lives.
		sh.Go(func(ctx context.Context) { presence.Announce(ctx, kindCentrals, cfg.NodeID, []byte(advertise)) })
		sh.Go(func(ctx context.Context) { srv.ShareLiveness(ctx, presence) })
	}
	// Edges relay the AWS requests they do not serve to these front-ends
	// (EdgeSync.ForwardAWS), which verify them as their listeners do.
	relayed := server.AWSFronts{Fronts: map[string]server.AWSFront{}}
	if n.signingKeys != nil {
		relayed.Via = n.signingKeys.Via
	}
	if a := cfg.AWSKMS; a != nil {
		front, err := awsjson.New(awsjson.Config{Pipeline: srv.Pipeline(), Status: srv.Status, Credentials: n.signingKeys,
			Region: a.Region, Account: a.Account, TrustDomain: cfg.TrustDomain, Logger: log})
		if err != nil {
			return nil, err
		}
		if n.awsAddr, err = sh.ServeAWSFront("aws_kms", a.Listen, a.ClientCA, awsjson.MaxBody, front); err != nil {
			return nil, err
		}
		relayed.Fronts["aws_kms"] = front
	}
	if x := cfg.XKS; x != nil {
		front, err := xks.New(xks.Config{Pipeline: srv.Pipeline(), Status: srv.Status, Credentials: n.signingKeys,
			Region: x.Region, Prefix: x.Prefix, HealthKey: x.HealthKey, Logger: log})
		if err != nil {
			return nil, err
		}
		if n.xksAddr, err = sh.ServeAWSFront("xks", x.Listen, x.ClientCA, xks.MaxBody, front); err != nil {
			return nil, err
		}
		relayed.Fronts["xks"] = front
	}
	srv.SetAWSFronts(relayed)
	if n.signingKeys != nil {
		n.svc.Registry().OnAccessKeyChange(n.signingKeys.Changed)
	}
	sh.Go(n.svc.Registry().Follow)
	if n.policies != nil {
		sh.Go(n.policies.follow)
	}
	sh.Go(n.watchSilence)
	sh.Go(n.reloadLoop)
	sh.Go(n.sweepLoop)
	log.Info("central ready", "node_id", cfg.NodeID, "grpc_addr", sh.Addr(), "advertise_address", advertise, "ops_addr", sh.OpsAddr(),
		"backends", n.roots.Names(), "policy", n.policy.Current().Hash()[:12], "aws_kms_addr", n.awsAddr, "xks_addr", n.xksAddr)
	return n, nil
}

// checkSelf refuses a certificate that cannot serve as central's, at
// start and when it rotates. An SVID must also be this node's own id (a
// certificate file may name another central node: files were shared
// before the Workload API, and a hand-made certificate is checked by its
// maker).
func checkSelf(cfg *config.Central) func(*identity.Material) error {
	var want identity.Identity
	if cfg.SPIFFE.Enabled() {
		want = identity.Identity{TrustDomain: cfg.TrustDomain, Kind: identity.Central, Name: cfg.NodeID}
	}
	return func(m *identity.Material) error {
		err := identity.CheckSelf(m, identity.RoleCentral, want)
		if err == nil && m.ID.TrustDomain != cfg.TrustDomain {
			err = fmt.Errorf("tls.cert is %s, not of trust_domain %s", m.ID, cfg.TrustDomain)
		}
		return err
	}
}

// ReloadIdentity re-reads the TLS files and revocation lists now
// (SIGHUP). A failure keeps what is in force and is logged.
func (n *Node) ReloadIdentity() { n.sh.ReloadIdentity() }

// Addr is the gRPC listener's address.
func (n *Node) Addr() string { return n.sh.Addr() }

// OpsAddr is the operations listener's address.
func (n *Node) OpsAddr() string { return n.sh.OpsAddr() }

// Service exposes the broker service (for keybroker dev's set-up).
func (n *Node) Service() *broker.Service { return n.svc }

// Done reports a server that stopped on its own (an error from Serve).
func (n *Node) Done() <-chan error { return n.sh.Done() }

// ReloadPolicy re-reads the policy files now (SIGHUP). On a shared store
// it publishes them when they differ from the set in force.
func (n *Node) ReloadPolicy() { n.reloadPolicy(true) }

// reloadPolicy re-reads the policy files; explicit is a SIGHUP's, not the
// reload interval's (see policyshare.go).
func (n *Node) reloadPolicy(explicit bool) {
	if n.policies != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if published, err := n.policies.reload(ctx, explicit); err != nil {
			n.log.Error("policy reload failed; the set in force stays", "err", err)
		} else if published {
			n.log.Info("policy files published to every central node", "policy", n.policy.Current().Hash()[:12])
		}
		return
	}
	changed, err := n.policy.Reload()
	switch {
	case err != nil:
		n.log.Error("policy reload failed; the previous policy stays in force", "err", err)
	case changed:
		n.log.Info("policy reloaded", "policy", n.policy.Current().Hash()[:12])
	}
}

func (n *Node) reloadLoop(ctx context.Context) {
	if n.cfg.Policy.ReloadInterval <= 0 {
		return
	}
	tick.Every(ctx, n.cfg.Policy.ReloadInterval, func() { n.reloadPolicy(false) })
}

func (n *Node) sweepLoop(ctx context.Context) {
	// One node sweeps: with a shared store (etcd) the nodes elect one,
	// whose writes are fenced on its leadership; a node alone leads.
	store.Lead(ctx, n.store, "sweep", n.cfg.NodeID, func(ctx context.Context) {
		// A new leader first catches up with every change made before it
		// led, so it never judges a key due that another node rotated.
		if err := n.svc.Registry().WaitFollowed(ctx, n.store.Revision()); err != nil {
			return
		}
		// It sweeps at once: a rotation that fell due while the last
		// leader died waits for no interval.
		n.sweep(ctx)
		tick.Every(ctx, SweepInterval, func() { n.sweep(ctx) })
	})
}

// sweep carries out due rotations and deletions, each audited before it
// is done: a key whose audit line cannot be written is left for the next
// sweep, never destroyed unaudited.
func (n *Node) sweep(ctx context.Context) {
	rotated, deleted, err := n.svc.Sweep(ctx, n.auditSystem)
	if len(rotated) > 0 || len(deleted) > 0 || err != nil {
		n.log.Info("lifecycle sweep", "rotated", rotated, "deleted", deleted, "err", err)
	}
}

// auditSystem records an operation the node performs by itself, before it
// does it (err nil: outcome ok) or when it failed after all.
func (n *Node) auditSystem(op, key string, err error) error {
	rec := audit.Record{Principal: "system", Node: n.cfg.NodeID, Operation: audit.Operation(op), Key: key, Decision: audit.Allow, Outcome: "ok"}
	if err != nil {
		st := n.rpc.Status(err)
		rec.Outcome, rec.Detail = st.Code().String(), st.Message()
	}
	if aerr := n.audit.Append(rec); aerr != nil {
		n.log.Error("audit append failed; the sweep leaves the key alone", "op", op, "key", key, "err", aerr)
		return aerr
	}
	return nil
}

// watchSilence logs when the registry stops serving because the store
// has been silent past max_staleness, and when it serves again.
func (n *Node) watchSilence(ctx context.Context) {
	var was error
	tick.Every(ctx, time.Second, func() {
		err := n.svc.Registry().Current()
		switch {
		case err != nil && was == nil:
			n.log.Error("cut off from the store: serving no key until it answers", "err", err)
		case err == nil && was != nil:
			n.log.Info("the store answers again: serving keys")
		}
		was = err
	})
}

// auditPolicy records a publication of this node's policy files to the
// store, before it is written (err nil) or when it failed.
func (n *Node) auditPolicy(op, detail string, err error) error {
	rec := audit.Record{Principal: "system", Node: n.cfg.NodeID, Operation: audit.Operation(op), Decision: audit.Allow, Outcome: "ok", Detail: detail}
	if err != nil {
		rec.Outcome, rec.Detail = "failed", detail+": "+err.Error()
	}
	return n.audit.Append(rec)
}

// ready: every backend healthy; the policy in force (and the last reload's
// error, if any) is reported alongside.
func (n *Node) ready(ctx context.Context) (bool, map[string]any) {
	checks := map[string]any{}
	ready := true
	for name, err := range n.roots.Health(ctx) {
		checks["backend:"+name] = "ok"
		if err != nil {
			// The body names the kind of failure only; the backend's own
			// text (a token label, an account, a region) goes to the log.
			checks["backend:"+name] = string(backends.CodeOf(err))
			n.log.Warn("backend not ready", "backend", name, "err", err)
			ready = false
		}
	}
	if err := n.svc.Registry().Current(); err != nil {
		// Cut off from etcd past max_staleness: it serves no key, so a
		// load balancer should send clients elsewhere.
		checks["store"] = "silent past store.etcd.max_staleness: serving no key (see the log)"
		ready = false
	}
	checks["policy"] = n.policy.Current().Hash()[:12]
	if err := n.policy.LastError(); err != nil {
		checks["policy_reload"] = "failed; the previous policy stays in force (see the log)"
	}
	if n.policies != nil {
		if err := n.policies.lastError(); err != nil {
			checks["policy_reload"] = "failed; the set in force stays (see the log)"
		}
		if d := n.policies.differs(); d != "" {
			checks["policy_files"] = d
		}
	}
	return ready, checks
}

// Shutdown stops serving gracefully within ctx, then closes everything:
// the store and the backends, then the shell's audit log, listeners and
// identity.
func (n *Node) Shutdown(ctx context.Context) error {
	return n.sh.Shutdown(ctx, n.closeOwn)
}

// closeOwn closes what is central's own; the shell closes the rest.
func (n *Node) closeOwn() error {
	var errs []error
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	if n.roots != nil {
		errs = append(errs, n.roots.Close())
	}
	if n.signingKeys != nil {
		n.signingKeys.Close()
	}
	return errors.Join(errs...)
}

// openStore opens the registry's store: the etcd cluster store.etcd names,
// or the bbolt file <data_dir>/registry.db.
func openStore(ctx context.Context, cfg *config.Central) (store.Store, error) {
	e := cfg.Store.Etcd
	if e == nil {
		return store.Open(filepath.Join(cfg.DataDir, "registry.db"), 0)
	}
	var tc *tls.Config
	if e.TLS.CA != "" {
		pem, err := os.ReadFile(e.TLS.CA)
		if err != nil {
			return nil, fmt.Errorf("store.etcd.tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store.etcd.tls.ca: %s holds no PEM certificate", e.TLS.CA)
		}
		tc = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		if e.TLS.Cert != "" {
			cert, err := tls.LoadX509KeyPair(e.TLS.Cert, e.TLS.Key)
			if err != nil {
				return nil, fmt.Errorf("store.etcd.tls: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
	}
	st, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: e.Endpoints, TLS: tc, Prefix: e.Prefix,
		DialTimeout: e.DialTimeout, RequestTimeout: e.RequestTimeout})
	if err != nil {
		return nil, fmt.Errorf("store.etcd: %w", err)
	}
	return st, nil
}

// kindCentrals is where central nodes sharing a store announce their
// advertised addresses.
const kindCentrals store.Kind = "centrals"

// liveCentrals lists the central nodes announced in the store.
func liveCentrals(ctx context.Context, p store.Presence) ([]server.Central, error) {
	objs, err := p.Present(ctx, kindCentrals)
	if err != nil {
		return nil, err
	}
	out := make([]server.Central, 0, len(objs))
	for _, o := range objs {
		out = append(out, server.Central{ID: o.ID, Address: string(o.Value)})
	}
	return out, nil
}
