package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Bounds of the etcd store's settings.
const (
	DefaultEtcdDialTimeout = 5 * time.Second
	MinEtcdDialTimeout     = 100 * time.Millisecond
	MaxEtcdDialTimeout     = time.Minute
	maxEtcdPrefix          = 256

	DefaultEtcdRequestTimeout = 5 * time.Second
	MinEtcdRequestTimeout     = 100 * time.Millisecond
	MaxEtcdRequestTimeout     = time.Minute

	DefaultEtcdMaxStaleness = 30 * time.Second
	MinEtcdMaxStaleness     = 3 * time.Second
	MaxEtcdMaxStaleness     = time.Hour
)

// Store says where the central tier keeps its key registry, node inventory
// and change feed. Optional: with nothing set it is the embedded bbolt file
// <data_dir>/registry.db, which one central node owns.
type Store struct {
	// Etcd keeps them in an etcd cluster instead, which several central
	// nodes share.
	Etcd *EtcdStore `yaml:"etcd,omitempty"`
}

// EtcdStore is an etcd cluster holding the registry.
type EtcdStore struct {
	// Endpoints are the cluster's client URLs, https://host:port, or
	// http://host:port when host is a loopback address and tls is left
	// out (tests and one-machine setups). Required.
	Endpoints []string `yaml:"endpoints"`
	// TLS is the mutual TLS with etcd: ca is the bundle that signs etcd's
	// server certificates; cert and key this node's client certificate
	// (both or neither, as etcd's --client-cert-auth asks). Required with
	// https endpoints.
	TLS EtcdTLS `yaml:"tls"`
	// Prefix holds this cluster's objects: it starts and ends with "/",
	// at most 256 bytes. Default /keybroker/.
	Prefix string `yaml:"prefix"`
	// DialTimeout bounds the first connection at start. Default 5s, range
	// 100ms..1m.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds each read and write to etcd, so that a node
	// cut off from it answers "unavailable" (and clients go to another
	// central node) instead of hanging. Default 5s, range 100ms..1m.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxStaleness is how long this central node serves keys from its
	// registry after it last heard from etcd (it asks for a progress
	// notification every second). Past it the node fails closed like an
	// edge past its own max_staleness: it serves no key, extends no edge
	// lease and accepts no write (writes already stop after 3 s of
	// silence), so that a node cut off from etcd never serves a key
	// another central disabled or deleted meanwhile; clients and edges
	// go to the other central nodes. Default 30s, range 3s..1h.
	MaxStaleness time.Duration `yaml:"max_staleness"`
}

// Staleness is MaxStaleness, or its default when zero.
func (e *EtcdStore) Staleness() time.Duration {
	if e.MaxStaleness == 0 {
		return DefaultEtcdMaxStaleness
	}
	return e.MaxStaleness
}

// EtcdTLS names the files of the mutual TLS with etcd.
type EtcdTLS struct {
	// CA is the bundle of CA certificates that sign etcd's servers.
	CA string `yaml:"ca"`
	// Cert is this node's client certificate chain for etcd.
	Cert string `yaml:"cert"`
	// Key is the private key of Cert (a file, never inline).
	Key string `yaml:"key"`
}

func (s *Store) resolve(baseDir string) {
	if s.Etcd == nil {
		return
	}
	for _, f := range []*string{&s.Etcd.TLS.CA, &s.Etcd.TLS.Cert, &s.Etcd.TLS.Key} {
		resolvePath(baseDir, f)
	}
	if s.Etcd.Prefix == "" {
		s.Etcd.Prefix = "/keybroker/"
	}
	if s.Etcd.DialTimeout == 0 {
		s.Etcd.DialTimeout = DefaultEtcdDialTimeout
	}
	if s.Etcd.RequestTimeout == 0 {
		s.Etcd.RequestTimeout = DefaultEtcdRequestTimeout
	}
	if s.Etcd.MaxStaleness == 0 {
		s.Etcd.MaxStaleness = DefaultEtcdMaxStaleness
	}
}

func (s Store) check(p *problems, field string) {
	e := s.Etcd
	if e == nil {
		return
	}
	field += ".etcd"
	if len(e.Endpoints) == 0 {
		p.add(field+".endpoints", "is required: the etcd cluster's client URLs")
	}
	tlsGiven := e.TLS.CA != "" || e.TLS.Cert != "" || e.TLS.Key != ""
	for i, ep := range e.Endpoints {
		f := fmt.Sprintf("%s.endpoints[%d]", field, i)
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
			p.add(f, "%q is not a URL of the form https://host:port", ep)
			continue
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || port == "" {
			p.add(f, "%q needs a host and a port", ep)
			continue
		}
		switch u.Scheme {
		case "https":
			if e.TLS.CA == "" {
				p.add(field+".tls.ca", "is required with the https endpoint %q", ep)
			}
		case "http":
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				p.add(f, "%q is plain http to a host that is not loopback: etcd holds the registry, use https with tls", ep)
			} else if tlsGiven {
				p.add(f, "%q is plain http, but tls is given: use https", ep)
			}
		default:
			p.add(f, "%q: the scheme must be https (or http on loopback)", ep)
		}
	}
	if (e.TLS.Cert == "") != (e.TLS.Key == "") {
		p.add(field+".tls", "cert and key go together: give both or neither")
	}
	switch pre := e.Prefix; {
	case !strings.HasPrefix(pre, "/") || !strings.HasSuffix(pre, "/") || len(pre) < 2:
		p.add(field+".prefix", "%q must start and end with / (for instance /keybroker/)", pre)
	case len(pre) > maxEtcdPrefix:
		p.add(field+".prefix", "is %d bytes, more than %d", len(pre), maxEtcdPrefix)
	}
	checkDuration(p, field+".dial_timeout", e.DialTimeout, MinEtcdDialTimeout, MaxEtcdDialTimeout)
	// Zero is the default, for configurations built in code.
	if e.RequestTimeout != 0 {
		checkDuration(p, field+".request_timeout", e.RequestTimeout, MinEtcdRequestTimeout, MaxEtcdRequestTimeout)
	}
	if e.MaxStaleness != 0 {
		checkDuration(p, field+".max_staleness", e.MaxStaleness, MinEtcdMaxStaleness, MaxEtcdMaxStaleness)
	}
}
