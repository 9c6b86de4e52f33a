// Package edge assembles keybroker's edge process from its configuration:
// the replica and material cache (package edgecache) following the central
// tier, the KeyBroker and KeyAdmin services for clients over mutual TLS
// (package rpc), the audit log, and the operations endpoints.
//
// # Lifecycle
//
// [Start] opens the replica from data_dir — a restarted edge serves at
// once from what it holds, within its staleness window — and starts
// following the central tier in the background; the edge never waits for
// the central tier to start. A Start that fails closes what it opened and,
// if it made data_dir, removes it again (with what it put there and the
// parents it made; never a data_dir that existed). [Node.Shutdown] stops
// accepting calls, lets in-flight calls finish within the shutdown
// timeout, stops following, and closes the audit log and the replica
// (zeroing the material in memory).
//
// # Operations endpoints
//
// /healthz (the process is up), /readyz (the replica may be served: it has
// synchronised once and its lease plus max_staleness has not run out; the
// JSON body says the revision, whether the edge follows the central tier,
// and when the lease runs out) and /metrics (Prometheus, with the cache's
// gauges), over the same mutual TLS as the gRPC port, to the principals
// ops.allow names (admins by default) and no one else.
package edge

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edgecache"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/internal/serve"
	"github.com/keybroker/keybroker/rpc"
)

// Node is a running edge process.
type Node struct {
	cfg     *config.Edge
	log     *slog.Logger
	cache   *edgecache.Cache
	audit   *audit.Log
	central *grpc.ClientConn
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
}

// Start opens and starts an edge node.
func Start(ctx context.Context, cfg *config.Edge, opts Options) (n *Node, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n = &Node{cfg: cfg, log: log}
	node := n // every failure below returns nil, err: clean up what was opened
	var madeDirs []string
	defer func() {
		if err != nil {
			node.closeResources()
			removeMade(madeDirs, cfg, log)
		}
	}()
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if madeDirs, err = makeDirs(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("edge: data_dir: %w", err)
	}
	if n.id, err = liveIdentity(ctx, cfg, log); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(cfg.Central.Address); err != nil {
		return nil, fmt.Errorf("edge: central.address: %w", err)
	}
	// The central tier is known by its SPIFFE id (kind central); its host
	// name is checked too only when central.server_name names one.
	n.central, err = grpc.NewClient(cfg.Central.Address,
		grpc.WithTransportCredentials(n.id.ClientCredentials(identity.AcceptKinds(identity.Central), cfg.Central.ServerName)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithConnectParams(centralConnectParams(cfg.Reconnect)))
	if err != nil {
		return nil, fmt.Errorf("edge: central.address: %w", err)
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
	if n.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("edge: listen: %w", err)
	}
	if n.opsLis, err = net.Listen("tcp", cfg.OpsListen); err != nil {
		return nil, fmt.Errorf("edge: ops_listen: %w", err)
	}
	advertise := cfg.AdvertiseAddress
	if advertise == "" {
		advertise = n.lis.Addr().String()
	}
	n.cache, err = edgecache.Open(edgecache.Config{
		NodeID: cfg.NodeID, TrustDomain: cfg.TrustDomain, ExpectRegion: cfg.Region, ExpectLabels: cfg.Labels, Address: advertise,
		Prefetch: cfg.Prefetch, MaxStaleness: cfg.MaxStaleness, DataDir: cfg.DataDir, Central: n.central,
		MaterialEntries: cfg.MaterialCache.Size, MaterialTTL: cfg.MaterialCache.TTL, Reuse: cfg.DataKeyReuse.ReusePolicy(),
		MaxDataKeysPerVersion: cfg.DataKeyReuse.MaxDataKeysPerVersion,
		InitialBackoff:        cfg.Reconnect.InitialBackoff, MaxBackoff: cfg.Reconnect.MaxBackoff, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := n.cache.RegisterMetrics(metrics); err != nil {
		return nil, err
	}
	srv, err := rpc.New(rpc.Config{Node: n.cache.Node(), Policy: n.cache.Policy(), Audit: n.audit, NodeID: cfg.NodeID,
		TrustDomain: cfg.TrustDomain, Logger: log})
	if err != nil {
		return nil, err
	}
	calls := rpc.NewMetrics(metrics)
	kinds, ids := cfg.Ops.Principals()
	n.servers = serve.New(n.id.ServerTLS(), serve.OpsHandler(metrics, n.ready, serve.Allow{TrustDomain: cfg.TrustDomain, Kinds: kinds, IDs: ids}),
		grpc.Creds(n.id.ServerCredentials()),
		grpc.MaxRecvMsgSize(cfg.Limits.MaxRequestBytes),
		grpc.ChainUnaryInterceptor(calls.Interceptor, srv.UnaryInterceptorThen(n.cache.UnaryInterceptor(srv))),
		grpc.ChainStreamInterceptor(srv.StreamInterceptor()),
	)
	kbv1.RegisterKeyBrokerServer(n.servers.GRPC, srv.KeyBroker())
	kbv1.RegisterKeyAdminServer(n.servers.GRPC, n.cache.Admin(srv))
	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	n.stop = stop
	n.servers.Start(n.lis, n.opsLis)
	n.loops.Go(func() { _ = n.cache.Run(loopCtx) })
	// The region is the enrolled one, known from the replica of an edge
	// that followed the central tier before, or once it registers ("").
	log.Info("edge ready", "node_id", cfg.NodeID, "region", n.cache.Region(), "grpc_addr", n.lis.Addr().String(),
		"advertise_address", advertise, "ops_addr", n.opsLis.Addr().String(), "central", cfg.Central.Address,
		"revision", n.cache.Revision(), "prefetch", cfg.Prefetch, "max_staleness", cfg.MaxStaleness)
	return n, nil
}

// makeDirs makes dir and its missing parents (mode 0700) and returns the
// directories it made, dir first.
func makeDirs(dir string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeMade undoes a failed start's mark on disk: when Start made
// data_dir, it removes what the start put there — the replica
// (replica.db), the sealing key no central tier ever saw, an audit log
// with nothing in it and its head — and then the directories it made,
// innermost first, each only if empty. A data_dir that existed before is left as it is: it
// may hold a replica or an audit log that matter. A failed first start
// used to leave data_dir behind, and an operator who then fixed, say, the
// data_dir path was left with a stray directory holding a sealing key.
func removeMade(made []string, cfg *config.Edge, log *slog.Logger) {
	if len(made) == 0 {
		return
	}
	dir := made[0]
	for _, name := range []string{"replica.db", "sealing.key"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("a failed start could not remove what it made in data_dir", "path", filepath.Join(dir, name), "err", err)
		}
	}
	if a := cfg.Audit.Path; a != "" && filepath.Dir(filepath.Clean(a)) == dir {
		// The log and its head go together (audit refuses a head without
		// its log).
		if st, err := os.Stat(a); err == nil && st.Mode().IsRegular() && st.Size() == 0 {
			if err := os.Remove(a + ".head"); err == nil || errors.Is(err, fs.ErrNotExist) {
				_ = os.Remove(a)
			}
		}
	}
	for _, d := range made {
		if err := os.Remove(d); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				log.Warn("a failed start left a directory it made, which is not empty", "path", d)
			}
			return
		}
	}
}

// maxProbeInterval bounds the time between the connection's attempts to
// reach a central tier that is down.
const maxProbeInterval = 5 * time.Second

// centralConnectParams is how the connection to the central tier retries
// on its own: from reconnect.initial_backoff (at most 1 s) up to
// reconnect.max_backoff but at most maxProbeInterval apart. The Watch loop
// resumes the moment the connection is ready again (edgecache.Cache.Run),
// so this, not the loop's backoff, decides how soon an edge follows a
// central tier that is back: grpc's default, up to 2 minutes, kept edges
// away long after the outage. An attempt at a central tier that is down
// costs a refused TCP connection.
func centralConnectParams(r config.Reconnect) grpc.ConnectParams {
	return grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  min(cmp.Or(r.InitialBackoff, time.Second), time.Second),
			Multiplier: backoff.DefaultConfig.Multiplier,
			Jitter:     backoff.DefaultConfig.Jitter,
			MaxDelay:   min(cmp.Or(r.MaxBackoff, maxProbeInterval), maxProbeInterval),
		},
		MinConnectTimeout: 20 * time.Second,
	}
}

