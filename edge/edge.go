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
// timeout, stops following, and closes the replica (zeroing the material
// in memory) and then the audit log. Listeners, identity, audit log,
// servers and the stop order are the node shell's (package internal/node).
//
// # AWS front-ends
//
// With aws_kms or xks blocks, the edge serves the AWS KMS API and the XKS
// proxy API on listeners of their own (aws.go): requests signed with an
// access key scoped to this edge are verified here, with the signing key
// the central tier seals to it (EdgeSync.SigningKey; opened with the
// edge's sealing key and kept in memory for awsjson.CredentialTTL, never
// on disk), and served through the same pipeline as gRPC calls when every
// key they name is served from what the edge holds; everything else is
// relayed as signed (EdgeSync.ForwardAWS). The pipeline's performer is the
// cache's with the XKS operations added over the material the edge holds.
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
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edgecache"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/node"
	"github.com/keybroker/keybroker/rpc"
)

// Node is a running edge process.
type Node struct {
	sh      *node.Shell // listeners, identity, audit log, servers, loops
	cfg     *config.Edge
	log     *slog.Logger
	cache   *edgecache.Cache
	perf    *performer
	central *grpc.ClientConn
	// The AWS front-ends (aws_kms, xks), when configured, and the signing
	// keys of the access keys scoped to this edge.
	awsAddr, xksAddr string
	signingKeys      *awsjson.Cached
}

// Options are the host process's contributions.
type Options struct {
	Logger *slog.Logger
}

