package framework

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// TierPrefix is the etcd prefix every central of a Tier shares.
const TierPrefix = "/kb-tier/"

// Tier is a central tier of several `keybroker central` processes sharing
// a registry on a real etcd cluster of several members on loopback, and
// edges that know every central node. Each central has its own node id,
// certificate (spiffe://kb.test/central/central-<n>), data directory and
// audit log, and a fixed port, so that a restarted central is found again
// by its edges and clients; all share the root keys (one softkms keystore),
// the policy file and the CA.
//
// A central may reach etcd through an [EtcdLink] — one [Proxy] per member —
// that the test cuts and heals, to cut that central alone off from etcd.
type Tier struct {
	*Setup
	Etcd     *etcdtest.Cluster
	Centrals []*TierCentral
	Edges    map[string]*EdgeNode
	Order    []string

	edges []*EdgeNode // to start

	mu    sync.Mutex
	conns map[string]*Conn // admin connections by central address
}

// TierCentral is one central process of a Tier.
type TierCentral struct {
	Name     string // central-1, central-2, ...
	Config   string // its central-<n>.yaml
	AuditLog string // data-<n>/audit.jsonl
	Addr     string // the fixed gRPC address, kept across restarts
	Proc     *Proc  // the current process (exited once killed)
	// Link is the proxies between this central and etcd (TierOptions.Linked),
	// nil when it dials etcd directly.
	Link *EtcdLink
}

// TierOptions configures StartTier.
type TierOptions struct {
	// Centrals is how many central processes run (default 3); Members how
	// many etcd members (default 3).
	Centrals, Members int
	// Linked names the centrals (by index) that reach etcd through an
	// EtcdLink.
	Linked []int
	// Extra is appended to every central.yaml, ExtraFor[i] to central i's
	// alone.
	Extra    string
	ExtraFor map[int]string
	// EtcdFor[i] is added to central i's store.etcd mapping, one
	// "field: value" a line ("max_staleness: 3s\n").
	EtcdFor map[int]string
	// Edges are started once the centrals are up, each given every
	// central's address, the list rotated by one more for each edge so
	// that edges spread over the centrals.
	Edges []*EdgeNode
}

// StartTier starts an etcd cluster, the central processes on it (each
// with a 2s edge lease and a 200ms heartbeat), and the edges: NewTier,
// then Start.
func StartTier(t *testing.T, opts TierOptions) *Tier {
	t.Helper()
	c := NewTier(t, opts)
	c.Start(t)
	return c
}

