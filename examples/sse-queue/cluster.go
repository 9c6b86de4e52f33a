package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// cluster is what the service uses of keybroker: an SDK client for the
// data-key calls, a KeyAdmin client to create the queues' keys, the nodes'
// /metrics endpoints, and their names for the report.
type cluster struct {
	// About says where the cluster is, for the report.
	About   string
	Client  *client.Client
	Admin   kbv1.KeyAdminClient
	Metrics *nodeMetrics
	// Names maps node addresses to node ids.
	Names map[string]string
	close func(context.Context) error
}

// Close closes the clients and stops the cluster if this process runs it.
func (c *cluster) Close(ctx context.Context) error { return c.close(ctx) }

// devEdge is the in-process cluster's one edge. It fetches a key's
// material from the central tier on first use instead of prefetching it,
// so that the edge's call to the central tier shows in its counters.
var devEdge = devcluster.EdgeSpec{Name: "edge-us", Region: "us"}

// startDevCluster starts a central node and one edge in this process,
// from dir (reused if it holds a cluster already). The application's
// client talks to the edge as the dev cluster's app identity; keys are
// created at the central node as its admin.
func startDevCluster(ctx context.Context, dir string) (_ *cluster, err error) {
	dc, err := devcluster.Start(ctx, devcluster.Options{Dir: dir, Edges: []devcluster.EdgeSpec{devEdge}})
	if err != nil {
		return nil, err
	}
	var closers []func() error
	shutdown := func(ctx context.Context) error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		return errors.Join(append(errs, dc.Shutdown(ctx))...)
	}
	defer func() {
		if err != nil {
			_ = shutdown(context.WithoutCancel(ctx))
		}
	}()
	// The edge follows the central node in the background; a lookup
	// before it has registered would leave it out of the route.
	if err := dc.WaitSynced(ctx); err != nil {
		return nil, err
	}
	central, edge := dc.Central, dc.Edges[0]

	appTLS, err := dc.ClientTLS(identity.Client, devcluster.AppName)
	if err != nil {
		return nil, err
	}
	app, err := client.New(ctx, client.Config{Addrs: []string{edge.Addr(), central.Addr()}, TLS: appTLS, Region: devEdge.Region})
	if err != nil {
		return nil, err
	}
	closers = append(closers, app.Close)

	adminTLS, err := dc.ClientTLS(identity.Admin, devcluster.AdminName)
	if err != nil {
		return nil, err
	}
	adm, err := client.New(ctx, client.Config{Addrs: []string{central.Addr()}, TLS: adminTLS})
	if err != nil {
		return nil, err
	}
	closers = append(closers, adm.Close)
	admin, err := adm.Admin()
	if err != nil {
		return nil, err
	}

	return &cluster{
		About:  fmt.Sprintf("in-process cluster in %s: central %s, %s %s (fetches material on first use)", dc.Dir(), central.Addr(), devEdge.Name, edge.Addr()),
		Client: app,
		Admin:  admin,
		Metrics: &nodeMetrics{
			HTTP:    opsClient(adminTLS), // the ops ports admit admins only
			Central: "https://" + central.OpsAddr() + "/metrics",
			Edges:   []string{"https://" + edge.OpsAddr() + "/metrics"},
		},
		Names: map[string]string{central.Addr(): "central", edge.Addr(): devEdge.Name},
		close: shutdown,
	}, nil
}

// connectCluster uses a running cluster: addrs, and the TLS identity in
// the KEYBROKER_CA, _CERT and _KEY files (which `keybroker dev` writes to
// its env file: the admin, talking to the us edge). Metrics are read from
// the URLs given, if any.
func connectCluster(ctx context.Context, addrs []string, getenv func(string) string, centralMetrics string, edgeMetrics []string) (*cluster, error) {
	files := identity.TLSFiles{CA: getenv(client.EnvCA), Cert: getenv(client.EnvCert), Key: getenv(client.EnvKey)}
	if files.Validate() != nil {
		return nil, fmt.Errorf("a running cluster needs %s, %s and %s (source the env file keybroker dev writes)", client.EnvCA, client.EnvCert, client.EnvKey)
	}
	tlsCfg, err := files.ClientConfig("")
	if err != nil {
		return nil, err
	}
	cl, err := client.New(ctx, client.Config{Addrs: addrs, TLS: tlsCfg})
	if err != nil {
		return nil, err
	}
	admin, err := cl.Admin()
	if err != nil {
		cl.Close()
		return nil, err
	}
	// Node ids for the report, if this identity may list the nodes.
	names := map[string]string{}
	if resp, err := admin.ListNodes(ctx, &kbv1.ListNodesRequest{}); err == nil {
		for _, n := range resp.GetNodes() {
			names[n.GetAddress()] = n.GetNodeId()
		}
	}
	return &cluster{
		About:   fmt.Sprintf("running cluster at %v", addrs),
		Client:  cl,
		Admin:   admin,
		Metrics: &nodeMetrics{HTTP: opsClient(tlsCfg), Central: centralMetrics, Edges: edgeMetrics},
		Names:   names,
		close:   func(context.Context) error { return cl.Close() },
	}, nil
}

// opsClient reads the nodes' operations endpoints, which require a client
// certificate like their gRPC ports.
func opsClient(tlsCfg *tls.Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg.Clone()
	return &http.Client{Transport: tr}
}
