package config

import (
	"fmt"
	"time"

	"github.com/keybroker/keybroker/identity"
)

// Edge is the configuration of a keybroker edge
// (keybroker edge --config edge.yaml): a node close to its clients that
// serves KeyBroker and KeyAdmin from a replica of the key metadata and
// material the central tier places on it, sealed to the edge's own key.
// The zero value is not useful: start from DefaultEdge, or load a file
// with LoadEdge.
type Edge struct {
	// Node holds what central and edge nodes configure alike: node_id,
	// trust_domain, listen, advertise_address, ops_listen, ops, tls,
	// spiffe, data_dir (the replica and the sealing key), audit,
	// material_cache, data_key_reuse, limits, log and shutdown_timeout.
	// The edge registers advertise_address with the central tier; its
	// certificate (or SVID) must be spiffe://<trust_domain>/edge/<node_id>,
	// with serverAuth and clientAuth.
	Node `yaml:",inline"`
	// Region is the region this edge expects to be enrolled in. An edge's
	// region is set at the central tier by an admin (keybroker node enroll
	// <node_id> --region R), never by the edge: Register ignores what the
	// edge says. When set here it must equal the enrolled region, or the
	// edge refuses to follow the central tier and logs both — a guard
	// against starting an edge with the wrong file. Optional (and best
	// left out: then the enrolled region is simply used); 1-63 lowercase
	// letters, digits or '-', starting with a letter or digit.
	Region string `yaml:"region"`
	// Labels are the labels this edge expects to be enrolled with, like
	// Region: set at the central tier (keybroker node enroll --label k=v,
	// keybroker node update), and when given here they must equal the
	// enrolled ones exactly. Optional; at most 64; keys 1-63 letters,
	// digits, '.', '_', '/' or '-', starting with a letter or digit;
	// values at most 256 bytes.
	Labels map[string]string `yaml:"labels,omitempty"`
	// Central says how to reach the central tier. Required
	// (central.address).
	Central EdgeCentral `yaml:"central"`
	// Prefetch: when true, Watch delivers the material of every key
	// placed on this edge as it changes, so that the edge can serve it
	// while disconnected; when false, material is fetched on first use.
	// Default true.
	Prefetch bool `yaml:"prefetch"`
	// MaxStaleness is how long after its lease from the central tier runs
	// out the edge keeps serving from its cached material while
	// disconnected; after that it refuses requests with Unavailable until
	// it is connected again. 0s refuses as soon as the lease runs out.
	// Default 5m, range 0s..24h.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// Reconnect bounds the backoff between attempts to reach the central
	// tier. Optional.
	Reconnect Reconnect `yaml:"reconnect"`
	// AWSKMS serves the AWS KMS JSON API at this edge, on a listener of
	// its own (the same block as the central tier's). Requests signed with
	// an access key scoped to this edge (keybroker access-key create
	// --edge) are verified here and served from what the edge holds; the
	// rest are relayed to the central tier as they came. region and
	// account must be the central tier's aws_kms ones: the central tier
	// verifies relayed requests, and names keys, with its own. Optional.
	AWSKMS *AWSKMS `yaml:"aws_kms,omitempty"`
	// XKS serves the XKS proxy API at this edge, on a listener of its own,
	// as AWSKMS does the AWS KMS API; region and prefix must be the
	// central tier's xks ones. Optional.
	XKS *XKS `yaml:"xks,omitempty"`
}

// EdgeCentral is how an edge reaches the central tier (EdgeSync: Register,
// Watch, FetchMaterial, Forward, Acknowledge), over mutual TLS with the
// edge's certificate.
type EdgeCentral struct {
	// Address is the host:port of the central tier's gRPC API. Required;
	// a DNS name or IP address that is not a wildcard, port 1..65535.
	Address string `yaml:"address"`
	// Addresses are other central nodes of the same tier (sharing one
	// etcd store), tried in order when address cannot be reached or its
	// node goes away: the edge resumes its Watch at any of them from the
	// revision it last applied. Optional; each host:port as address, none
	// repeated.
	Addresses []string `yaml:"addresses,omitempty"`
	// ServerName is a host name the central tier's certificate must name
	// as well (a DNS or IP SAN). Optional: the central tier is always
	// verified by its SPIFFE id (kind central of the trust domain), and
	// by no host name unless this names one; a DNS name or IP address.
	ServerName string `yaml:"server_name"`
}

// Reconnect bounds the backoff between an edge's attempts to reach the
// central tier: the wait grows from InitialBackoff after the first failure
// up to MaxBackoff.
type Reconnect struct {
	// InitialBackoff is the wait before the first retry. Default 100ms,
	// range 10ms..1m.
	InitialBackoff time.Duration `yaml:"initial_backoff"`
	// MaxBackoff is the longest wait between retries. Default 30s, range
	// 100ms..10m; at least InitialBackoff.
	MaxBackoff time.Duration `yaml:"max_backoff"`
}