// NewTier starts the etcd cluster and writes every central's certificate
// and configuration (Centrals[i].Config), starting no central yet: a test
// may check a configuration first.
func NewTier(t *testing.T, opts TierOptions) *Tier {
	t.Helper()
	n := cmpOr(opts.Centrals, 3)
	c := &Tier{Setup: NewSetupOn(t, SoftkmsRoots, append(slices.Clone(BasicRoots), RootKey{"root-ec", "ecdsa-p256"}, RootKey{"root-mac", "hmac-256"})),
		Etcd: etcdtest.Start(t, cmpOr(opts.Members, 3)), Edges: map[string]*EdgeNode{}, conns: map[string]*Conn{}}
	base, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	for i := range n {
		name := fmt.Sprintf("central-%d", i+1)
		cn := &TierCentral{Name: name, Config: filepath.Join(c.Dir, name+".yaml"), AuditLog: filepath.Join(c.Dir, "data-"+name, "audit.jsonl"), Addr: FreeAddr(t)}
		_, err := c.CA.IssueFiles(identity.Identity{TrustDomain: TrustDomain, Kind: identity.Central, Name: name},
			[]string{"127.0.0.1", "localhost"}, time.Hour, c.Dir, name, c.CAFile)
		must(t, "issuing "+name, err)
		endpoints := c.Etcd.Endpoints()
		if slices.Contains(opts.Linked, i) {
			cn.Link = NewEtcdLink(t, c.Etcd)
			endpoints = cn.Link.Endpoints()
		}
		// A softkms keystore is one process's (it is locked): each central
		// opens its own copy, holding the same root keys.
		keystore := filepath.Join(c.Dir, "softkms.json")
		raw, err := os.ReadFile(keystore)
		must(t, "reading the keystore", err)
		must(t, "copying the keystore", os.WriteFile(filepath.Join(c.Dir, name+"-softkms.json"), raw, 0o600))
		cfg := string(base)
		for _, r := range [][2]string{
			{"path=" + keystore + ";", "path=" + filepath.Join(c.Dir, name+"-softkms.json") + ";"},
			{"node_id: central-1\n", "node_id: " + name + "\n"},
			{"cert: central.crt, key: central.key", "cert: " + name + ".crt, key: " + name + ".key"},
			{"data_dir: data\n", "data_dir: data-" + name + "\n"},
			{"listen: 127.0.0.1:0\n", "listen: " + cn.Addr + "\n"},
		} {
			if !strings.Contains(cfg, r[0]) {
				t.Fatalf("framework: central.yaml has no %q", r[0])
			}
			cfg = strings.Replace(cfg, r[0], r[1], 1)
		}
		cfg += fmt.Sprintf("edges: {lease: 2s, heartbeat: 200ms}\nstore:\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n", strings.Join(endpoints, ", "), TierPrefix)
		for line := range strings.Lines(opts.EtcdFor[i]) {
			cfg += "    " + strings.TrimSpace(line) + "\n"
		}
		cfg += opts.Extra + opts.ExtraFor[i]
		must(t, "writing "+cn.Config, os.WriteFile(cn.Config, []byte(cfg), 0o600))
		c.Centrals = append(c.Centrals, cn)
	}
	c.edges = opts.Edges
	return c
}

// Start starts every central, then the edges.
func (c *Tier) Start(t *testing.T) {
	t.Helper()
	for _, cn := range c.Centrals {
		cn.Proc = StartNode(t, "central", cn.Config)
	}
	for _, e := range c.edges {
		c.AddEdge(t, e)
	}
}

func cmpOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// Central is the central node named name.
func (c *Tier) Central(t *testing.T, name string) *TierCentral {
	t.Helper()
	for _, cn := range c.Centrals {
		if cn.Name == name {
			return cn
		}
	}
	t.Fatalf("framework: no central %q", name)
	return nil
}

// Live is the centrals whose process runs, in order.
func (c *Tier) Live() []*TierCentral {
	var out []*TierCentral
	for _, cn := range c.Centrals {
		if cn.Proc != nil && cn.Proc.Running() {
			out = append(out, cn)
		}
	}
	return out
}

// CentralAddrs is every central's address, in order.
func (c *Tier) CentralAddrs() []string {
	out := make([]string, len(c.Centrals))
	for i, cn := range c.Centrals {
		out[i] = cn.Addr
	}
	return out
}

// EdgeAddrs is every edge's address, in the order they were started.
func (c *Tier) EdgeAddrs() []string {
	var out []string
	for _, name := range c.Order {
		out = append(out, c.Edges[name].Proc.Addr)
	}
	return out
}

// AdminAt is an admin's raw connection to a central (kept for the test).
func (c *Tier) AdminAt(t *testing.T, cn *TierCentral) *Conn {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn, ok := c.conns[cn.Addr]; ok {
		return conn
	}
	conn := c.Dial(t, cn.Addr, identity.Admin, "ops")
	c.conns[cn.Addr] = conn
	return conn
}

// Admin is an admin's raw connection to the first live central.
func (c *Tier) Admin(t *testing.T) *Conn {
	t.Helper()
	live := c.Live()
	if len(live) == 0 {
		t.Fatal("framework: no central runs")
	}
	return c.AdminAt(t, live[0])
}

// Kill sends a central SIGKILL and waits until it is gone.
func (cn *TierCentral) Kill() { cn.Proc.Kill() }