// Start opens and starts an edge node.
func Start(ctx context.Context, cfg *config.Edge, opts Options) (n *Node, err error) {
	sh := node.New("edge", opts.Logger)
	log := sh.Log()
	n = &Node{sh: sh, cfg: cfg, log: log}
	started := n // every failure below returns nil, err: clean up what was opened
	var madeDirs []string
	defer func() {
		if err != nil {
			_ = sh.Close(started.closeOwn)
			removeMade(madeDirs, cfg, log)
		}
	}()
	metrics := sh.Metrics()
	if madeDirs, err = sh.MakeDataDir(cfg.Node); err != nil {
		return nil, err
	}
	if err := sh.OpenIdentity(ctx, cfg.Node, checkSelf(cfg)); err != nil {
		return nil, err
	}
	target, resolve, choice, err := centralTarget(cfg.Central)
	if err != nil {
		return nil, err
	}
	// The central tier is known by its SPIFFE id (kind central); its host
	// name is checked too only when central.server_name names one.
	n.central, err = grpc.NewClient(target, append(resolve,
		grpc.WithTransportCredentials(sh.ID().ClientCredentials(identity.AcceptKinds(identity.Central), cfg.Central.ServerName)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithConnectParams(centralConnectParams(cfg.Reconnect)))...)
	if err != nil {
		return nil, fmt.Errorf("edge: central.address: %w", err)
	}
	if err := sh.OpenAudit(cfg.Node); err != nil {
		return nil, err
	}
	advertise, err := sh.Listen(cfg.Node)
	if err != nil {
		return nil, err
	}
	n.cache, err = edgecache.Open(edgecache.Config{
		NodeID: cfg.NodeID, TrustDomain: cfg.TrustDomain, ExpectRegion: cfg.Region, ExpectLabels: cfg.Labels, Address: advertise,
		Prefetch: cfg.Prefetch, MaxStaleness: cfg.MaxStaleness, DataDir: cfg.DataDir, Central: n.central,
		MaterialEntries: cfg.MaterialCache.Size, MaterialTTL: cfg.MaterialCache.TTL, Reuse: cfg.DataKeyReuse.ReusePolicy(),
		MaxDataKeysPerVersion: cfg.DataKeyReuse.MaxDataKeysPerVersion,
		InitialBackoff:        cfg.Reconnect.InitialBackoff, MaxBackoff: cfg.Reconnect.MaxBackoff, Logger: log,
		CentralRefused: choice.avoid,
		// Set before Run starts the stream that calls it (startAWS, below).
		AccessKeyChanged: func(id string) {
			if n.signingKeys != nil {
				n.signingKeys.Changed(id)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	if err := n.cache.RegisterMetrics(metrics); err != nil {
		return nil, err
	}
	if n.perf, err = newPerformer(n.cache); err != nil {
		return nil, err
	}
	srv, err := rpc.New(rpc.Config{Performer: n.perf, Policy: n.cache.Policy(), Audit: sh.Audit(), NodeID: cfg.NodeID,
		TrustDomain: cfg.TrustDomain, Logger: log})
	if err != nil {
		return nil, err
	}
	sh.Serve(ctx, node.Serving{Node: cfg.Node, Ready: n.ready,
		Unary: srv.UnaryInterceptorThen(n.cache.UnaryInterceptor(srv)), Stream: srv.StreamInterceptor(),
		Register: func(g *grpc.Server) {
			kbv1.RegisterKeyBrokerServer(g, srv.KeyBroker())
			kbv1.RegisterKeyAdminServer(g, n.cache.Admin(srv))
		}})
	if err := n.startAWS(cfg, srv); err != nil {
		return nil, err
	}
	sh.Go(func(ctx context.Context) { _ = n.cache.Run(ctx) })
	// The region is the enrolled one, known from the replica of an edge
	// that followed the central tier before, or once it registers ("").
	log.Info("edge ready", "node_id", cfg.NodeID, "region", n.cache.Region(), "grpc_addr", sh.Addr(),
		"advertise_address", advertise, "ops_addr", sh.OpsAddr(), "central", cfg.Central.Address,
		"revision", n.cache.Revision(), "prefetch", cfg.Prefetch, "max_staleness", cfg.MaxStaleness, "aws_kms_addr", n.awsAddr, "xks_addr", n.xksAddr)
	return n, nil
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

// checkSelf refuses a certificate that is not this edge's — the
// central tier knows an edge by its certificate, so a mismatch would
// register the wrong node — or that lacks a usage an edge needs:
// serverAuth (clients dial it) and clientAuth (it dials the central tier);
// at start, and when it rotates.
func checkSelf(cfg *config.Edge) func(*identity.Material) error {
	want := identity.Identity{TrustDomain: cfg.TrustDomain, Kind: identity.Edge, Name: cfg.NodeID}
	return func(m *identity.Material) error { return identity.CheckSelf(m, identity.RoleEdge, want) }
}

// ReloadIdentity re-reads the TLS files and revocation lists now
// (SIGHUP). A failure keeps what is in force and is logged.
func (n *Node) ReloadIdentity() { n.sh.ReloadIdentity() }

// Addr is the gRPC listener's address.
func (n *Node) Addr() string { return n.sh.Addr() }

// AWSAddr is the address the AWS KMS API listens on ("" when not served).
func (n *Node) AWSAddr() string { return n.awsAddr }

// XKSAddr is the address the XKS proxy API listens on ("" when not served).
func (n *Node) XKSAddr() string { return n.xksAddr }

// OpsAddr is the operations listener's address.
func (n *Node) OpsAddr() string { return n.sh.OpsAddr() }

// Cache exposes the replica (tests, keybroker dev).
func (n *Node) Cache() *edgecache.Cache { return n.cache }

// Done reports a server that stopped on its own (an error from Serve).
func (n *Node) Done() <-chan error { return n.sh.Done() }

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

// Shutdown stops serving gracefully within ctx, stops following, then
// closes the replica (zeroing the material in memory) and the connection
// to the central tier, then the shell's audit log, listeners and
// identity.
func (n *Node) Shutdown(ctx context.Context) error {
	return n.sh.Shutdown(ctx, n.closeOwn)
}

// closeOwn closes what is the edge's own; the shell closes the rest.
func (n *Node) closeOwn() error {
	var errs []error
	if n.signingKeys != nil {
		n.signingKeys.Close()
	}
	if n.cache != nil {
		errs = append(errs, n.cache.Close())
	}
	if n.central != nil {
		errs = append(errs, n.central.Close())
	}
	return errors.Join(errs...)
}

// centralTarget is what the edge dials: central.address alone, or, with
// central.addresses, every central node through a fixed resolver whose
// pick_first policy connects to the first that answers, in order, and
// moves on when its node goes away or refuses the edge (see centrals).
func centralTarget(c config.EdgeCentral) (string, []grpc.DialOption, *centrals, error) {
	addrs := c.All()
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			field := "central.address"
			if i > 0 {
				field = fmt.Sprintf("central.addresses[%d]", i-1)
			}
			return "", nil, nil, fmt.Errorf("edge: %s: %w", field, err)
		}
	}
	if len(addrs) == 1 {
		return addrs[0], nil, nil, nil
	}
	ch := &centrals{r: manual.NewBuilderWithScheme("keybroker-central"), addrs: addrs, avoided: map[string]time.Time{}}
	ch.r.InitialState(ch.stateLocked(time.Now()))
	return ch.r.Scheme() + ":///central", []grpc.DialOption{grpc.WithResolvers(ch.r)}, ch, nil
}

// avoidCentral is how long an edge leaves out a central node that refused
// it before trying it again (last).
var avoidCentral = 30 * time.Second

// centrals is the edge's list of central nodes. A node that answers but
// refuses the edge — Unavailable: cut off from its store, or its feed lost
// — is left out of the list for avoidCentral: pick_first keeps a
// connection whose address is still listed, so leaving it out is what
// makes the edge move to the next central; it comes back at the end of
// the list. When every node has refused, the whole list is offered again.
type centrals struct {
	r     *manual.Resolver
	addrs []string

	mu      sync.Mutex
	avoided map[string]time.Time // address → until
}

// avoid leaves out for avoidCentral the configured address that reached
// the peer at addr (nil-safe: one central address).
func (c *centrals) avoid(addr string) {
	if c == nil {
		return
	}
	i := slices.IndexFunc(c.addrs, func(a string) bool { return sameAddress(a, addr) })
	if i < 0 {
		return
	}
	c.mu.Lock()
	now := time.Now()
	c.avoided[c.addrs[i]] = now.Add(avoidCentral)
	st := c.stateLocked(now)
	c.mu.Unlock()
	c.r.UpdateState(st)
	time.AfterFunc(avoidCentral, func() {
		c.mu.Lock()
		st := c.stateLocked(time.Now())
		c.mu.Unlock()
		c.r.UpdateState(st)
	})
}

// sameAddress says whether the configured address configured (host:port)
// reaches the peer address peer (ip:port): the same text, or the same
// port with the host resolving to the peer's IP.
func sameAddress(configured, peer string) bool {
	if configured == peer {
		return true
	}
	host, port, err := net.SplitHostPort(configured)
	pip, pport, perr := net.SplitHostPort(peer)
	if err != nil || perr != nil || port != pport {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	return err == nil && slices.ContainsFunc(ips, func(ip string) bool { return net.ParseIP(ip).Equal(net.ParseIP(pip)) })
}

// stateLocked lists the addresses not avoided at now, in order; every
// address when all are avoided.
func (c *centrals) stateLocked(now time.Time) resolver.State {
	var st resolver.State
	for _, a := range c.addrs {
		if now.Before(c.avoided[a]) {
			continue
		}
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	if len(st.Addresses) == 0 {
		clear(c.avoided)
		for _, a := range c.addrs {
			st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
		}
	}
	return st
}
