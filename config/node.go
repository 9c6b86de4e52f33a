package config

import "slices"

// Node is the part of the configuration central and edge nodes share,
// embedded inline in [Central] and [Edge]: its fields are at the top level
// of either file, as if they were the node's own.
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
}

// defaultNode holds the shared defaults; the required fields are empty.
func defaultNode() Node {
	return Node{
		TLS:    TLS{ReloadInterval: DefaultTLSReloadInterval},
		SPIFFE: SPIFFE{Timeout: DefaultSPIFFETimeout},
		Ops:    Ops{Allow: slices.Clone(DefaultOpsAllow)},
	}
}