// Restart starts a killed or stopped central again from its
// configuration and data directory, on its port.
func (c *Tier) Restart(t *testing.T, cn *TierCentral) {
	t.Helper()
	if cn.Proc.Running() {
		t.Fatalf("framework: Restart %s while it runs", cn.Name)
	}
	cn.Proc = StartNode(t, "central", cn.Config)
}

// AddEdge enrolls an edge at a live central and starts it with every
// central's address, rotated by the number of edges started before it.
func (c *Tier) AddEdge(t *testing.T, e *EdgeNode) {
	t.Helper()
	if _, err := c.Admin(t).Admin.EnrollNode(t.Context(), &kbv1.EnrollNodeRequest{NodeId: e.Name, Region: e.Region}); err != nil {
		t.Fatalf("EnrollNode %s: %v", e.Name, err)
	}
	addrs := c.CentralAddrs()
	k := len(c.Order) % len(addrs)
	e.Centrals = slices.Concat(addrs[k:], addrs[:k])
	startEdge(t, c.Setup, e, "")
	c.Edges[e.Name] = e
	c.Order = append(c.Order, e.Name)
}

// Following says, for each edge, which live central's ListNodes lists it
// connected (its Watch stream open there); an edge none lists is absent.
func (c *Tier) Following(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, cn := range c.Live() {
		resp, err := c.AdminAt(t, cn).Admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
		if err != nil {
			continue // dying, or cut off: another answers
		}
		for _, n := range resp.GetNodes() {
			// Every central lists every edge (their liveness is shared in
			// the store); only the central holding its Watch stream is
			// the one it follows — Node.central names it.
			if n.GetKind() == "edge" && n.GetConnected() && n.GetCentral() == cn.Name {
				out[n.GetNodeId()] = cn.Name
			}
		}
	}
	return out
}

// WaitFollowing waits until every edge is connected at a live central.
func (c *Tier) WaitFollowing(t *testing.T) {
	t.Helper()
	Poll(t, "every edge following a live central", func() (bool, string) {
		f := c.Following(t)
		for _, name := range c.Order {
			if _, ok := f[name]; !ok {
				return false, fmt.Sprintf("%s follows no live central: %v", name, f)
			}
		}
		return true, ""
	})
}

// WaitApplied waits until every edge follows a live central and has
// acknowledged revision rev there.
func (c *Tier) WaitApplied(t *testing.T, rev uint64) {
	t.Helper()
	Poll(t, fmt.Sprintf("every edge at revision %d", rev), func() (bool, string) {
		got := map[string]uint64{}
		for _, cn := range c.Live() {
			resp, err := c.AdminAt(t, cn).Admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
			if err != nil {
				continue
			}
			for _, n := range resp.GetNodes() {
				if n.GetKind() == "edge" && n.GetConnected() {
					got[n.GetNodeId()] = max(got[n.GetNodeId()], n.GetAppliedRevision())
				}
			}
		}
		for _, name := range c.Order {
			if got[name] < rev {
				return false, fmt.Sprintf("applied revisions %v", got)
			}
		}
		return true, ""
	})
}

// SDK is a Go SDK client as kind/name, configured with every edge's
// address and then every central's (an admin: the centrals first), making
// up to attempts passes.
func (c *Tier) SDK(t *testing.T, kind identity.Kind, name, region string, attempts int) *client.Client {
	t.Helper()
	addrs := append(c.EdgeAddrs(), c.CentralAddrs()...)
	if kind == identity.Admin {
		addrs = append(c.CentralAddrs(), c.EdgeAddrs()...)
	}
	return c.SDKWith(t, kind, name, client.Config{Addrs: addrs, Region: region, MaxAttempts: attempts})
}

