package config

import (
	"slices"
	"time"

	"github.com/keybroker/keybroker/identity"
)

// Node is the part of the configuration central and edge nodes share,
// embedded inline in [Central] and [Edge]: its fields are at the top level
// of either file, as if they were the node's own, and come first in either
// file's list of known fields. Each is checked by the same rules, with the
// same defaults, whichever node reads it.
type Node struct {
	// NodeID names this node in the central tier's node inventory, logs,
	// audit records and its SPIFFE id spiffe://<trust_domain>/<kind>/<node_id>
	// (kind central or edge). Required; 1-64 letters, digits, '.', '_' or
	// '-', starting with a letter or digit.
	NodeID string `yaml:"node_id"`
	// TrustDomain is the SPIFFE trust domain of every identity this node
	// accepts (an edge's central tier included); peers whose certificates
	// name another are refused. Required; lowercase letters, digits, '.'
	// and '-', at most 255, starting and ending with a letter or digit.
	TrustDomain string `yaml:"trust_domain"`
	// Listen is the host:port of the gRPC API (KeyBroker, KeyAdmin, and
	// on central EdgeSync), served over mutual TLS. An empty host listens
	// on every interface; port 0 takes a free port (tests, keybroker dev).
	// Required; port 0..65535.
	Listen string `yaml:"listen"`
	// AdvertiseAddress is the host:port other nodes and clients dial to
	// reach Listen, returned by LookupKey and ListNodes (an edge registers
	// it with the central tier). Optional: by default the listen address
	// with the port actually bound; required when listen's host is empty
	// or a wildcard (0.0.0.0, ::), which no peer can dial.
	AdvertiseAddress string `yaml:"advertise_address"`
	// OpsListen is the host:port of /healthz, /readyz and /metrics, also
	// served over mutual TLS. Required; must not overlap Listen.
	OpsListen string `yaml:"ops_listen"`
	// Ops says who may use OpsListen. Optional; default admins only.
	Ops Ops `yaml:"ops"`
	// TLS names this node's certificate, key and the CA its peers must
	// chain to. Required unless SPIFFE is given.
	TLS TLS `yaml:"tls"`
	// SPIFFE takes the node's identity from a SPIFFE Workload API agent
	// instead of tls.ca, tls.cert and tls.key (exactly one of the two is
	// given). The SVID must be spiffe://<trust_domain>/<kind>/<node_id>.
	SPIFFE SPIFFE `yaml:"spiffe"`
	// DataDir holds the node's state — central's key registry
	// (registry.db); an edge's replica (replica.db: key metadata, and
	// material sealed to the edge) and its HPKE private sealing key
	// (sealing.key, mode 0600) — and, by default, the audit log. The node
	// creates it if missing. Required.
	DataDir string `yaml:"data_dir"`
	// Audit configures the audit log. Optional.
	Audit Audit `yaml:"audit"`
	// MaterialCache bounds the plaintext material held in memory.
	// Optional.
	MaterialCache MaterialCache `yaml:"material_cache"`
	// DataKeyReuse bounds data-key reuse when this node encrypts.
	// Optional.
	DataKeyReuse DataKeyReuse `yaml:"data_key_reuse"`
	// Limits bounds requests. Optional.
	Limits Limits `yaml:"limits"`
	// Log configures logging. Optional.
	Log Log `yaml:"log"`
	// ShutdownTimeout is how long a stopping node lets requests in flight
	// finish before it cuts them off. Default 30s, range 1s..10m.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Shutdown defaults and bounds, the same for every node.
const (
	DefaultShutdownTimeout = 30 * time.Second
	MinShutdownTimeout     = time.Second
	MaxShutdownTimeout     = 10 * time.Minute
)

// defaultNode holds the shared defaults; the required fields are empty,
// and so is audit.path, whose default depends on data_dir (resolve fills
// it).
func defaultNode() Node {
	return Node{
		Ops:             Ops{Allow: slices.Clone(DefaultOpsAllow)},
		TLS:             TLS{ReloadInterval: DefaultTLSReloadInterval},
		SPIFFE:          SPIFFE{Timeout: DefaultSPIFFETimeout},
		Audit:           Audit{FlushInterval: DefaultAuditFlush},
		MaterialCache:   MaterialCache{Size: DefaultMaterialCacheSize, TTL: DefaultMaterialCacheTTL},
		DataKeyReuse:    defaultDataKeyReuse(),
		Limits:          Limits{MaxRequestBytes: DefaultMaxRequestBytes},
		Log:             Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
		ShutdownTimeout: DefaultShutdownTimeout,
	}
}

// resolve makes the block's relative paths (tls, data_dir, audit.path)
// absolute against baseDir, and sets audit.path to <data_dir>/audit.jsonl
// when it is empty.
func (n *Node) resolve(baseDir string) {
	n.TLS.resolve(baseDir)
	resolvePath(baseDir, &n.DataDir)
	n.Audit.resolve(baseDir, n.DataDir)
}

// check checks the block's fields for a node of kind (central or edge),
// whose identity must be spiffe://<trust_domain>/<kind>/<node_id>.
func (n *Node) check(p *problems, kind identity.Kind) {
	checkName(p, "node_id", n.NodeID)
	checkTrustDomain(p, "trust_domain", n.TrustDomain)
	checkListeners(p, n.Listen, n.AdvertiseAddress, n.OpsListen)
	n.Ops.check(p, "ops", n.TrustDomain)
	checkIdentity(p, n.TLS, n.SPIFFE, identity.Identity{TrustDomain: n.TrustDomain, Kind: kind, Name: n.NodeID})
	checkPath(p, "data_dir", n.DataDir)
	n.Audit.check(p, "audit", n.DataDir)
	n.MaterialCache.check(p, "material_cache")
	n.DataKeyReuse.check(p, "data_key_reuse")
	n.Limits.check(p, "limits")
	n.Log.check(p, "log")
	checkDuration(p, "shutdown_timeout", n.ShutdownTimeout, MinShutdownTimeout, MaxShutdownTimeout)
}

// stat looks at the files the block names: the TLS files (unless the
// identity comes from SPIFFE), data_dir and the audit log's directory.
func (n *Node) stat(p *problems) {
	n.TLS.stat(p, "tls", !n.SPIFFE.Enabled())
	statDataDir(p, "data_dir", n.DataDir)
	n.Audit.stat(p, "audit", n.DataDir)
}
