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
// then closes the audit log (flushing it), the store and the backends.
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
// and counted in keybroker_backend_budget_refusals_total.
package central

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/awskms"
	"github.com/keybroker/keybroker/backends/gcpkms"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/server"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/internal/serve"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
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
	cfg     *config.Central
	log     *slog.Logger
	roots   *broker.Roots
	store   *store.Bolt
	svc     *broker.Service
	policy  *policy.Engine
	audit   *audit.Log
	rpc     *rpc.Server // maps errors to the codes audit lines record
	servers *serve.Servers
	id      *identity.Live
	lis     net.Listener
	opsLis  net.Listener

	stop    context.CancelFunc
	loops   sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
}

// Options are the host process's contributions.
type Options struct {
	Logger *slog.Logger
	// Backends opens roots of trust; nil means Backends().
	Backends *backends.Registry
}

// Start opens and starts a central node.
func Start(ctx context.Context, cfg *config.Central, opts Options) (n *Node, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Backends
	if reg == nil {
		reg = Backends()
	}
	n = &Node{cfg: cfg, log: log}
	node := n // every failure below returns nil, err: clean up what was opened
	defer func() {
		if err != nil {
			node.closeResources()
		}
	}()
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if n.id, err = liveIdentity(ctx, cfg, log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("central: data_dir: %w", err)
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
			d.Types = append(d.Types, broker.KeyType(t))
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
	if n.store, err = store.Open(filepath.Join(cfg.DataDir, "registry.db"), 0); err != nil {
		return nil, err
	}
	defaults := map[broker.Mode]string{}
	for mode, uri := range map[broker.Mode]string{broker.ModeDerive: cfg.DefaultRootKeys.Derive, broker.ModeWrap: cfg.DefaultRootKeys.Wrap, broker.ModeBackend: cfg.DefaultRootKeys.Backend} {
		if uri != "" {
			defaults[mode] = uri
		}
	}
	n.svc, err = broker.NewService(broker.ServiceConfig{
		Registry:     broker.NewRegistry(n.store, nil),
		Roots:        n.roots,
		Materials:    broker.NewMaterials(n.roots, cfg.MaterialCache.Size, cfg.MaterialCache.TTL, nil),
		DefaultRoots: defaults,
		Reuse:        envelope.ReusePolicy{Period: cfg.DataKeyReuse.Period, MaxMessages: cfg.DataKeyReuse.MaxMessages, MaxBytes: cfg.DataKeyReuse.MaxBytes},

		MaxDataKeysPerVersion: cfg.DataKeyReuse.MaxDataKeysPerVersion,
	})
	if err != nil {
		return nil, err
	}
	if err := metrics.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keybroker_data_keys_refused_total",
		Help: "Data keys refused because their key version had wrapped data_key_reuse.max_data_keys_per_version here (rotate the key)."},
		func() float64 { return float64(n.svc.DataKeysRefused()) })); err != nil {
		return nil, err
	}
	if n.policy, err = policy.NewEngine(cfg.Policy.Paths...); err != nil {
		return nil, err
	}
	ac := audit.Config{Path: cfg.Audit.Path, FlushInterval: cfg.Audit.FlushInterval}
	if cfg.Audit.HeadKeyFile != "" {
		if ac.HeadKey, err = audit.ReadHeadKey(cfg.Audit.HeadKeyFile); err != nil {
			return nil, err
		}
	}
	if n.audit, err = audit.OpenConfig(ac); err != nil {
		return nil, err
	}
	// Listen before building the server, so that the address it advertises
	// carries the port actually bound (listen may ask for port 0).
	if n.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("central: listen: %w", err)
	}
	if n.opsLis, err = net.Listen("tcp", cfg.OpsListen); err != nil {
		return nil, fmt.Errorf("central: ops_listen: %w", err)
	}
	advertise := cfg.AdvertiseAddress
	if advertise == "" {
		advertise = n.lis.Addr().String()
	}
	// Forwarded calls are verified against the bundle the listener
	// verifies direct callers against, and the same revocation lists.
	srv, err := server.New(server.Config{Service: n.svc, Policy: n.policy, Audit: n.audit, NodeID: cfg.NodeID,
		TrustDomain: cfg.TrustDomain, Address: advertise, Lease: cfg.Edges.Lease, Heartbeat: cfg.Edges.HeartbeatInterval(),
		Roots: n.id.Roots, Revoked: n.id.Revoked, Logger: log})
	if err != nil {
		return nil, err
	}
	n.rpc = srv.Server
	calls := rpc.NewMetrics(metrics)
	kinds, ids := cfg.Ops.Principals()
	n.servers = serve.New(n.id.ServerTLS(), serve.OpsHandler(metrics, n.ready, serve.Allow{TrustDomain: cfg.TrustDomain, Kinds: kinds, IDs: ids}),
		grpc.Creds(n.id.ServerCredentials()),
		grpc.MaxRecvMsgSize(cfg.Limits.MaxRequestBytes),
		grpc.ChainUnaryInterceptor(calls.Interceptor, srv.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(srv.StreamInterceptor()),
	)
	srv.Register(n.servers.GRPC)
	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	n.stop = stop
	n.servers.Start(n.lis, n.opsLis)
	n.loops.Go(func() { n.svc.Registry().Follow(loopCtx) })
	n.loops.Go(func() { n.reloadLoop(loopCtx) })
	n.loops.Go(func() { n.sweepLoop(loopCtx) })
	log.Info("central ready", "node_id", cfg.NodeID, "grpc_addr", n.lis.Addr().String(), "advertise_address", advertise, "ops_addr", n.opsLis.Addr().String(),
		"backends", n.roots.Names(), "policy", n.policy.Current().Hash()[:12])
	return n, nil
}