// Edge defaults and bounds not shared with other nodes.
const (
	DefaultPrefetch       = true
	DefaultMaxStaleness   = 5 * time.Minute
	MaxMaxStaleness       = 24 * time.Hour
	DefaultInitialBackoff = 100 * time.Millisecond
	MinInitialBackoff     = 10 * time.Millisecond
	MaxInitialBackoff     = time.Minute
	DefaultMaxBackoff     = 30 * time.Second
	MinMaxBackoff         = 100 * time.Millisecond
	MaxMaxBackoff         = 10 * time.Minute
)

// DefaultEdge returns a configuration holding every default; the required
// fields are empty. audit.path is left empty because its default depends
// on data_dir: ResolvePaths fills it.
func DefaultEdge() Edge {
	return Edge{
		Node:         defaultNode(),
		Prefetch:     DefaultPrefetch,
		MaxStaleness: DefaultMaxStaleness,
		Reconnect:    Reconnect{InitialBackoff: DefaultInitialBackoff, MaxBackoff: DefaultMaxBackoff},
	}
}

// LoadEdge reads, decodes and validates the edge configuration in path.
// Relative paths in it are resolved against the file's directory. Every
// error is an *Error naming the file, and the line and field where known;
// all problems are reported together (errors.Join).
func LoadEdge(path string) (*Edge, error) {
	data, dir, err := readConfig(path)
	if err != nil {
		return nil, err
	}
	return ParseEdge(path, data, dir)
}

// ParseEdge is LoadEdge on data already read: name is used in errors, and
// baseDir is the directory relative paths are resolved against ("" leaves
// them relative to the working directory). Decoding is as strict as
// ParseCentral's.
func ParseEdge(name string, data []byte, baseDir string) (*Edge, error) {
	return parse(name, data, baseDir, DefaultEdge())
}

// ResolvePaths makes the relative paths in e (tls, data_dir, audit.path)
// absolute against baseDir, and sets audit.path to <data_dir>/audit.jsonl
// when it is empty. It is idempotent. ParseEdge calls it; a configuration
// built in code calls it before Validate.
func (e *Edge) ResolvePaths(baseDir string) {
	e.Node.resolve(baseDir)
	e.AWSKMS.resolve(baseDir)
	e.XKS.resolve(baseDir)
}

// Validate checks every field and the relations between them, and returns
// every problem found, joined; each is an *Error naming its field. It does
// not touch the file system: see Check.
func (e *Edge) Validate() error {
	return e.validate().join("", nil)
}

func (e *Edge) validate() problems {
	var p problems
	e.Node.check(&p, identity.Edge)
	checkRegion(&p, "region", e.Region)
	checkLabels(&p, "labels", e.Labels)
	e.Central.check(&p, "central")
	checkDuration(&p, "max_staleness", e.MaxStaleness, 0, MaxMaxStaleness)
	e.Reconnect.check(&p, "reconnect")
	e.AWSKMS.check(&p, "aws_kms", e.Listen, e.OpsListen)
	others := map[string]string{"listen": e.Listen, "ops_listen": e.OpsListen}
	if e.AWSKMS != nil {
		others["aws_kms.listen"] = e.AWSKMS.Listen
	}
	e.XKS.check(&p, "xks", others)
	return p
}

func (c EdgeCentral) check(p *problems, field string) {
	checkDial(p, field+".address", c.Address)
	seen := map[string]string{c.Address: field + ".address"}
	for i, a := range c.Addresses {
		f := fmt.Sprintf("%s.addresses[%d]", field, i)
		checkDial(p, f, a)
		if prev, dup := seen[a]; dup {
			p.add(f, "%q is already %s", a, prev)
		}
		seen[a] = f
	}
	if c.ServerName != "" && !validHost(c.ServerName) {
		p.add(field+".server_name", "%q is not a DNS name or IP address (without a port)", c.ServerName)
	}
}

// All lists every central address, address first.
func (c EdgeCentral) All() []string { return append([]string{c.Address}, c.Addresses...) }

func (r Reconnect) check(p *problems, field string) {
	checkDuration(p, field+".initial_backoff", r.InitialBackoff, MinInitialBackoff, MaxInitialBackoff)
	checkDuration(p, field+".max_backoff", r.MaxBackoff, MinMaxBackoff, MaxMaxBackoff)
	if r.MaxBackoff >= MinMaxBackoff && r.InitialBackoff >= MinInitialBackoff && r.MaxBackoff < r.InitialBackoff {
		p.add(field+".max_backoff", "%s is below %s.initial_backoff (%s)", formatDuration(r.MaxBackoff), field, formatDuration(r.InitialBackoff))
	}
}

// Check looks at the files the configuration names, after Validate: the
// TLS files are readable regular files, data_dir is a directory if it
// exists (the node creates it), and audit.path's directory exists or is
// data_dir. It neither parses nor keeps what it reads. Every problem is an
// *Error naming its field, joined.
func (e *Edge) Check() error {
	var p problems
	e.Node.stat(&p)
	return p.join("", nil)
}
