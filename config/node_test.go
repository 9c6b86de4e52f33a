package config

import (
	"strings"
	"testing"
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
