package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/managed"
)

// edgeBase is a valid edge configuration the bad cases edit, one line at a
// time.
const edgeBase = `node_id: edge-eu-1
trust_domain: kb.example
listen: 10.0.0.5:7443
ops_listen: 127.0.0.1:7080
tls:
  ca: ca.pem
  cert: edge.pem
  key: edge.key
data_dir: /var/lib/keybroker-edge
region: eu-west-1
labels:
  zone: eu-west-1a
  pci: "yes"
central:
  address: central.kb.example:7443
reconnect:
  initial_backoff: 100ms
  max_backoff: 30s
max_staleness: 5m
log:
  level: info
`

// editEdge replaces one line of edgeBase (old must occur exactly once).
func editEdge(t *testing.T, old, new string) string {
	t.Helper()
	if strings.Count(edgeBase, old) != 1 {
		t.Fatalf("editEdge: %q occurs %d times in edgeBase", old, strings.Count(edgeBase, old))
	}
	return strings.Replace(edgeBase, old, new, 1)
}

// edgeBlocks returns the edge.yaml examples of docs/config.md, the full
// one first.
func edgeBlocks(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, b := range docBlocks(t) {
		if strings.HasPrefix(b, "# edge.yaml") {
			out = append(out, b)
		}
	}
	if len(out) < 2 {
		t.Fatalf("docs/config.md has %d edge.yaml blocks, want the full and the minimal example", len(out))
	}
	return out
}

func TestDocEdgeExample(t *testing.T) {
	blocks := edgeBlocks(t)
	got, err := ParseEdge("edge.yaml", []byte(blocks[0]), "/etc/keybroker")
	if err != nil {
		t.Fatalf("the full edge example in docs/config.md does not load:\n%v", err)
	}
	want := &Edge{
		Node: Node{
			NodeID:           "edge-eu-1",
			TrustDomain:      "kb.example",
			Listen:           "10.0.0.5:7443",
			AdvertiseAddress: "edge-eu-1.kb.example:7443",
			OpsListen:        "127.0.0.1:7080",
			TLS: TLS{
				CA:             "/etc/keybroker/ca.pem",
				Cert:           "/etc/keybroker/edge.pem",
				Key:            "/etc/keybroker/edge.key",
				ReloadInterval: time.Second,
			},
			SPIFFE:          SPIFFE{Timeout: 30 * time.Second},
			Ops:             Ops{Allow: []string{"admin"}},
			DataDir:         "/var/lib/keybroker-edge",
			Audit:           Audit{Path: "/var/lib/keybroker-edge/audit.jsonl", FlushInterval: 100 * time.Millisecond},
			MaterialCache:   MaterialCache{Size: 10000, TTL: 5 * time.Minute},
			DataKeyReuse:    DataKeyReuse{Period: 5 * time.Minute, MaxMessages: 1 << 28, MaxBytes: 64 << 30, MaxDataKeysPerVersion: 1 << 28},
			Limits:          Limits{MaxRequestBytes: 5 << 20},
			Log:             Log{Level: "info", Format: "json"},
			ShutdownTimeout: 30 * time.Second,
		},
		Region:       "eu-west-1",
		Labels:       map[string]string{"zone": "eu-west-1a", "pci": "yes"},
		Central:      EdgeCentral{Address: "central.kb.example:7443", ServerName: "central.kb.example"},
		Prefetch:     true,
		MaxStaleness: 5 * time.Minute,
		Reconnect:    Reconnect{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("full edge example (-want +got):\n%s", diff)
	}

	// The full example gives every default explicitly, so it must equal
	// the minimal one's defaults: the doc and DefaultEdge agree.
	min, err := ParseEdge("edge.yaml", []byte(blocks[1]), "/etc/keybroker")
	if err != nil {
		t.Fatalf("the minimal edge example in docs/config.md does not load:\n%v", err)
	}
	for name, pair := range map[string][2]any{
		"prefetch":       {want.Prefetch, min.Prefetch},
		"max_staleness":  {want.MaxStaleness, min.MaxStaleness},
		"reconnect":      {want.Reconnect, min.Reconnect},
		"material_cache": {want.MaterialCache, min.MaterialCache},
		"data_key_reuse": {want.DataKeyReuse, min.DataKeyReuse},
		"audit":          {want.Audit, min.Audit},
		"limits":         {want.Limits, min.Limits},
		"log":            {want.Log, min.Log},
		"shutdown":       {want.ShutdownTimeout, min.ShutdownTimeout},
	} {
		if diff := cmp.Diff(pair[0], pair[1]); diff != "" {
			t.Errorf("%s: full edge example and defaults differ (-full +defaults):\n%s", name, diff)
		}
	}
}

func TestEdgeBase(t *testing.T) {
	e, err := ParseEdge("edge.yaml", []byte(edgeBase), "/etc/keybroker")
	if err != nil {
		t.Fatalf("edgeBase does not load:\n%v", err)
	}
	if err := e.Validate(); err != nil {
		t.Errorf("Validate() of a loaded edge config = %v", err)
	}
}

func TestEdgeDefaults(t *testing.T) {
	e, err := ParseEdge("edge.yaml", []byte(`node_id: n
trust_domain: td
listen: "127.0.0.1:1"
ops_listen: "127.0.0.1:2"
tls: {ca: a, cert: b, key: c}
data_dir: data
central: {address: "central:7443"}
`), "/srv/kb")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultEdge()
	want.NodeID, want.TrustDomain, want.Listen, want.OpsListen = "n", "td", "127.0.0.1:1", "127.0.0.1:2"
	want.TLS = TLS{CA: "/srv/kb/a", Cert: "/srv/kb/b", Key: "/srv/kb/c", ReloadInterval: DefaultTLSReloadInterval}
	want.DataDir = "/srv/kb/data"
	want.Central.Address = "central:7443"
	want.Audit.Path = "/srv/kb/data/audit.jsonl"
	if diff := cmp.Diff(&want, e); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		field     string
		got, want any
	}{
		{"prefetch", e.Prefetch, true},
		{"max_staleness", e.MaxStaleness, 5 * time.Minute},
		{"reconnect.initial_backoff", e.Reconnect.InitialBackoff, 100 * time.Millisecond},
		{"reconnect.max_backoff", e.Reconnect.MaxBackoff, 30 * time.Second},
		{"central.server_name", e.Central.ServerName, ""},
		{"region", e.Region, ""},
		{"labels", len(e.Labels), 0},
		{"material_cache.size", e.MaterialCache.Size, 10000},
		{"material_cache.ttl", e.MaterialCache.TTL, 5 * time.Minute},
		{"data_key_reuse", e.DataKeyReuse, DefaultCentral().DataKeyReuse},
		{"audit.flush_interval", e.Audit.FlushInterval, 100 * time.Millisecond},
		{"limits.max_request_bytes", e.Limits.MaxRequestBytes, 5 << 20},
		{"log", e.Log, Log{Level: "info", Format: "json"}},
		{"shutdown_timeout", e.ShutdownTimeout, 30 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("default %s = %v, want %v", tc.field, tc.got, tc.want)
		}
	}
}

