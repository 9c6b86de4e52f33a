package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The shared block is inline: its fields are top-level in both files,
// and the block itself is no field — writing it out as node: is refused
// like any unknown field, as is a misspelt shared field, strictly, with
// the same suggestions and field list as before the block existed.
func TestNodeInline(t *testing.T) {
	parsers := map[string]struct {
		base  string
		parse func([]byte) error
	}{
		"central": {base, func(b []byte) error { _, err := ParseCentral("central.yaml", b, "/etc/keybroker"); return err }},
		"edge":    {edgeBase, func(b []byte) error { _, err := ParseEdge("edge.yaml", b, "/etc/keybroker"); return err }},
	}
	for name, p := range parsers {
		t.Run(name, func(t *testing.T) {
			if err := p.parse([]byte(p.base)); err != nil {
				t.Fatalf("base does not load: %v", err)
			}
			for _, tc := range []struct{ name, yaml, want string }{
				{"block as a field", p.base + "node:\n  node_id: other\n", "node: unknown field"},
				{"block by Go name", p.base + "Node: {}\n", "Node: unknown field"},
				{"misspelt shared field", p.base + "ops_lisen: 127.0.0.1:1\n", "ops_lisen: unknown field; did you mean ops_listen?"},
				{"shared field twice", p.base + "trust_domain: other.example\n", "trust_domain: given twice"},
				{"field list starts with the shared block", p.base + "x: 1\n", "unknown field; known fields are node_id, trust_domain, listen, advertise_address, ops_listen, ops, tls, spiffe, data_dir, "},
			} {
				err := p.parse([]byte(tc.yaml))
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: error = %v, want one containing %q", tc.name, err, tc.want)
				}
			}
		})
	}
}

