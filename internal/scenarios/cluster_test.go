package scenarios_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// cluster is a devcluster in the benchmark process with an admin client at
// the (first) central node and an app client at the central node and at
// every edge, each over its own connection; with several central nodes,
// an admin and an app client at each as well.
type cluster struct {
	c        *devcluster.Cluster
	admin    kbv1.KeyAdminClient
	central  kbv1.KeyBrokerClient
	edges    []kbv1.KeyBrokerClient
	admins   []kbv1.KeyAdminClient // one at each central node, admin first
	centrals []kbv1.KeyBrokerClient
}

// startCluster starts a central node on softkms (its registry in bbolt)
// and n edges named edge-00, edge-01… in regions r0…r4, prefetching or
// not.
func startCluster(b *testing.B, n int, prefetch bool) *cluster {
	b.Helper()
	return startClusterOn(b, n, prefetch, tier{centrals: 1})
}

// tier is the central tier a benchmark runs on: how many central nodes,
// and whether their registry is in etcd (one member the cluster runs,
// from the etcd binary) or bbolt (one central node only).
type tier struct {
	centrals int
	etcd     bool
}

func (t tier) String() string {
	if !t.etcd {
		return fmt.Sprintf("centrals=%d-bbolt", t.centrals)
	}
	return fmt.Sprintf("centrals=%d-etcd", t.centrals)
}

// startClusterOn is startCluster on the central tier t; edge i follows
// central node i mod t.centrals first.
func startClusterOn(b *testing.B, n int, prefetch bool, t tier) *cluster {
	b.Helper()
	specs := make([]devcluster.EdgeSpec, n)
	for i := range specs {
		specs[i] = devcluster.EdgeSpec{Name: fmt.Sprintf("edge-%02d", i), Region: fmt.Sprintf("r%d", i%5), Prefetch: prefetch}
	}
	opts := devcluster.Options{Dir: b.TempDir(), Edges: specs, Centrals: t.centrals}
	if t.etcd {
		etcdtest.SkipIfMissing(b)
		opts.Etcd = &devcluster.EtcdOptions{}
	}
	c, err := devcluster.Start(b.Context(), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Shutdown(ctx)
	})
	cl := &cluster{c: c,
		admin:   kbv1.NewKeyAdminClient(dial(b, c, c.Central.Addr(), identity.Admin, devcluster.AdminName)),
		central: kbv1.NewKeyBrokerClient(dial(b, c, c.Central.Addr(), identity.Client, devcluster.AppName)),
	}
	for _, e := range c.Edges {
		cl.edges = append(cl.edges, kbv1.NewKeyBrokerClient(dial(b, c, e.Addr(), identity.Client, devcluster.AppName)))
	}
	cl.admins, cl.centrals = []kbv1.KeyAdminClient{cl.admin}, []kbv1.KeyBrokerClient{cl.central}
	for _, n := range c.Centrals[1:] {
		cl.admins = append(cl.admins, kbv1.NewKeyAdminClient(dial(b, c, n.Addr(), identity.Admin, devcluster.AdminName)))
		cl.centrals = append(cl.centrals, kbv1.NewKeyBrokerClient(dial(b, c, n.Addr(), identity.Client, devcluster.AppName)))
	}
	if err := cl.waitSynced(b.Context()); err != nil {
		b.Fatal(err)
	}
	return cl
}

func dial(b *testing.B, c *devcluster.Cluster, addr string, kind identity.Kind, name string) *grpc.ClientConn {
	b.Helper()
	cfg, err := c.ClientTLS(kind, name)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// createKey creates a derive-mode AES-256-GCM key.
func (cl *cluster) createKey(ctx context.Context, id string) (*kbv1.KeyMetadata, error) {
	return cl.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
}

// waitSynced waits, for at most a minute, until every edge follows the
// central tier and has applied everything it has committed.
func (cl *cluster) waitSynced(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return cl.c.WaitSynced(ctx)
}

// backendCalls is every call the central nodes have made to their roots
// of trust (keybroker_backend_calls_total summed).
func (cl *cluster) backendCalls() uint64 {
	var n uint64
	for _, c := range cl.c.Centrals {
		for _, v := range c.Service().Roots().Calls() {
			n += v
		}
	}
	return n
}

// quantiles reports p50, p99 and the maximum of ds in milliseconds under
// prefix (p50-ms, p99-ms, max-ms with an empty prefix). The quantiles are
// nearest-rank: the smallest sample with at least p% of the samples at or
// below it.
func quantiles(b *testing.B, prefix string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p int) time.Duration { return s[max(0, (len(s)*p+99)/100-1)] }
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(rank(50)), prefix+"p50-ms")
	b.ReportMetric(ms(rank(99)), prefix+"p99-ms")
	b.ReportMetric(ms(s[len(s)-1]), prefix+"max-ms")
}