// sourceFor is where a central node's identity comes from: its TLS files,
// or a SPIFFE Workload API agent when the configuration names one (it
// waits for the agent's first SVID, for spiffe.timeout at most).
func sourceFor(ctx context.Context, cfg *config.Central, log *slog.Logger) (identity.Source, error) {
	if cfg.SPIFFE.Enabled() {
		return workload.NewSource(ctx, cfg.SPIFFE.Socket, cfg.SPIFFE.Options(log))
	}
	return identity.NewFileSource(cfg.TLS.Files(), cfg.TLS.FileOptions(log))
}

// liveIdentity opens the node's identity and its revocation lists, and
// refuses a certificate that cannot serve as central's, at start and when
// it rotates. An SVID must also be this node's own id (a certificate
// file may name another central node: files were shared before the
// Workload API, and a hand-made certificate is checked by its maker).
func liveIdentity(ctx context.Context, cfg *config.Central, log *slog.Logger) (*identity.Live, error) {
	files, err := sourceFor(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("central: %w", err)
	}
	var want identity.Identity
	if cfg.SPIFFE.Enabled() {
		want = identity.Identity{TrustDomain: cfg.TrustDomain, Kind: identity.Central, Name: cfg.NodeID}
	}
	// Checked at start and at every rotation: a certificate that cannot
	// serve as this node's is refused (the one in force stays).
	src, err := identity.NewChecked(files, func(m *identity.Material) error {
		err := identity.CheckSelf(m, identity.RoleCentral, want)
		if err == nil && m.ID.TrustDomain != cfg.TrustDomain {
			err = fmt.Errorf("tls.cert is %s, not of trust_domain %s", m.ID, cfg.TrustDomain)
		}
		if err != nil && cfg.SPIFFE.Enabled() {
			return workload.ExplainSelf(err, cfg.SPIFFE.Socket)
		}
		return err
	}, log)
	if err != nil {
		files.Close()
		return nil, fmt.Errorf("central: %w", err)
	}
	rev, err := identity.NewRevocation(cfg.TLS.Revocation(), func() []*x509.Certificate { return src.Current().Roots }, cfg.TLS.FileOptions(log))
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("central: %w", err)
	}
	return identity.NewLive(src, rev, log), nil
}

// ReloadIdentity re-reads the TLS files and revocation lists now
// (SIGHUP). A failure keeps what is in force and is logged.
func (n *Node) ReloadIdentity() {
	if err := n.id.Reload(); err != nil {
		n.log.Error("identity reload failed; the identity and revocation lists in force stay", "err", err)
	}
}

// Addr is the gRPC listener's address.
func (n *Node) Addr() string { return n.lis.Addr().String() }

// OpsAddr is the operations listener's address.
func (n *Node) OpsAddr() string { return n.opsLis.Addr().String() }

// Service exposes the broker service (for keybroker dev's set-up).
func (n *Node) Service() *broker.Service { return n.svc }

// Done reports a server that stopped on its own (an error from Serve).
func (n *Node) Done() <-chan error { return n.servers.Done() }

// ReloadPolicy re-reads the policy files now (SIGHUP).
func (n *Node) ReloadPolicy() {
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
	t := time.NewTicker(n.cfg.Policy.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.ReloadPolicy()
		}
	}
}

func (n *Node) sweepLoop(ctx context.Context) {
	t := time.NewTicker(SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.sweep(ctx)
		}
	}
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
	rec := audit.Record{Principal: "system", Node: n.cfg.NodeID, Operation: op, Key: key, Decision: "allow", Outcome: "ok"}
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
	checks["policy"] = n.policy.Current().Hash()[:12]
	if err := n.policy.LastError(); err != nil {
		checks["policy_reload"] = "failed; the previous policy stays in force (see the log)"
	}
	return ready, checks
}

// Shutdown stops serving gracefully within ctx, then closes everything.
func (n *Node) Shutdown(ctx context.Context) error {
	n.stop()
	err := n.servers.Stop(ctx, n.log)
	n.loops.Wait()
	return errors.Join(err, n.closeResources())
}

func (n *Node) closeResources() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	if n.id != nil {
		errs = append(errs, n.id.Close())
	}
	if n.audit != nil {
		errs = append(errs, n.audit.Close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	if n.roots != nil {
		errs = append(errs, n.roots.Close())
	}
	for _, l := range []net.Listener{n.lis, n.opsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	return errors.Join(errs...)
}