// sourceFor is where an edge's identity comes from: its TLS files, or a
// SPIFFE Workload API agent when the configuration names one (it waits
// for the agent's first SVID, for spiffe.timeout at most).
func sourceFor(ctx context.Context, cfg *config.Edge, log *slog.Logger) (identity.Source, error) {
	if cfg.SPIFFE.Enabled() {
		return workload.NewSource(ctx, cfg.SPIFFE.Socket, cfg.SPIFFE.Options(log))
	}
	return identity.NewFileSource(cfg.TLS.Files(), cfg.TLS.FileOptions(log))
}

// liveIdentity opens the edge's identity and revocation lists. It refuses
// a certificate that is not this edge's — the central tier knows an edge
// by its certificate, so a mismatch would register the wrong node — or
// that lacks a usage an edge needs: serverAuth (clients dial it) and
// clientAuth (it dials the central tier); at start, and when it rotates.
func liveIdentity(ctx context.Context, cfg *config.Edge, log *slog.Logger) (*identity.Live, error) {
	files, err := sourceFor(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	// Checked at start and at every rotation (the one in force stays).
	want := identity.Identity{TrustDomain: cfg.TrustDomain, Kind: identity.Edge, Name: cfg.NodeID}
	src, err := identity.NewChecked(files, func(m *identity.Material) error {
		err := identity.CheckSelf(m, identity.RoleEdge, want)
		if err != nil && cfg.SPIFFE.Enabled() {
			return workload.ExplainSelf(err, cfg.SPIFFE.Socket)
		}
		return err
	}, log)
	if err != nil {
		files.Close()
		return nil, fmt.Errorf("edge: %w", err)
	}
	rev, err := identity.NewRevocation(cfg.TLS.Revocation(), func() []*x509.Certificate { return src.Current().Roots }, cfg.TLS.FileOptions(log))
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("edge: %w", err)
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

// Cache exposes the replica (tests, keybroker dev).
func (n *Node) Cache() *edgecache.Cache { return n.cache }

// Done reports a server that stopped on its own (an error from Serve).
func (n *Node) Done() <-chan error { return n.servers.Done() }

// ready: the replica has synchronised once and is within its staleness
// window.
func (n *Node) ready(context.Context) (bool, map[string]any) {
	checks := map[string]any{"revision": n.cache.Revision(), "connected": n.cache.Connected()}
	if l := n.cache.LeaseExpires(); !l.IsZero() {
		checks["lease_expires"] = l.UTC().Format(time.RFC3339Nano)
	}
	if err := n.cache.Serving(); err != nil {
		checks["serving"] = err.Error()
		return false, checks
	}
	return true, checks
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
	if n.audit != nil {
		errs = append(errs, n.audit.Close())
	}
	if n.cache != nil {
		errs = append(errs, n.cache.Close())
	}
	if n.central != nil {
		errs = append(errs, n.central.Close())
	}
	for _, l := range []net.Listener{n.lis, n.opsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	if n.id != nil {
		errs = append(errs, n.id.Close())
	}
	return errors.Join(errs...)
}