// What the shared block holds is what either node reads, promoted.
func TestNodeFieldsPromoted(t *testing.T) {
	c, err := ParseCentral("central.yaml", []byte(base), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeID == "" || c.NodeID != c.Node.NodeID || c.TLS.ReloadInterval != DefaultTLSReloadInterval {
		t.Errorf("central Node = %+v, want node_id set and tls.reload_interval defaulted", c.Node)
	}
	e, err := ParseEdge("edge.yaml", []byte(edgeBase), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	if e.NodeID != "edge-eu-1" || len(e.Ops.Allow) != 1 || e.Ops.Allow[0] != "admin" {
		t.Errorf("edge Node = %+v, want node_id edge-eu-1 and ops.allow [admin]", e.Node)
	}
}

// The shared block's fields come first in both files' field lists, in
// one order, followed by the node's own; the names are those each file
// knew before the block held data_dir, audit, material_cache,
// data_key_reuse, limits, log and shutdown_timeout (only their order
// changed).
func TestNodeKnownFields(t *testing.T) {
	shared := []string{"node_id", "trust_domain", "listen", "advertise_address", "ops_listen", "ops", "tls", "spiffe",
		"data_dir", "audit", "material_cache", "data_key_reuse", "limits", "log", "shutdown_timeout"}
	for _, tc := range []struct {
		name string
		typ  reflect.Type
		own  []string
	}{
		{"central", reflect.TypeFor[Central](), []string{"backends", "root_keys", "default_root_keys", "policy", "edges", "backend_budget", "store", "aws_kms", "xks"}},
		{"edge", reflect.TypeFor[Edge](), []string{"region", "labels", "central", "prefetch", "max_staleness", "reconnect", "aws_kms", "xks"}},
	} {
		_, got := yamlFields(tc.typ)
		if want := append(slices.Clone(shared), tc.own...); !slices.Equal(got, want) {
			t.Errorf("%s fields = %v, want %v", tc.name, got, want)
		}
	}
}

// nodeYAML sets every shared field (none to its default); centralOwn and
// edgeOwn complete it into a central and an edge configuration.
const (
	nodeYAML = `node_id: node-1
trust_domain: kb.example
listen: 127.0.0.1:7443
advertise_address: node-1.kb.example:7443
ops_listen: 127.0.0.1:7080
ops: {allow: [admin, edge]}
tls: {ca: ca.pem, cert: node.pem, key: node.key, reload_interval: 5s}
data_dir: data
audit: {flush_interval: 50ms, head_key_file: head.key}
material_cache: {size: 7, ttl: 1m}
data_key_reuse: {period: 2m, max_messages: 9, max_bytes: 99, max_data_keys_per_version: 999}
limits: {max_request_bytes: 1048576}
log: {level: debug, format: text}
shutdown_timeout: 5s
`
	centralOwn = `backends: [{name: soft, uri: "softkms:path=/k.json;kek-source=/kek"}]
policy: {paths: [policy/]}
`
	edgeOwn = "central: {address: central.kb.example:7443}\n"
)

// A shared field means one thing: the same lines give central and edge
// the same block, defaults included (resolved paths, audit.path from
// data_dir), and the same bad value the same error, named by the same
// field path, whichever node reads it.
func TestNodeSharedFieldsOneMeaning(t *testing.T) {
	parse := func(t *testing.T, shared string) (*Node, error, *Node, error) {
		t.Helper()
		c, cerr := ParseCentral("node.yaml", []byte(shared+centralOwn), "/etc/keybroker")
		e, eerr := ParseEdge("node.yaml", []byte(shared+edgeOwn), "/etc/keybroker")
		var cn, en *Node
		if c != nil {
			cn = &c.Node
		}
		if e != nil {
			en = &e.Node
		}
		return cn, cerr, en, eerr
	}
	for _, shared := range []string{nodeYAML, "node_id: node-1\ntrust_domain: kb.example\nlisten: 127.0.0.1:7443\nops_listen: 127.0.0.1:7080\ntls: {ca: ca.pem, cert: node.pem, key: node.key}\ndata_dir: data\n"} {
		c, cerr, e, eerr := parse(t, shared)
		if cerr != nil || eerr != nil {
			t.Fatalf("errors: central %v, edge %v", cerr, eerr)
		}
		if diff := cmp.Diff(c, e); diff != "" {
			t.Errorf("central and edge read the shared block differently (-central +edge):\n%s", diff)
		}
		if c.Audit.Path != "/etc/keybroker/data/audit.jsonl" {
			t.Errorf("audit.path = %q, want /etc/keybroker/data/audit.jsonl", c.Audit.Path)
		}
	}
	for _, bad := range []struct{ old, new, want string }{
		{"data_dir: data\n", "", "data_dir: "},
		{"shutdown_timeout: 5s", "shutdown_timeout: 0s", "shutdown_timeout: "},
		{"max_request_bytes: 1048576", "max_request_bytes: 1", "limits.max_request_bytes: "},
		{"level: debug", "level: DEBUG", "log.level: "},
		{"flush_interval: 50ms", "flush_interval: 1h", "audit.flush_interval: "},
		{"size: 7", "size: 0", "material_cache.size: "},
		{"period: 2m", "period: 1s", "data_key_reuse.period: "},
		{"allow: [admin, edge]", "allow: []", "ops.allow: "},
		{"shutdown_timeout: 5s", "shutdown_timout: 5s", "shutdown_timout: unknown field; did you mean shutdown_timeout?"},
	} {
		_, cerr, _, eerr := parse(t, strings.Replace(nodeYAML, bad.old, bad.new, 1))
		if cerr == nil || eerr == nil || !strings.Contains(cerr.Error(), bad.want) {
			t.Errorf("%q: central error %v, edge error %v; want both to contain %q", bad.new, cerr, eerr, bad.want)
			continue
		}
		if cerr.Error() != eerr.Error() {
			t.Errorf("%q: central says %q, edge says %q; want the same", bad.new, cerr, eerr)
		}
	}
}
