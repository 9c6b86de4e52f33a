package devcluster

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/keybroker/keybroker/internal/etcdproc"
)

// storeFile records which store a directory's registry is in.
const storeFile = "store"

// The stores storeFile names.
const (
	storeBolt = "bbolt"
	storeEtcd = "etcd"
)

// checkEtcd refuses etcd options that cannot work, and a missing etcd
// binary, before anything is written.
func (o *Options) checkEtcd() error {
	if o.Etcd == nil {
		return nil
	}
	for _, ep := range o.Etcd.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "http" || u.Host == "" || u.Path != "" && u.Path != "/" {
			return fmt.Errorf("devcluster: etcd endpoint %q: give a URL http://host:port (the dev cluster speaks plain http to etcd, on loopback)", ep)
		}
		host, _, err := net.SplitHostPort(u.Host)
		if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("devcluster: etcd endpoint %q is not a loopback host:port: the dev cluster speaks plain http to etcd, which only loopback may carry", ep)
		}
	}
	if len(o.Etcd.Endpoints) == 0 {
		if _, err := etcdproc.Binary(); err != nil {
			return fmt.Errorf("devcluster: %d central nodes share an etcd store, and %w", o.Centrals, err)
		}
	}
	return nil
}

// checkSameStore refuses to move a directory's registry between bbolt and
// etcd: the keys created in one are not in the other. It returns what to
// record once the start is under way; a directory from before the record
// was kept, with a central.yaml, was on bbolt.
func (c *Cluster) checkSameStore() (record func() error, err error) {
	now := storeBolt
	if c.opts.Etcd != nil {
		now = storeEtcd
	}
	path := filepath.Join(c.opts.Dir, storeFile)
	was, record, err := c.recorded(path, now, storeBolt)
	if err != nil {
		return nil, err
	}
	if was != "" && was != now {
		how := map[string]string{storeBolt: "bbolt (one central node)", storeEtcd: "etcd (several central nodes)"}
		return nil, fmt.Errorf("devcluster: %s keeps its keys in %s (recorded in %s), and this start asks for %s: "+
			"the keys would not be found there; start it as before, or use another directory", c.opts.Dir, how[was], path, how[now])
	}
	return record, nil
}

// startEtcd runs the cluster's own etcd member when the central nodes
// share etcd and no endpoints were given.
func (c *Cluster) startEtcd(ctx context.Context) error {
	switch {
	case c.opts.Etcd == nil:
		return nil
	case len(c.opts.Etcd.Endpoints) > 0:
		c.etcdEPs = c.opts.Etcd.Endpoints
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
	defer cancel()
	e, err := etcdproc.Start(sctx, etcdproc.Options{Dir: filepath.Join(c.opts.Dir, "etcd")})
	if err != nil {
		return fmt.Errorf("devcluster: starting etcd: %w", err)
	}
	c.etcd, c.etcdEPs = e, e.Endpoints()
	c.opts.Logger.Info("etcd started", "endpoints", strings.Join(c.etcdEPs, ","), "data", e.Members[0].DataDir, "log", e.Members[0].LogFile)
	return nil
}