// TestEdgeExplicitValues checks that values equal to the Go zero value are
// taken as given, not mistaken for "unset" and replaced by the default.
func TestEdgeExplicitValues(t *testing.T) {
	for _, tc := range []struct {
		name, old, new string
		check          func(*Edge) (got, want any)
	}{
		{"prefetch false", "max_staleness: 5m", "max_staleness: 5m\nprefetch: false",
			func(e *Edge) (any, any) { return e.Prefetch, false }},
		{"prefetch true", "max_staleness: 5m", "max_staleness: 5m\nprefetch: true",
			func(e *Edge) (any, any) { return e.Prefetch, true }},
		{"max_staleness 0s", "max_staleness: 5m", "max_staleness: 0s",
			func(e *Edge) (any, any) { return e.MaxStaleness, time.Duration(0) }},
		{"max_staleness 24h", "max_staleness: 5m", "max_staleness: 24h",
			func(e *Edge) (any, any) { return e.MaxStaleness, 24 * time.Hour }},
		{"equal backoffs", "max_backoff: 30s", "max_backoff: 100ms",
			func(e *Edge) (any, any) { return e.Reconnect.MaxBackoff, e.Reconnect.InitialBackoff }},
		{"server name", "address: central.kb.example:7443", "address: 10.1.2.3:7443\n  server_name: central.kb.example",
			func(e *Edge) (any, any) { return e.Central.ServerName, "central.kb.example" }},
		{"server name IP", "address: central.kb.example:7443", "address: lb.kb.example:7443\n  server_name: \"::1\"",
			func(e *Edge) (any, any) { return e.Central.ServerName, "::1" }},
		{"empty label value", "zone: eu-west-1a", "zone: \"\"",
			func(e *Edge) (any, any) { return e.Labels["zone"], "" }},
		{"no labels", "labels:\n  zone: eu-west-1a\n  pci: \"yes\"\n", "labels: {}\n",
			func(e *Edge) (any, any) { return len(e.Labels), 0 }},
		{"region empty", "region: eu-west-1", "region: \"\"",
			func(e *Edge) (any, any) { return e.Region, "" }},
		{"region digit first", "region: eu-west-1", "region: 1a",
			func(e *Edge) (any, any) { return e.Region, "1a" }},
		{"label key with slash", "zone: eu-west-1a", "kb.example/zone: eu-west-1a",
			func(e *Edge) (any, any) { return e.Labels["kb.example/zone"], "eu-west-1a" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ParseEdge("edge.yaml", []byte(editEdge(t, tc.old, tc.new)), "/")
			if err != nil {
				t.Fatal(err)
			}
			if got, want := tc.check(e); got != want {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestBadEdgeConfigs(t *testing.T) {
	var many strings.Builder
	many.WriteString("labels:\n")
	for i := range MaxLabels + 1 {
		many.WriteString("  l" + string(rune('a'+i/26)) + string(rune('a'+i%26)) + ": x\n")
	}
	for _, tc := range []struct {
		name  string
		yaml  string
		field string // the field the error must name ("" for the document)
		at    string // the error must be on the line holding this; "" for no line
		msg   string // the error must contain this
	}{
		// Unknown fields and shape.
		{"unknown top-level", edgeBase + "backends: []\n", "backends", "backends:", "unknown field"},
		{"aws region", edgeBase + "aws_kms: {listen: \"127.0.0.1:0\", region: Europe, account: \"111122223333\"}\n", "aws_kms.region", "aws_kms:", "not an AWS region"},
		{"aws overlaps listen", edgeBase + "aws_kms: {listen: \"10.0.0.5:7443\", region: eu-west-1, account: \"111122223333\"}\n", "aws_kms.listen", "aws_kms:", "overlaps listen"},
		{"xks no health key", edgeBase + "xks: {listen: \"127.0.0.1:0\", region: eu-west-1}\n", "xks.health_key", "xks:", ""},
		{"central-only field", edgeBase + "policy: {paths: [p]}\n", "policy", "policy:", "unknown field"},
		{"unknown nested", editEdge(t, "initial_backoff: 100ms", "inital_backoff: 100ms"), "reconnect.inital_backoff", "inital_backoff", "did you mean initial_backoff?"},
		{"unknown in central", editEdge(t, "address: central.kb.example:7443", "adress: central.kb.example:7443"), "central.adress", "adress", "did you mean address?"},
		{"given twice", edgeBase + "region: eu-west-2\n", "region", "region: eu-west-2", "given twice; first on line 10"},
		{"label given twice", editEdge(t, "  pci: \"yes\"\n", "  pci: \"yes\"\n  zone: other\n"), "labels.zone", "zone: other", "given twice; first on line 12"},
		{"labels as list", editEdge(t, "labels:\n  zone: eu-west-1a\n  pci: \"yes\"\n", "labels: [zone]\n"), "labels", "labels:", "want a mapping, found a list"},
		{"label value mapping", editEdge(t, "zone: eu-west-1a", "zone: {a: b}"), "labels.zone", "zone:", "want a single value"},
		{"label null value", editEdge(t, "zone: eu-west-1a", "zone:"), "labels.zone", "zone:", "no value"},
		{"label null key", editEdge(t, "zone: eu-west-1a", "~: eu-west-1a"), "labels", "~:", "a key is missing"},
		{"label mapping key", editEdge(t, "zone: eu-west-1a", "? [a]\n  : eu-west-1a"), "labels", "? [a]", "a key must be a single value"},
		{"label merge key", editEdge(t, "zone: eu-west-1a", "<<: {a: b}"), "labels", "<<", "merge keys"},
		{"prefetch yes", edgeBase + "prefetch: yes\n", "prefetch", "prefetch: yes", `"yes" is not true or false`},
		{"prefetch capitalised", edgeBase + "prefetch: True\n", "prefetch", "prefetch: True", `"True" is not true or false`},
		{"prefetch quoted", edgeBase + "prefetch: \"false\"\n", "prefetch", "prefetch:", `"false" is not true or false`},
		{"prefetch number", edgeBase + "prefetch: 0\n", "prefetch", "prefetch: 0", "not true or false"},
		{"staleness without unit", editEdge(t, "max_staleness: 5m", "max_staleness: 0"), "max_staleness", "max_staleness: 0", "such as 0s"},
		{"central as string", editEdge(t, "central:\n  address: central.kb.example:7443\n", "central: central.kb.example:7443\n"), "central", "central:", "want a mapping of fields"},

		// Required fields.
		{"missing node_id", editEdge(t, "node_id: edge-eu-1\n", ""), "node_id", "", "required"},
		{"missing trust_domain", editEdge(t, "trust_domain: kb.example\n", ""), "trust_domain", "", "required"},
		{"missing listen", editEdge(t, "listen: 10.0.0.5:7443\n", ""), "listen", "", "required"},
		{"missing ops_listen", editEdge(t, "ops_listen: 127.0.0.1:7080\n", ""), "ops_listen", "", "required"},
		{"missing tls.cert", editEdge(t, "  cert: edge.pem\n", ""), "tls.cert", "tls:", "required"},
		{"missing data_dir", editEdge(t, "data_dir: /var/lib/keybroker-edge\n", ""), "data_dir", "", "required"},
		{"missing central", editEdge(t, "central:\n  address: central.kb.example:7443\n", ""), "central.address", "", "required"},
		{"missing central.address", editEdge(t, "  address: central.kb.example:7443\n", "  server_name: central.kb.example\n"), "central.address", "central:", "required"},

		// Names and addresses.
		{"node_id bad", editEdge(t, "node_id: edge-eu-1", "node_id: edge/eu"), "node_id", "node_id", "is not 1-64 letters"},
		{"node_id too long", editEdge(t, "node_id: edge-eu-1", "node_id: "+strings.Repeat("e", 65)), "node_id", "node_id", "is not 1-64 letters"},
		{"trust domain upper case", editEdge(t, "trust_domain: kb.example", "trust_domain: KB.example"), "trust_domain", "trust_domain", "is not a trust domain"},
		{"listen without port", editEdge(t, "listen: 10.0.0.5:7443", "listen: 10.0.0.5"), "listen", "listen:", "is not host:port"},
		{"ops on listen port", editEdge(t, "ops_listen: 127.0.0.1:7080", "ops_listen: \":7443\""), "ops_listen", "ops_listen:", "overlaps listen"},
		{"wildcard listen, no advertise", editEdge(t, "listen: 10.0.0.5:7443", "listen: \"[::]:7443\""), "advertise_address", "", "required when listen"},
		{"advertise port 0", edgeBase + "advertise_address: edge.kb.example:0\n", "advertise_address", "advertise_address:", "peers can dial"},
		{"central wildcard", editEdge(t, "address: central.kb.example:7443", "address: \":7443\""), "central.address", "address:", "has no host to dial"},
		{"central unspecified IP", editEdge(t, "address: central.kb.example:7443", "address: 0.0.0.0:7443"), "central.address", "address:", "has no host to dial"},
		{"central port 0", editEdge(t, "address: central.kb.example:7443", "address: central.kb.example:0"), "central.address", "address:", "port 0 cannot be dialled"},
		{"central no port", editEdge(t, "address: central.kb.example:7443", "address: central.kb.example"), "central.address", "address:", "is not host:port"},
		{"central port too big", editEdge(t, "address: central.kb.example:7443", "address: central.kb.example:70000"), "central.address", "address:", "is not a number 0..65535"},
		{"central bad host", editEdge(t, "address: central.kb.example:7443", "address: central_kb:7443"), "central.address", "address:", "is not an IP address or DNS name"},
		{"server name with port", editEdge(t, "address: central.kb.example:7443", "address: central.kb.example:7443\n  server_name: central.kb.example:7443"), "central.server_name", "server_name:", "is not a DNS name or IP address"},
		{"server name bad", editEdge(t, "address: central.kb.example:7443", "address: central.kb.example:7443\n  server_name: \"central kb\""), "central.server_name", "server_name:", "is not a DNS name or IP address"},

		// Region and labels.
		{"region upper case", editEdge(t, "region: eu-west-1", "region: EU-west-1"), "region", "region:", "is not 1-63 lowercase letters"},
		{"region leading dash", editEdge(t, "region: eu-west-1", "region: -eu"), "region", "region:", "is not 1-63"},
		{"region dot", editEdge(t, "region: eu-west-1", "region: eu.west"), "region", "region:", "is not 1-63"},
		{"region too long", editEdge(t, "region: eu-west-1", "region: "+strings.Repeat("r", 64)), "region", "region:", "is not 1-63"},
		{"label key space", editEdge(t, "zone: eu-west-1a", "\"a zone\": eu-west-1a"), `labels["a zone"]`, "a zone", "the key is not 1-63"},
		{"label key leading dot", editEdge(t, "zone: eu-west-1a", ".zone: eu-west-1a"), "labels..zone", ".zone", "the key is not 1-63"},
		{"label key too long", editEdge(t, "zone: eu-west-1a", strings.Repeat("k", 64)+": eu-west-1a"), "labels." + strings.Repeat("k", 64), "kkk", "the key is not 1-63"},
		{"label key control", editEdge(t, "zone: eu-west-1a", "\"a\\x01\": eu-west-1a"), `labels["a\x01"]`, "a\\x01", "the key is not 1-63"},
		{"label value too long", editEdge(t, "zone: eu-west-1a", "zone: "+strings.Repeat("v", 257)), "labels.zone", "zone:", "value is 257 bytes; at most 256"},
		{"too many labels", editEdge(t, "labels:\n  zone: eu-west-1a\n  pci: \"yes\"\n", many.String()), "labels", "labels:", "65 labels; at most 64"},

		// Ranges.
		{"staleness negative", editEdge(t, "max_staleness: 5m", "max_staleness: -1s"), "max_staleness", "max_staleness", "-1s is below the minimum 0s"},
		{"staleness too long", editEdge(t, "max_staleness: 5m", "max_staleness: 24h1s"), "max_staleness", "max_staleness", "24h0m1s is above the maximum 24h"},
		{"initial backoff short", editEdge(t, "initial_backoff: 100ms", "initial_backoff: 9ms"), "reconnect.initial_backoff", "initial_backoff", "9ms is below the minimum 10ms"},
		{"initial backoff long", editEdge(t, "initial_backoff: 100ms", "initial_backoff: 61s"), "reconnect.initial_backoff", "initial_backoff", "1m1s is above the maximum 1m"},
		{"max backoff short", editEdge(t, "max_backoff: 30s", "max_backoff: 99ms"), "reconnect.max_backoff", "max_backoff", "99ms is below the minimum 100ms"},
		{"max backoff long", editEdge(t, "max_backoff: 30s", "max_backoff: 11m"), "reconnect.max_backoff", "max_backoff", "11m is above the maximum 10m"},
		{"max below initial", editEdge(t, "initial_backoff: 100ms", "initial_backoff: 45s"), "reconnect.max_backoff", "max_backoff", "30s is below reconnect.initial_backoff (45s)"},
		{"cache ttl zero", edgeBase + "material_cache:\n  ttl: 0s\n", "material_cache.ttl", "ttl: 0s", "0s is below the minimum 1s"},
		{"reuse period short", edgeBase + "data_key_reuse:\n  period: 59s\n", "data_key_reuse.period", "period: 59s", "below the minimum 1m"},
		{"flush too long", edgeBase + "audit:\n  flush_interval: 11s\n", "audit.flush_interval", "flush_interval", "above the maximum 10s"},
		{"audit path control", edgeBase + "audit:\n  path: \"a\\x01\"\n", "audit.path", "path:", "control character"},
		{"request bytes small", edgeBase + "limits:\n  max_request_bytes: 1024\n", "limits.max_request_bytes", "max_request_bytes", "below the minimum 65536 (64 KiB)"},
		{"log format", edgeBase + "  format: xml\n", "log.format", "format: xml", `"xml" is not one of json, text`},
		{"shutdown long", edgeBase + "shutdown_timeout: 11m\n", "shutdown_timeout", "shutdown_timeout", "above the maximum 10m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := ParseEdge("edge.yaml", []byte(tc.yaml), "/etc/keybroker")
			if err == nil {
				t.Fatalf("ParseEdge accepted it: %+v", e)
			}
			line := 0
			if tc.at != "" {
				i := strings.Index(tc.yaml, tc.at)
				if i < 0 {
					t.Fatalf("test case: %q is not in the config", tc.at)
				}
				line = strings.Count(tc.yaml[:i], "\n") + 1
			}
			for _, e := range errorsOf(t, err) {
				if e.Field == tc.field && e.Line == line && strings.Contains(e.Error(), tc.msg) {
					if e.File != "edge.yaml" || !strings.HasPrefix(e.Error(), "edge.yaml: ") {
						t.Errorf("error %q does not name the file", e)
					}
					if tc.field != "" && !strings.HasPrefix(e.Error(), "edge.yaml: "+tc.field+": ") {
						t.Errorf("error %q does not start with file and field", e)
					}
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one for field %q at line %d containing %q", err, tc.field, line, tc.msg)
		})
	}
}

func TestEdgeAllProblemsAtOnce(t *testing.T) {
	cfg := strings.NewReplacer(
		"node_id: edge-eu-1", "node_id: -x",
		"region: eu-west-1", "region: EU",
		"address: central.kb.example:7443", "address: \":7443\"",
		"max_backoff: 30s", "max_backoff: 1ms",
		"max_staleness: 5m", "max_staleness: 48h",
	).Replace(edgeBase)
	_, err := ParseEdge("edge.yaml", []byte(cfg), "/")
	var fields []string
	for _, e := range errorsOf(t, err) {
		fields = append(fields, e.Field)
	}
	want := []string{"node_id", "region", "central.address", "reconnect.max_backoff", "max_staleness"}
	if diff := cmp.Diff(want, fields); diff != "" {
		t.Errorf("fields in errors, in line order (-want +got):\n%s", diff)
	}
}

func TestEdgeResolvePaths(t *testing.T) {
	cfg := strings.NewReplacer(
		"ca: ca.pem", "ca: ../pki/./ca.pem",
		"key: edge.key", "key: /abs/edge.key",
		"data_dir: /var/lib/keybroker-edge", "data_dir: data",
	).Replace(edgeBase) + "audit:\n  path: logs/audit.jsonl\n"
	e, err := ParseEdge("edge.yaml", []byte(cfg), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ field, got, want string }{
		{"tls.ca", e.TLS.CA, "/etc/pki/ca.pem"},
		{"tls.cert", e.TLS.Cert, "/etc/keybroker/edge.pem"},
		{"tls.key", e.TLS.Key, "/abs/edge.key"},
		{"data_dir", e.DataDir, "/etc/keybroker/data"},
		{"audit.path", e.Audit.Path, "/etc/keybroker/logs/audit.jsonl"},
		// Not paths: left as written.
		{"central.address", e.Central.Address, "central.kb.example:7443"},
		{"labels.zone", e.Labels["zone"], "eu-west-1a"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.field, tc.got, tc.want)
		}
	}

	// The audit default follows the resolved data_dir.
	e, err = ParseEdge("edge.yaml", []byte(editEdge(t, "data_dir: /var/lib/keybroker-edge", "data_dir: ./state/../data")), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	if want := "/etc/keybroker/data/audit.jsonl"; e.Audit.Path != want {
		t.Errorf("default audit.path = %q, want %q", e.Audit.Path, want)
	}

	// No base directory: relative paths stay relative; resolving twice
	// changes nothing.
	e, err = ParseEdge("edge.yaml", []byte(edgeBase), "")
	if err != nil {
		t.Fatal(err)
	}
	if e.TLS.CA != "ca.pem" {
		t.Errorf("with no base dir: tls.ca = %q; want it relative", e.TLS.CA)
	}
	before := *e
	e.ResolvePaths("")
	if diff := cmp.Diff(before, *e); diff != "" {
		t.Errorf("ResolvePaths is not idempotent (-before +after):\n%s", diff)
	}
}

func TestLoadEdge(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(path, []byte(editEdge(t, "data_dir: /var/lib/keybroker-edge", "data_dir: data")), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := LoadEdge(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ field, got, want string }{
		{"tls.ca", e.TLS.CA, filepath.Join(dir, "ca.pem")},
		{"data_dir", e.DataDir, filepath.Join(dir, "data")},
		{"audit.path", e.Audit.Path, filepath.Join(dir, "data", "audit.jsonl")},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q (relative to the file)", tc.field, tc.got, tc.want)
		}
	}

	// Relative to the file, also when the file is named relatively.
	t.Chdir(dir)
	if err := os.Mkdir("sub", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("sub", "e.yaml"), []byte(edgeBase), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err = LoadEdge(filepath.Join("sub", "e.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "sub", "ca.pem"); e.TLS.CA != want {
		t.Errorf("tls.ca = %q, want %q", e.TLS.CA, want)
	}

	for name, data := range map[string]string{
		"bad.yaml":     editEdge(t, "max_backoff: 30s", "max_backoff: 11m"),
		"unknown.yaml": edgeBase + "colour: blue\n",
		"central.yaml": base, // a central's file is not an edge's
		"huge.yaml":    edgeBase + "#" + strings.Repeat("x", MaxFileSize),
	} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadEdge(name)
		if err == nil || !strings.HasPrefix(err.Error(), name+": ") {
			t.Errorf("LoadEdge(%q) = %v, want an error naming the file", name, err)
		}
	}
	_, err = LoadEdge("bad.yaml")
	if want := "bad.yaml: reconnect.max_backoff: 11m is above the maximum 10m (line 18)"; err == nil || err.Error() != want {
		t.Errorf("LoadEdge error = %v, want %q", err, want)
	}
	_, err = LoadEdge("unknown.yaml")
	if want := "unknown.yaml: colour: unknown field; known fields are "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("LoadEdge error = %v, want one starting %q", err, want)
	}
	_, err = LoadEdge("missing.yaml")
	if err == nil || err.Error() != "missing.yaml: no such file or directory" || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadEdge(missing) = %v, want %q (and os.ErrNotExist)", err, "missing.yaml: no such file or directory")
	}
}

func TestEdgeValidateInCode(t *testing.T) {
	e := DefaultEdge()
	e.NodeID, e.TrustDomain, e.Listen, e.OpsListen = "edge-1", "kb.example", "127.0.0.1:7443", "127.0.0.1:7080"
	e.TLS = TLS{CA: "ca.pem", Cert: "e.pem", Key: "e.key"}
	e.DataDir = "data"
	e.Central.Address = "central.kb.example:7443"
	if err := e.Validate(); err == nil || !strings.Contains(err.Error(), "audit.path: empty: ResolvePaths") {
		t.Errorf("Validate before ResolvePaths = %v, want the audit path reported", err)
	}
	e.ResolvePaths("/etc/kb")
	if err := e.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	// Built in code, labels are checked in key order, whatever the map's.
	e.Labels = map[string]string{"-b": "", "-a": "", "-c": ""}
	var fields []string
	for _, err := range errorsOf(t, e.Validate()) {
		fields = append(fields, err.Field)
	}
	if want := []string{"labels.-a", "labels.-b", "labels.-c"}; !slices.Equal(fields, want) {
		t.Errorf("label errors for fields %q, want %q", fields, want)
	}

	// The zero value reports every required field, without a file name.
	var zero Edge
	err := zero.Validate()
	for _, e := range errorsOf(t, err) {
		if e.File != "" || e.Line != 0 {
			t.Errorf("error %q has a file or line", e)
		}
	}
	for _, f := range []string{"node_id", "trust_domain", "listen", "ops_listen", "tls.ca", "tls.cert", "tls.key", "data_dir", "central.address", "reconnect.initial_backoff", "reconnect.max_backoff", "audit.flush_interval", "material_cache.size", "log.level", "shutdown_timeout"} {
		if !strings.Contains(err.Error(), f+": ") {
			t.Errorf("zero Edge: no error for %s; got %v", f, err)
		}
	}
	// A zero max_staleness and prefetch are valid values, not missing.
	for _, f := range []string{"max_staleness", "prefetch", "region", "labels"} {
		if strings.Contains(err.Error(), "\n"+f+": ") || strings.HasPrefix(err.Error(), f+": ") {
			t.Errorf("zero Edge: error for %s, whose zero value is valid: %v", f, err)
		}
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Field != "node_id" {
		t.Errorf("errors.As(err, *Error) = %v, want the node_id error first", ce)
	}
}

func TestEdgeCheck(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "edge.pem", "edge.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	e, err := ParseEdge("e.yaml", []byte(editEdge(t, "data_dir: /var/lib/keybroker-edge", "data_dir: data")), dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatalf("Check() = %v", err)
	}
	// The node creates data_dir, and the default audit log in it.
	fresh := *e
	fresh.DataDir = filepath.Join(dir, "new", "data")
	fresh.Audit.Path = ""
	fresh.ResolvePaths(dir)
	if err := fresh.Check(); err != nil {
		t.Errorf("Check() with a data_dir still to be created = %v", err)
	}

	bad := *e
	bad.TLS.Key = filepath.Join(dir, "missing.key")
	bad.TLS.CA = dir
	bad.DataDir = filepath.Join(dir, "ca.pem")
	bad.Audit.Path = filepath.Join(dir, "nodir", "audit.jsonl")
	want := map[string]string{
		"tls.key":    "no such file",
		"tls.ca":     "is not a regular file",
		"data_dir":   "is not a directory",
		"audit.path": "no such file",
	}
	got := map[string]string{}
	err = bad.Check()
	for _, e := range errorsOf(t, err) {
		got[e.Field] = e.Error()
	}
	for f, msg := range want {
		if !strings.Contains(got[f], msg) {
			t.Errorf("Check: %s error = %q, want one containing %q", f, got[f], msg)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Check reported %d fields, want %d:\n%v", len(got), len(want), err)
	}
}

// TestLabelsAgreeWithManaged pins the contract checkLabels keeps: an
// edge's labels are accepted exactly when managed.ValidateLabels, which
// the central tier applies when the edge registers, accepts them.
func TestLabelsAgreeWithManaged(t *testing.T) {
	if MaxLabels != managed.MaxLabels {
		t.Errorf("MaxLabels = %d, managed.MaxLabels = %d", MaxLabels, managed.MaxLabels)
	}
	tooMany := map[string]string{}
	for i := range MaxLabels + 1 {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	full := maps.Clone(tooMany)
	delete(full, "k0")
	accepted := 0
	cases := []map[string]string{
		nil,
		{"zone": "eu-west-1a"},
		{"kb.example/zone": "a", "A_b-c.d": "", "0": "x"},
		{strings.Repeat("k", 63): strings.Repeat("v", 256)},
		{strings.Repeat("k", 64): "v"},
		{"k": strings.Repeat("v", 257)},
		{"": "v"},
		{"-k": "v"},
		{".k": "v"},
		{"/k": "v"},
		{"_k": "v"},
		{"a b": "v"},
		{"a:b": "v"},
		{"é": "v"},
		{"a\n": "v"},
		full,
		tooMany,
	}
	for _, labels := range cases {
		var p problems
		checkLabels(&p, "labels", labels)
		got, want := len(p) == 0, managed.ValidateLabels(labels) == nil
		if got != want {
			t.Errorf("labels %q: config accepts: %v, managed accepts: %v (%v)", labels, got, want, p.join("", nil))
		}
		if got {
			accepted++
		}
	}
	if accepted == 0 || accepted == len(cases) {
		t.Errorf("%d of %d label sets accepted; the cases should cover both outcomes", accepted, len(cases))
	}
}

func TestCentralEdges(t *testing.T) {
	c, err := ParseCentral("central.yaml", []byte(base), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c.Edges.Lease != DefaultEdgeLease || c.Edges.Heartbeat != 0 || c.Edges.HeartbeatInterval() != DefaultEdgeLease/3 {
		t.Errorf("edges defaults = %+v (heartbeat interval %v), want lease %v, heartbeat 0s (%v)", c.Edges, c.Edges.HeartbeatInterval(), DefaultEdgeLease, DefaultEdgeLease/3)
	}
	for _, tc := range []struct {
		edges       string
		lease, beat time.Duration // the values loaded, when msg is ""
		interval    time.Duration // HeartbeatInterval()
		field, msg  string
	}{
		{edges: "{}", lease: 30 * time.Second, interval: 10 * time.Second},
		{edges: "{lease: 1s}", lease: time.Second, interval: time.Second / 3},
		{edges: "{lease: 10m}", lease: 10 * time.Minute, interval: 200 * time.Second},
		{edges: "{lease: 3m, heartbeat: 0s}", lease: 3 * time.Minute, interval: time.Minute},
		{edges: "{heartbeat: 100ms}", lease: 30 * time.Second, beat: 100 * time.Millisecond, interval: 100 * time.Millisecond},
		{edges: "{heartbeat: 15s}", lease: 30 * time.Second, beat: 15 * time.Second, interval: 15 * time.Second},
		{edges: "{lease: 1s, heartbeat: 500ms}", lease: time.Second, beat: 500 * time.Millisecond, interval: 500 * time.Millisecond},

		{edges: "{lease: 999ms}", field: "edges.lease", msg: "999ms is below the minimum 1s"},
		{edges: "{lease: 0s}", field: "edges.lease", msg: "0s is below the minimum 1s"},
		{edges: "{lease: 10m1s}", field: "edges.lease", msg: "10m1s is above the maximum 10m"},
		{edges: "{lease: 30}", field: "edges.lease", msg: `"30" is not a duration`},
		{edges: "{heartbeat: 99ms}", field: "edges.heartbeat", msg: "99ms is below the minimum 100ms; 0s means a third of the lease"},
		{edges: "{heartbeat: -1s}", field: "edges.heartbeat", msg: "-1s is negative"},
		{edges: "{heartbeat: 15001ms}", field: "edges.heartbeat", msg: "15.001s is above half of edges.lease (30s)"},
		{edges: "{lease: 1s, heartbeat: 1s}", field: "edges.heartbeat", msg: "1s is above half of edges.lease (1s)"},
		{edges: "{lease: 1m, heartbeat: 2m}", field: "edges.heartbeat", msg: "2m is above half of edges.lease (1m)"},
		{edges: "{leese: 1m}", field: "edges.leese", msg: "did you mean lease?"},
		{edges: "[30s]", field: "edges", msg: "want a mapping of fields"},
	} {
		t.Run(tc.edges, func(t *testing.T) {
			cfg := base + "edges: " + tc.edges + "\n"
			c, err := ParseCentral("central.yaml", []byte(cfg), "/")
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				got := [3]time.Duration{c.Edges.Lease, c.Edges.Heartbeat, c.Edges.HeartbeatInterval()}
				if want := [3]time.Duration{tc.lease, tc.beat, tc.interval}; got != want {
					t.Errorf("lease, heartbeat, interval = %v, want %v", got, want)
				}
				return
			}
			line := strings.Count(base, "\n") + 1
			for _, e := range errorsOf(t, err) {
				if e.Field == tc.field && e.Line == line && strings.Contains(e.Error(), tc.msg) {
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one for field %q at line %d containing %q", err, tc.field, line, tc.msg)
		})
	}

	// Built in code, a lease out of range does not also make the heartbeat
	// wrong.
	c.Edges = Edges{Lease: 0, Heartbeat: time.Second}
	err = c.Validate()
	if err == nil || !strings.Contains(err.Error(), "edges.lease: ") || strings.Contains(err.Error(), "edges.heartbeat: ") {
		t.Errorf("Validate() with lease 0s, heartbeat 1s = %v, want only the lease reported", err)
	}
}

// TestTLSRevocationFields: tls.crl and tls.deny are optional paths,
// resolved like the others; tls.reload_interval is 0s or 100ms..1h.
func TestTLSRevocationFields(t *testing.T) {
	base := "node_id: n\ntrust_domain: td\nlisten: \"127.0.0.1:1\"\nops_listen: \"127.0.0.1:2\"\ndata_dir: data\ncentral: {address: \"central:7443\"}\n"
	e, err := ParseEdge("edge.yaml", []byte(base+"tls: {ca: a, cert: b, key: c, crl: r.crl, deny: deny.txt, reload_interval: 0s}\n"), "/srv/kb")
	if err != nil {
		t.Fatal(err)
	}
	if e.TLS.CRL != "/srv/kb/r.crl" || e.TLS.Deny != "/srv/kb/deny.txt" || e.TLS.ReloadInterval != 0 {
		t.Errorf("tls = %+v", e.TLS)
	}
	if o := e.TLS.FileOptions(nil); o.ReloadInterval >= 0 {
		t.Errorf("reload_interval 0s: FileOptions.ReloadInterval = %v, want negative (no polling)", o.ReloadInterval)
	}
	for _, bad := range []string{"reload_interval: 10ms", "reload_interval: 2h", "reload_interval: -1s", "crl: \"a\\u0001\"", "bogus: x"} {
		if _, err := ParseEdge("edge.yaml", []byte(base+"tls: {ca: a, cert: b, key: c, "+bad+"}\n"), "/srv/kb"); err == nil || !strings.Contains(err.Error(), "tls.") {
			t.Errorf("tls {%s}: %v, want an error naming the tls field", bad, err)
		}
	}
}