// SDKWith is a Go SDK client as kind/name with cfg's addresses, region,
// routing and attempts, pausing 20-200ms between passes.
func (c *Tier) SDKWith(t *testing.T, kind identity.Kind, name string, cfg client.Config) *client.Client {
	t.Helper()
	cfg.TLS = c.clientTLS(t, Principal{Kind: kind, Name: name})
	cfg.Backoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cfg.Getenv = func(string) string { return "" }
	cl, err := client.New(t.Context(), cfg)
	must(t, "client.New", err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// EtcdLeader is the etcd member that leads now, by its Status.
func (c *Tier) EtcdLeader(t *testing.T) *etcdtest.Member {
	t.Helper()
	var leader *etcdtest.Member
	Poll(t, "an etcd leader", func() (bool, string) {
		cli := c.Etcd.Client(t)
		var last string
		for _, m := range c.Etcd.Members {
			if !m.Running() {
				continue
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			st, err := cli.Status(ctx, m.ClientURL)
			cancel()
			if err != nil {
				last = err.Error()
				continue
			}
			if st.Leader != 0 && st.Header.GetMemberId() == st.Leader {
				leader = m
				return true, ""
			}
			last = fmt.Sprintf("%s: leader %x", m.Name, st.Leader)
		}
		return false, last
	})
	return leader
}

// SweepLeader is the node id of the central elected to run the lifecycle
// sweep ("" when none is): the value of the election key created first.
func (c *Tier) SweepLeader(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := c.Etcd.Client(t).Get(ctx, TierPrefix+"elect/sweep/", clientv3.WithFirstCreate()...)
	must(t, "reading the sweep election", err)
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// EtcdLink is a Proxy to each etcd member: a central whose endpoints are
// the link's is cut off from etcd altogether by Cut, and reconnected by
// Heal.
type EtcdLink struct {
	proxies []*Proxy
}

// NewEtcdLink starts a proxy to every member of cluster.
func NewEtcdLink(t *testing.T, cluster *etcdtest.Cluster) *EtcdLink {
	t.Helper()
	l := &EtcdLink{}
	for _, m := range cluster.Members {
		l.proxies = append(l.proxies, NewProxy(t, strings.TrimPrefix(m.ClientURL, "http://")))
	}
	return l
}

// Endpoints are the proxies' URLs, one per member, to give as
// store.etcd.endpoints.
func (l *EtcdLink) Endpoints() []string {
	out := make([]string, len(l.proxies))
	for i, p := range l.proxies {
		out[i] = "http://" + p.Addr()
	}
	return out
}

// Cut resets every connection through the link and refuses new ones.
func (l *EtcdLink) Cut() {
	for _, p := range l.proxies {
		p.Cut()
	}
}

// Heal lets connections through again.
func (l *EtcdLink) Heal() {
	for _, p := range l.proxies {
		p.Restore()
	}
}

// AuditOf is the records of a central's audit log that match.
func (c *Tier) AuditOf(t *testing.T, cn *TierCentral, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	return readAudit(t, cn.AuditLog, match)
}

// NodeName names the node at addr (a central or an edge), or returns addr.
func (c *Tier) NodeName(addr string) string {
	for _, cn := range c.Centrals {
		if cn.Addr == addr {
			return cn.Name
		}
	}
	for _, name := range c.Order {
		if c.Edges[name].Proc.Addr == addr {
			return name
		}
	}
	return addr
}

// MakeDue moves each key's next rotation into the past in the shared
// store, as if its rotation period had run out, writing the key's record
// with compare-and-swap as a central would; every central follows the
// change. It is how a test lets a period of at least a day pass.
func (c *Tier) MakeDue(t *testing.T, ids ...string) {
	t.Helper()
	st, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: c.Etcd.Endpoints(), Prefix: TierPrefix})
	must(t, "opening the store", err)
	defer st.Close()
	for _, id := range ids {
		for {
			o, err := st.Get(t.Context(), broker.KindKeys, id)
			must(t, "reading key "+id, err)
			var rec map[string]any
			must(t, "decoding key "+id, json.Unmarshal(o.Value, &rec))
			rec["next_rotation"] = time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
			raw, err := json.Marshal(rec)
			must(t, "encoding key "+id, err)
			if _, err := st.Put(t.Context(), broker.KindKeys, id, raw, o.Revision); errors.Is(err, store.ErrConflict) {
				continue // changed meanwhile: read it again
			} else {
				must(t, "writing key "+id, err)
			}
			break
		}
	}
}
