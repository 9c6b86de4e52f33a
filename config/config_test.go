package config

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/managed"
)

// docBlocks returns the ```yaml blocks of docs/config.md, in order; those
// starting "# invalid" are examples of errors.
func docBlocks(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	rest := string(data)
	for {
		_, after, ok := strings.Cut(rest, "\n```yaml\n")
		if !ok {
			return blocks
		}
		block, after, ok := strings.Cut(after, "\n```\n")
		if !ok {
			t.Fatal("docs/config.md: unterminated ```yaml block")
		}
		blocks = append(blocks, block+"\n")
		rest = after
	}
}

// errorsOf flattens a joined error into its *Errors.
func errorsOf(t *testing.T, err error) []*Error {
	t.Helper()
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else if err != nil {
		errs = []error{err}
	}
	var out []*Error
	for _, e := range errs {
		ce, ok := e.(*Error)
		if !ok {
			t.Fatalf("error %v (%T) is not a *config.Error", e, e)
		}
		out = append(out, ce)
	}
	return out
}

func TestDocExample(t *testing.T) {
	blocks := docBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("docs/config.md has %d yaml blocks, want the full and the minimal example", len(blocks))
	}
	got, err := ParseCentral("central.yaml", []byte(blocks[0]), "/etc/keybroker")
	if err != nil {
		t.Fatalf("the full example in docs/config.md does not load:\n%v", err)
	}
	want := &Central{
		Node: Node{
			NodeID:      "central-1",
			TrustDomain: "kb.example",
			Listen:      "127.0.0.1:7443",
			OpsListen:   "127.0.0.1:7080",
			TLS: TLS{
				CA:             "/etc/keybroker/ca.pem",
				Cert:           "/etc/keybroker/central.pem",
				Key:            "/etc/keybroker/central.key",
				ReloadInterval: time.Second,
			},
			SPIFFE:          SPIFFE{Timeout: 30 * time.Second},
			Ops:             Ops{Allow: []string{"admin"}},
			DataDir:         "/var/lib/keybroker",
			Audit:           Audit{Path: "/var/lib/keybroker/audit.jsonl", FlushInterval: 100 * time.Millisecond},
			MaterialCache:   MaterialCache{Size: 10000, TTL: 5 * time.Minute},
			DataKeyReuse:    DataKeyReuse{Period: 5 * time.Minute, MaxMessages: 1 << 28, MaxBytes: 64 << 30, MaxDataKeysPerVersion: 1 << 28},
			Limits:          Limits{MaxRequestBytes: 5 << 20},
			Log:             Log{Level: "info", Format: "json"},
			ShutdownTimeout: 30 * time.Second,
		},
		Backends: []Backend{{
			Name: "hsm",
			URI:  "pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin",
		}},
		RootKeys: []RootKey{
			{URI: "pkcs11:token=kb;object=root-prf", Role: "derive"},
			{URI: "pkcs11:token=kb;object=root-aes", Role: "wrap"},
			{URI: "pkcs11:token=kb;object=root-sign", Role: "backend", Types: []string{"ecdsa-p256"}},
		},
		DefaultRootKeys: RootKeys{
			Derive: "pkcs11:token=kb;object=root-prf",
			Wrap:   "pkcs11:token=kb;object=root-aes",
		},
		Policy:        Policy{Paths: []string{"/etc/keybroker/policy"}, ReloadInterval: 10 * time.Second},
		Edges:         Edges{Lease: 30 * time.Second},
		BackendBudget: BackendBudget{Rate: 500, Burst: 1000, MaxPrincipals: 10000, EdgeRate: 20000, EdgeBurst: 20000},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("full example (-want +got):\n%s", diff)
	}

	// The full example gives every default explicitly, so it must equal
	// the minimal one's defaults: the doc and DefaultCentral agree.
	min, err := ParseCentral("central.yaml", []byte(blocks[1]), "/etc/keybroker")
	if err != nil {
		t.Fatalf("the minimal example in docs/config.md does not load:\n%v", err)
	}
	if diff := cmp.Diff(want.Policy.ReloadInterval, min.Policy.ReloadInterval); diff != "" {
		t.Errorf("reload_interval default (-doc +code):\n%s", diff)
	}
	for name, pair := range map[string][2]any{
		"audit":            {want.Audit, min.Audit},
		"material_cache":   {want.MaterialCache, min.MaterialCache},
		"data_key_reuse":   {want.DataKeyReuse, min.DataKeyReuse},
		"limits":           {want.Limits, min.Limits},
		"log":              {want.Log, min.Log},
		"shutdown_timeout": {want.ShutdownTimeout, min.ShutdownTimeout},
		"edges":            {want.Edges, min.Edges},
	} {
		if diff := cmp.Diff(pair[0], pair[1]); diff != "" {
			t.Errorf("%s: full example and defaults differ (-full +defaults):\n%s", name, diff)
		}
	}
	for i, b := range blocks[2:] {
		if strings.HasPrefix(b, "# invalid") {
			continue // TestDocValidationExamples
		}
		if strings.HasPrefix(b, "# edge.yaml") {
			if _, err := ParseEdge("edge.yaml", []byte(b), "/etc/keybroker"); err != nil {
				t.Errorf("yaml block %d of docs/config.md (an edge.yaml) does not load:\n%v", i+3, err)
			}
			continue // TestDocEdgeExample
		}
		if strings.HasPrefix(b, "# part of central.yaml") {
			b = blocks[0] + b // a section's example of one block, added to the minimal file
		}
		if _, err := ParseCentral("central.yaml", []byte(b), "/etc/keybroker"); err != nil {
			t.Errorf("yaml block %d of docs/config.md does not load:\n%v", i+3, err)
		}
	}
}

// base is a valid configuration the bad cases edit, one line at a time.
const base = `node_id: central-1
trust_domain: kb.example
listen: 127.0.0.1:7443
ops_listen: 127.0.0.1:7080
tls:
  ca: ca.pem
  cert: central.pem
  key: central.key
data_dir: /var/lib/keybroker
backends:
  - name: hsm
    uri: "pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin"
  - name: soft
    uri: "softkms:path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek"
default_root_keys:
  derive: "pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin"
  wrap: "softkms:root-aes"
policy:
  paths: [policy/]
  reload_interval: 10s
audit:
  flush_interval: 100ms
log:
  level: info
`

func TestBase(t *testing.T) {
	c, err := ParseCentral("central.yaml", []byte(base), "/etc/keybroker")
	if err != nil {
		t.Fatalf("base config does not load:\n%v", err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() of a loaded config = %v", err)
	}
}

func TestDefaults(t *testing.T) {
	c, err := ParseCentral("central.yaml", []byte(`node_id: n
trust_domain: td
listen: "127.0.0.1:1"
ops_listen: ":2"
tls: {ca: a, cert: b, key: c}
data_dir: data
backends: [{name: s, uri: "softkms:"}]
policy: {paths: [p]}
`), "/srv/kb")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultCentral()
	want.NodeID, want.TrustDomain, want.Listen, want.OpsListen = "n", "td", "127.0.0.1:1", ":2"
	want.TLS = TLS{CA: "/srv/kb/a", Cert: "/srv/kb/b", Key: "/srv/kb/c", ReloadInterval: DefaultTLSReloadInterval}
	want.DataDir = "/srv/kb/data"
	want.Backends = []Backend{{Name: "s", URI: "softkms:"}}
	want.Policy.Paths = []string{"/srv/kb/p"}
	want.Audit.Path = "/srv/kb/data/audit.jsonl"
	if diff := cmp.Diff(&want, c); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	for name, got := range map[string]any{
		"reload_interval":   c.Policy.ReloadInterval == 10*time.Second,
		"flush_interval":    c.Audit.FlushInterval == 100*time.Millisecond,
		"size":              c.MaterialCache.Size == 10000,
		"ttl":               c.MaterialCache.TTL == 5*time.Minute,
		"period":            c.DataKeyReuse.Period == 5*time.Minute,
		"max_messages":      c.DataKeyReuse.MaxMessages == 1<<28,
		"max_bytes":         c.DataKeyReuse.MaxBytes == 64<<30,
		"max_request_bytes": c.Limits.MaxRequestBytes == 5<<20,
		"level":             c.Log.Level == "info",
		"format":            c.Log.Format == "json",
		"shutdown_timeout":  c.ShutdownTimeout == 30*time.Second,
		"edges.lease":       c.Edges.Lease == 30*time.Second,
		"edges.heartbeat":   c.Edges.Heartbeat == 0 && c.Edges.HeartbeatInterval() == 10*time.Second,
	} {
		if got != true {
			t.Errorf("default %s is not the documented one", name)
		}
	}
	if err := c.DataKeyReuse.ReusePolicy().Validate(); err != nil {
		t.Errorf("default data_key_reuse is not a valid envelope.ReusePolicy: %v", err)
	}
}

func TestListenAddresses(t *testing.T) {
	for _, tc := range []struct{ listen, ops string }{
		{"127.0.0.1:0", "127.0.0.1:0"}, // two free ports, not one
		{"10.0.0.5:7443", "127.0.0.1:7080"},
		{"[::1]:7443", "[::1]:7080"},
		{"[fe80::1%eth0]:7443", "localhost:7443"},
		{"kb-central.internal:7443", "[::1]:7443"},
	} {
		cfg := strings.NewReplacer("listen: 127.0.0.1:7443", "listen: \""+tc.listen+"\"", "ops_listen: 127.0.0.1:7080", "ops_listen: \""+tc.ops+"\"").Replace(base)
		if _, err := ParseCentral("c.yaml", []byte(cfg), "/"); err != nil {
			t.Errorf("listen %q, ops_listen %q: %v", tc.listen, tc.ops, err)
		}
	}
}

func TestExplicitZeroIsNotDefault(t *testing.T) {
	// 0s disables policy polling; it must not be mistaken for "unset".
	c, err := ParseCentral("c.yaml", []byte(strings.Replace(base, "reload_interval: 10s", "reload_interval: 0s", 1)), "/")
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.ReloadInterval != 0 {
		t.Errorf("reload_interval: 0s gave %v, want 0", c.Policy.ReloadInterval)
	}
}

func TestNumberForms(t *testing.T) {
	for in, want := range map[string]int{"1_000": 1000, "0x100": 256, "+5": 5} {
		c, err := ParseCentral("c.yaml", []byte(base+"material_cache:\n  size: "+in+"\n"), "/")
		if err != nil {
			t.Errorf("size: %s: %v", in, err)
			continue
		}
		if c.MaterialCache.Size != want {
			t.Errorf("size: %s = %d, want %d", in, c.MaterialCache.Size, want)
		}
	}
}

func TestResolvePaths(t *testing.T) {
	cfg := strings.NewReplacer(
		"ca: ca.pem", "ca: ../pki/./ca.pem",
		"key: central.key", "key: /abs/central.key",
		"data_dir: /var/lib/keybroker", "data_dir: data",
		"paths: [policy/]", "paths: [policy/, /opt/policy/base.cedar]",
		"audit:\n", "audit:\n  path: logs/audit.jsonl\n",
	).Replace(base)
	c, err := ParseCentral("c.yaml", []byte(cfg), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ field, got, want string }{
		{"tls.ca", c.TLS.CA, "/etc/pki/ca.pem"},
		{"tls.cert", c.TLS.Cert, "/etc/keybroker/central.pem"},
		{"tls.key", c.TLS.Key, "/abs/central.key"},
		{"data_dir", c.DataDir, "/etc/keybroker/data"},
		{"policy.paths[0]", c.Policy.Paths[0], "/etc/keybroker/policy"},
		{"policy.paths[1]", c.Policy.Paths[1], "/opt/policy/base.cedar"},
		{"audit.path", c.Audit.Path, "/etc/keybroker/logs/audit.jsonl"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.field, tc.got, tc.want)
		}
	}

	// The audit default follows the resolved data_dir.
	c, err = ParseCentral("c.yaml", []byte(strings.Replace(base, "data_dir: /var/lib/keybroker", "data_dir: data", 1)), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	if want := "/etc/keybroker/data/audit.jsonl"; c.Audit.Path != want {
		t.Errorf("default audit.path = %q, want %q", c.Audit.Path, want)
	}

	// No base directory: relative paths stay relative; resolving twice
	// changes nothing.
	c, err = ParseCentral("c.yaml", []byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.CA != "ca.pem" || c.Policy.Paths[0] != "policy" {
		t.Errorf("with no base dir: tls.ca = %q, policy.paths[0] = %q; want them relative", c.TLS.CA, c.Policy.Paths[0])
	}
	before := *c
	c.ResolvePaths("")
	if diff := cmp.Diff(before, *c); diff != "" {
		t.Errorf("ResolvePaths is not idempotent (-before +after):\n%s", diff)
	}
}

// edit replaces one line of base (old must occur exactly once).
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if strings.Count(base, old) != 1 {
		t.Fatalf("edit: %q occurs %d times in base", old, strings.Count(base, old))
	}
	return strings.Replace(base, old, new, 1)
}

// rootDecl declares base's default root keys in their roles.
const rootDecl = "root_keys:\n  - uri: \"pkcs11:token=kb;object=root-prf\"\n    role: derive\n  - uri: \"softkms:root-aes\"\n    role: wrap\n"

func TestRootKeyDeclarations(t *testing.T) {
	legacy, err := ParseCentral("central.yaml", []byte(base), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	want := []RootKey{
		{URI: "pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin", Role: managed.RoleDerive},
		{URI: "softkms:root-aes", Role: managed.RoleWrap},
	}
	if diff := cmp.Diff(want, legacy.DeclaredRootKeys()); diff != "" {
		t.Errorf("without root_keys, DeclaredRootKeys() (-want +got):\n%s", diff)
	}
	declared, err := ParseCentral("central.yaml", []byte(base+rootDecl+"  - uri: \"softkms:sign\"\n    role: backend\n    types: [ecdsa-p256, ed25519]\n"), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	want = []RootKey{
		{URI: "pkcs11:token=kb;object=root-prf", Role: managed.RoleDerive},
		{URI: "softkms:root-aes", Role: managed.RoleWrap},
		{URI: "softkms:sign", Role: managed.RoleBackend, Types: []string{"ecdsa-p256", "ed25519"}},
	}
	if diff := cmp.Diff(want, declared.DeclaredRootKeys()); diff != "" {
		t.Errorf("with root_keys, DeclaredRootKeys() (-want +got):\n%s", diff)
	}
}

// TestEtcdStore: a store.etcd block loads with its defaults and its TLS
// files resolved against the file's directory; without one the store is
// the bbolt file.
func TestEtcdStore(t *testing.T) {
	c, err := ParseCentral("central.yaml", []byte(base+`store:
  etcd:
    endpoints: ["https://etcd-1.example:2379", "https://etcd-2.example:2379"]
    tls: {ca: etcd/ca.pem, cert: etcd/central.pem, key: etcd/central-key.pem}
`), "/etc/keybroker")
	if err != nil {
		t.Fatal(err)
	}
	want := &EtcdStore{Endpoints: []string{"https://etcd-1.example:2379", "https://etcd-2.example:2379"},
		TLS:    EtcdTLS{CA: "/etc/keybroker/etcd/ca.pem", Cert: "/etc/keybroker/etcd/central.pem", Key: "/etc/keybroker/etcd/central-key.pem"},
		Prefix: "/keybroker/", DialTimeout: DefaultEtcdDialTimeout,
		RequestTimeout: DefaultEtcdRequestTimeout, MaxStaleness: DefaultEtcdMaxStaleness}
	if diff := cmp.Diff(want, c.Store.Etcd); diff != "" {
		t.Errorf("store.etcd (-want +got):\n%s", diff)
	}
	if c, err := ParseCentral("central.yaml", []byte(base), "/etc/keybroker"); err != nil || c.Store.Etcd != nil {
		t.Errorf("without store: %+v, %v; want the bbolt file", c.Store, err)
	}
	if _, err := ParseCentral("central.yaml", []byte(base+"store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\", \"http://[::1]:2379\", \"http://localhost:2379\"]\n"), ""); err != nil {
		t.Errorf("plain http on loopback: %v", err)
	}
}

func TestBadConfigs(t *testing.T) {
	huge := base + "#" + strings.Repeat("x", MaxFileSize) + "\n"
	for _, tc := range []struct {
		name  string
		yaml  string
		field string // the field the error must name ("" for the document)
		at    string // the error must be on the line holding this; "" for no line
		msg   string // the error must contain this
	}{
		// Ops and the backend budget.
		{"ops allow empty", base + "ops:\n  allow: []\n", "ops.allow", "allow: []", "at least one principal"},
		{"ops allow unknown kind", base + "ops:\n  allow: [operator]\n", "ops.allow[0]", "allow: [operator]", "neither a kind"},
		{"ops allow case", base + "ops:\n  allow: [Admin]\n", "ops.allow[0]", "allow: [Admin]", "neither a kind"},
		{"ops allow foreign", base + "ops:\n  allow: [\"spiffe://other.example/client/prom\"]\n", "ops.allow[0]", "allow: [", `not in trust domain "kb.example"`},
		{"ops allow repeated", base + "ops:\n  allow: [admin, admin]\n", "ops.allow[1]", "allow: [admin", "already ops.allow[0]"},
		{"budget rate zero", base + "backend_budget:\n  rate: 0\n", "backend_budget.rate", "rate: 0", "below the minimum"},
		{"budget burst zero", base + "backend_budget:\n  burst: 0\n", "backend_budget.burst", "burst: 0", "below the minimum"},

		// The etcd store.
		{"etcd no endpoints", base + "store:\n  etcd: {}\n", "store.etcd.endpoints", "etcd: {}", "is required"},
		{"etcd plain http off loopback", base + "store:\n  etcd:\n    endpoints: [\"http://10.0.0.5:2379\"]\n", "store.etcd.endpoints[0]", "endpoints: [", "not loopback"},
		{"etcd https without ca", base + "store:\n  etcd:\n    endpoints: [\"https://etcd-1:2379\"]\n", "store.etcd.tls.ca", "etcd:", "required with the https endpoint"},
		{"etcd http with tls", base + "store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    tls: {ca: ca.pem}\n", "store.etcd.endpoints[0]", "endpoints: [", "plain http, but tls is given"},
		{"etcd no port", base + "store:\n  etcd:\n    endpoints: [\"https://etcd-1\"]\n    tls: {ca: ca.pem}\n", "store.etcd.endpoints[0]", "endpoints: [", "host and a port"},
		{"etcd scheme", base + "store:\n  etcd:\n    endpoints: [\"unix:///run/etcd.sock\"]\n", "store.etcd.endpoints[0]", "endpoints: [", "not a URL"},
		{"aws region", base + "aws_kms: {listen: \"127.0.0.1:0\", region: Europe, account: \"111122223333\"}\n", "aws_kms.region", "aws_kms:", "not an AWS region"},
		{"aws account", base + "aws_kms: {listen: \"127.0.0.1:0\", region: eu-west-1, account: \"1234\"}\n", "aws_kms.account", "aws_kms:", "12-digit"},
		{"aws overlaps listen", base + "aws_kms: {listen: \"127.0.0.1:7443\", region: eu-west-1, account: \"111122223333\"}\n", "aws_kms.listen", "aws_kms:", "overlaps listen"},
		{"aws no listen", base + "aws_kms: {region: eu-west-1, account: \"111122223333\"}\n", "aws_kms.listen", "aws_kms:", "required"},
		{"xks region", base + "xks: {listen: \"127.0.0.1:0\", region: Europe, health_key: demo}\n", "xks.region", "xks:", "not an AWS region"},
		{"xks prefix", base + "xks: {listen: \"127.0.0.1:0\", region: eu-west-1, prefix: kb/, health_key: demo}\n", "xks.prefix", "xks:", "segments"},
		{"xks no health key", base + "xks: {listen: \"127.0.0.1:0\", region: eu-west-1}\n", "xks.health_key", "xks:", "not a key id"},
		{"xks overlaps listen", base + "xks: {listen: \"127.0.0.1:7443\", region: eu-west-1, health_key: demo}\n", "xks.listen", "xks:", "overlaps listen"},
		{"xks no listen", base + "xks: {region: eu-west-1, health_key: demo}\n", "xks.listen", "xks:", "required"},
		{"etcd staleness too short", base + "store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    max_staleness: 1s\n", "store.etcd.max_staleness", "max_staleness: 1s", "below the minimum"},
		{"etcd request timeout too long", base + "store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    request_timeout: 2m\n", "store.etcd.request_timeout", "request_timeout: 2m", "above the maximum"},
		{"etcd cert without key", base + "store:\n  etcd:\n    endpoints: [\"https://etcd-1:2379\"]\n    tls: {ca: ca.pem, cert: c.pem}\n", "store.etcd.tls", "tls: {ca: ca.pem, cert", "cert and key go together"},
		{"etcd prefix", base + "store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    prefix: keybroker\n", "store.etcd.prefix", "prefix: keybroker", "start and end with /"},
		{"etcd dial timeout", base + "store:\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    dial_timeout: 10ms\n", "store.etcd.dial_timeout", "dial_timeout: 10ms", "below the minimum"},
		{"etcd unknown field", base + "store:\n  etcd:\n    endpoint: [\"http://127.0.0.1:2379\"]\n", "store.etcd.endpoint", "endpoint:", "did you mean endpoints?"},

		// Unknown fields.
		{"unknown top-level", base + "colour: blue\n", "colour", "colour: blue", "unknown field"},
		{"unknown nested", edit(t, "reload_interval: 10s", "reload_intervall: 10s"), "policy.reload_intervall", "reload_intervall", "did you mean reload_interval?"},
		{"unknown in list item", edit(t, "- name: soft", "- nmae: soft"), "backends[1].nmae", "nmae", "did you mean name?"},
		{"merge key", edit(t, "tls:\n", "tls:\n  <<: {ca: x}\n"), "tls", "<<", "merge keys"},
		{"given twice", base + "node_id: again\n", "node_id", "node_id: again", "given twice; first on line 1"},

		// Kinds and types.
		{"scalar for mapping", edit(t, "audit:\n  flush_interval: 100ms\n", "audit: yes\n"), "audit", "audit: yes", "want a mapping"},
		{"scalar for list", edit(t, "paths: [policy/]", "paths: policy/"), "policy.paths", "paths: policy/", "want a list"},
		{"list for scalar", edit(t, "listen: 127.0.0.1:7443", "listen: [127.0.0.1:7443]"), "listen", "listen: [", "want a single value"},
		{"word for integer", base + "material_cache:\n  size: ten\n", "material_cache.size", "size: ten", `"ten" is not a whole number`},
		{"fraction for integer", base + "material_cache:\n  size: 1.5\n", "material_cache.size", "size: 1.5", "not a whole number"},
		{"string for integer", base + "material_cache:\n  size: \"10\"\n", "material_cache.size", "size:", `"10" is not a whole number`},
		{"float for integer", base + "material_cache:\n  size: 1e3\n", "material_cache.size", "size: 1e3", "not a whole number"},
		{"negative unsigned", base + "data_key_reuse:\n  max_messages: -1\n", "data_key_reuse.max_messages", "max_messages: -1", "not a whole number of 0 or more"},
		{"number for duration", edit(t, "reload_interval: 10s", "reload_interval: 10"), "policy.reload_interval", "reload_interval: 10", `"10" is not a duration`},
		{"bare zero duration", edit(t, "reload_interval: 10s", "reload_interval: 0"), "policy.reload_interval", "reload_interval: 0", "such as 0s"},
		{"bad duration", edit(t, "flush_interval: 100ms", "flush_interval: 100 ms"), "audit.flush_interval", "flush_interval", "not a duration"},
		{"null value", edit(t, "level: info", "level:"), "log.level", "level:", "no value"},
		{"explicit null", edit(t, "level: info", "level: ~"), "log.level", "level: ~", "no value"},
		{"null section", edit(t, "audit:\n  flush_interval: 100ms\n", "audit:\n"), "audit", "audit:", "no value"},
		{"alias", edit(t, "listen: 127.0.0.1:7443", "listen: &l 127.0.0.1:7443") + "shutdown_timeout: *l\n", "shutdown_timeout", "shutdown_timeout: *l", "aliases are not allowed"},
		{"not a mapping", "- node_id: x\n", "", "- node_id", "want a mapping of fields"},
		{"syntax, parser", edit(t, "  ca: ca.pem", "  ca: [ca.pem"), "", "  ca: [", "did not find expected ',' or ']'"},
		{"syntax, parser, first line", "[node_id\nlisten: x\n", "", "listen", "did not find expected ',' or ']'"},
		{"syntax, parser, block", base + "- x\n", "", "- x", "did not find expected key"},
		{"syntax, scanner", edit(t, "  ca: ca.pem", "  ca: x: y"), "", "ca: x: y", "mapping values are not allowed"},
		{"syntax, tab", edit(t, "  ca: ca.pem", "\tca: ca.pem"), "", "\tca", "found character that cannot start any token"},

		// Documents and size.
		{"two documents", base + "---\nnode_id: other\n", "", "---", "second YAML document"},
		{"trailing document marker", base + "---\n", "", "---", "second YAML document"},
		{"empty file", "", "", "", "empty"},
		{"comments only", "# nothing here\n", "", "", "empty"},
		{"empty document", "---\n", "", "", "empty"},
		{"huge file", huge, "", "", "larger than the limit of 1 MiB"},

		// Ranges.
		{"reload below minimum", edit(t, "reload_interval: 10s", "reload_interval: 500ms"), "policy.reload_interval", "reload_interval", "500ms is below the minimum 1s"},
		{"reload negative", edit(t, "reload_interval: 10s", "reload_interval: -1s"), "policy.reload_interval", "reload_interval", "negative"},
		{"flush below minimum", edit(t, "flush_interval: 100ms", "flush_interval: 5ms"), "audit.flush_interval", "flush_interval", "5ms is below the minimum 10ms"},
		{"flush above maximum", edit(t, "flush_interval: 100ms", "flush_interval: 11s"), "audit.flush_interval", "flush_interval", "11s is above the maximum 10s"},
		{"cache size zero", base + "material_cache:\n  size: 0\n", "material_cache.size", "size: 0", "0 is below the minimum 1"},
		{"cache size too big", base + "material_cache:\n  size: 10000001\n", "material_cache.size", "size: 1", "above the maximum 10000000"},
		{"cache ttl zero", base + "material_cache:\n  ttl: 0s\n", "material_cache.ttl", "ttl: 0s", "0s is below the minimum 1s"},
		{"cache ttl too long", base + "material_cache:\n  ttl: 25h\n", "material_cache.ttl", "ttl: 25h", "25h is above the maximum 24h"},
		{"reuse period short", base + "data_key_reuse:\n  period: 59s\n", "data_key_reuse.period", "period: 59s", "59s is below the minimum 1m"},
		{"reuse period long", base + "data_key_reuse:\n  period: 24h1s\n", "data_key_reuse.period", "period: 24h1s", "above the maximum 24h"},
		{"max messages zero", base + "data_key_reuse:\n  max_messages: 0\n", "data_key_reuse.max_messages", "max_messages: 0", "out of range 1..4294967296"},
		{"max messages over 2^32", base + "data_key_reuse:\n  max_messages: 4294967297\n", "data_key_reuse.max_messages", "max_messages", "out of range"},
		{"max bytes zero", base + "data_key_reuse:\n  max_bytes: 0\n", "data_key_reuse.max_bytes", "max_bytes: 0", "at least 1"},
		{"data keys per version zero", base + "data_key_reuse:\n  max_data_keys_per_version: 0\n", "data_key_reuse.max_data_keys_per_version", "max_data_keys_per_version: 0", "out of range 1..4294967296"},
		{"data keys per version over 2^32", base + "data_key_reuse:\n  max_data_keys_per_version: 4294967297\n", "data_key_reuse.max_data_keys_per_version", "max_data_keys_per_version", "out of range"},
		{"request bytes small", base + "limits:\n  max_request_bytes: 1024\n", "limits.max_request_bytes", "max_request_bytes", "1024 (1 KiB) is below the minimum 65536 (64 KiB)"},
		{"request bytes big", base + "limits:\n  max_request_bytes: 67108865\n", "limits.max_request_bytes", "max_request_bytes", "above the maximum 67108864 (64 MiB)"},
		{"shutdown zero", base + "shutdown_timeout: 0s\n", "shutdown_timeout", "shutdown_timeout", "below the minimum 1s"},
		{"shutdown long", base + "shutdown_timeout: 11m\n", "shutdown_timeout", "shutdown_timeout", "11m is above the maximum 10m"},
		{"log level case", edit(t, "level: info", "level: INFO"), "log.level", "level: INFO", `"INFO" is not one of debug, info, warn, error`},
		{"log format", base + "  format: xml\n", "log.format", "format: xml", `"xml" is not one of json, text`},

		// Backends.
		{"no backends", edit(t, "backends:\n  - name: hsm\n    uri: \"pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"\n  - name: soft\n    uri: \"softkms:path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek\"\ndefault_root_keys:\n  derive: \"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"\n  wrap: \"softkms:root-aes\"\n", ""), "backends", "", "at least one backend"},
		{"empty backend list", edit(t, "backends:\n  - name: hsm\n    uri: \"pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"\n  - name: soft\n    uri: \"softkms:path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek\"\ndefault_root_keys:\n  derive: \"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"\n  wrap: \"softkms:root-aes\"\n", "backends: []\n"), "backends", "backends: []", "at least one backend"},
		{"duplicate backend name", edit(t, "- name: soft", "- name: hsm"), "backends[1].name", "- name: hsm\n    uri: \"softkms", `"hsm" is already the name of backends[0]`},
		{"bad backend name", edit(t, "- name: soft", "- name: soft kms"), "backends[1].name", "soft kms", "is not 1-64 letters"},
		{"backend without uri", edit(t, "    uri: \"softkms:path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek\"\n", ""), "backends[1].uri", "- name: soft", "required"},
		{"bad backend URI", edit(t, "kek-source=/etc/keybroker/kek", "kek-source=etc/kek"), "backends[1].uri", "kek-source=etc/kek", "kek-source \"etc/kek\" is not an absolute path"},
		{"unknown scheme", edit(t, "uri: \"softkms:", "uri: \"vault:"), "backends[1].uri", "vault:", `unknown scheme "vault"`},
		{"same backend twice", edit(t, "uri: \"softkms:path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek\"", "uri: \"pkcs11:token=kb;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\""), "backends[1].uri", "object=x", `opens the same backend as backends[0] ("hsm")`},

		// Root keys.
		{"root key names no key", edit(t, "wrap: \"softkms:root-aes\"", "wrap: \"softkms:\""), "default_root_keys.wrap", "wrap:", "names a backend but no key"},
		{"root key pkcs11 without token", edit(t, "derive: \"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"", "derive: \"pkcs11:object=root-prf\""), "default_root_keys.derive", "derive:", "no token selected"},
		{"root key pkcs11 other module", edit(t, "derive: \"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin\"", "derive: \"pkcs11:token=kb;object=root-prf?module-path=/opt/other.so\""), "default_root_keys.derive", "derive:", "disagree with backends[0].uri's"},
		{"root key other token", edit(t, "derive: \"pkcs11:token=kb;object=root-prf", "derive: \"pkcs11:token=other;object=root-prf"), "default_root_keys.derive", "derive:", "disagree with backends[0].uri's"},
		{"root key ambiguous", edit(t, "  - name: soft\n", "  - name: soft2\n    uri: \"softkms:path=/other.json;kek-source=/etc/keybroker/kek\"\n  - name: soft\n"), "default_root_keys.wrap", "wrap:", "could be in backends[1] or backends[2]: give the connection attributes of one"},
		{"root key in neither", strings.Replace(edit(t, "  - name: soft\n", "  - name: soft2\n    uri: \"softkms:path=/other.json\"\n  - name: soft\n"), "wrap: \"softkms:root-aes\"", "wrap: \"softkms:root-aes;path=/third.json\"", 1), "default_root_keys.wrap", "wrap:", "its connection attributes (softkms:path=/third.json) disagree with those of every one of backends[1], backends[2]"},
		{"root key unconfigured scheme", edit(t, "wrap: \"softkms:root-aes\"", "wrap: \"awskms:key-id=alias/kb;region=eu-west-1\""), "default_root_keys.wrap", "wrap:", "scheme awskms is not that of any configured backend (configured: pkcs11, softkms)"},
		{"root key garbage", edit(t, "wrap: \"softkms:root-aes\"", "wrap: root-aes"), "default_root_keys.wrap", "wrap:", "missing scheme"},

		// Root key roles.
		{"root key in two roles", base + rootDecl + "  - uri: \"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so\"\n    role: backend\n", "root_keys[2].uri", "object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so\"\n    role: backend", "names the key root_keys[0] declares (derive \"pkcs11:token=kb;object=root-prf\"): a root key has one role"},
		{"root key declared twice", base + rootDecl + "  - uri: \"softkms:root-aes;path=/var/lib/keybroker/softkms.json\"\n    role: wrap\n", "root_keys[2].uri", "softkms:root-aes;path=", "names the key root_keys[1] declares"},
		{"one default for two modes", edit(t, "wrap: \"softkms:root-aes\"", "wrap: \"pkcs11:token=kb;object=root-prf\""), "default_root_keys.wrap", "wrap:", "names the key default_root_keys.derive names: a root key has one role"},
		{"default not declared", base + "root_keys:\n  - uri: \"pkcs11:token=kb;object=root-prf\"\n    role: derive\n", "default_root_keys.wrap", "wrap:", `"softkms:root-aes" is not declared in root_keys`},
		{"default in another role", base + "root_keys:\n  - uri: \"pkcs11:token=kb;object=root-prf\"\n    role: derive\n  - uri: \"softkms:root-aes\"\n    role: backend\n", "default_root_keys.wrap", "wrap:", "names root_keys[1], declared with role backend, not wrap"},
		{"unknown role", base + "root_keys:\n  - uri: \"softkms:root-aes\"\n    role: prf\n", "root_keys[0].role", "role: prf", `"prf" is not derive, wrap or backend`},
		{"missing role", base + "root_keys:\n  - uri: \"softkms:root-aes\"\n", "root_keys[0].role", "- uri: \"softkms:root-aes\"", "required: derive, wrap or backend"},
		{"unknown type", base + rootDecl + "  - uri: \"softkms:sign\"\n    role: backend\n    types: [rsa-2048]\n", "root_keys[2].types[0]", "rsa-2048", `"rsa-2048" is not aes-256-gcm`},
		{"repeated type", base + rootDecl + "  - uri: \"softkms:sign\"\n    role: backend\n    types: [ed25519, ed25519]\n", "root_keys[2].types[1]", "types: [ed25519, ed25519]", `"ed25519" is repeated`},
		{"root key undeclared backend", base + rootDecl + "  - uri: \"awskms:key-id=alias/kb;region=eu-west-1\"\n    role: backend\n", "root_keys[2].uri", "awskms:key-id", "scheme awskms is not that of any configured backend"},

		// Required fields.
		{"missing node_id", edit(t, "node_id: central-1\n", ""), "node_id", "", "required"},
		{"missing tls.key", edit(t, "  key: central.key\n", ""), "tls.key", "tls:", "required"},
		{"missing tls", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", ""), "tls.ca", "", "required"},

		// Identity source: the TLS files or a Workload API agent, exactly one.
		{"neither tls nor spiffe", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", ""), "tls", "", "no identity: give tls.ca, tls.cert and tls.key, or spiffe.socket"},
		{"both tls and spiffe", edit(t, "tls:\n", "spiffe:\n  socket: unix:///run/spire/agent.sock\ntls:\n"), "spiffe", "spiffe:", "both spiffe and tls.ca/tls.cert/tls.key are given"},
		{"spiffe without socket", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  id: spiffe://kb.example/central/central-1\n"), "spiffe.socket", "spiffe:", "required"},
		{"spiffe tcp socket", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: tcp://127.0.0.1:8081\n"), "spiffe.socket", "socket:", "neither unix:///absolute/path nor an absolute path"},
		{"spiffe relative socket", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: agent.sock\n"), "spiffe.socket", "socket:", "neither unix:///absolute/path nor an absolute path"},
		{"spiffe socket with host", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: unix://host/agent.sock\n"), "spiffe.socket", "socket:", "neither unix:///absolute/path"},
		{"spiffe socket with query", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: unix:///a.sock?x=1\n"), "spiffe.socket", "socket:", "a.sock?x=1"},
		{"spiffe id of another node", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: /run/spire/agent.sock\n  id: spiffe://kb.example/central/central-2\n"), "spiffe.id", "  id: spiffe", "is not this node's id spiffe://kb.example/central/central-1"},
		{"spiffe id not keybroker's", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: /run/spire/agent.sock\n  id: spiffe://kb.example/ns/prod/sa/kms\n"), "spiffe.id", "  id: spiffe", "kb.example/ns/prod/sa/kms"},
		{"spiffe timeout too short", edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: /run/spire/agent.sock\n  timeout: 1ms\n"), "spiffe.timeout", "timeout: 1ms", "1ms"},
		{"missing data_dir", edit(t, "data_dir: /var/lib/keybroker\n", ""), "data_dir", "", "required"},
		{"missing policy paths", edit(t, "  paths: [policy/]\n", ""), "policy.paths", "policy:", "at least one policy"},
		{"duplicate policy path", edit(t, "paths: [policy/]", "paths: [policy/, ./policy]"), "policy.paths[1]", "paths:", "is already policy.paths[0]"},
		{"empty string path", edit(t, "  cert: central.pem", "  cert: \"\""), "tls.cert", "cert:", "required"},
		{"control character in path", edit(t, "  cert: central.pem", "  cert: \"central\\x01.pem\""), "tls.cert", "cert:", "control character"},

		// Names and addresses.
		{"node_id leading dash", edit(t, "node_id: central-1", "node_id: -central"), "node_id", "node_id", "is not 1-64 letters"},
		{"node_id too long", edit(t, "node_id: central-1", "node_id: "+strings.Repeat("n", 65)), "node_id", "node_id", "is not 1-64 letters"},
		{"trust domain upper case", edit(t, "trust_domain: kb.example", "trust_domain: KB.example"), "trust_domain", "trust_domain", "is not a trust domain"},
		{"trust domain with path", edit(t, "trust_domain: kb.example", "trust_domain: kb.example/x"), "trust_domain", "trust_domain", "is not a trust domain"},
		{"trust domain with port", edit(t, "trust_domain: kb.example", "trust_domain: \"kb.example:1\""), "trust_domain", "trust_domain", "is not a trust domain"},
		{"trust domain escaped", edit(t, "trust_domain: kb.example", "trust_domain: kb%2eexample"), "trust_domain", "trust_domain", "is not a trust domain"},
		{"listen without port", edit(t, "listen: 127.0.0.1:7443", "listen: 127.0.0.1"), "listen", "listen:", "is not host:port"},
		{"listen port leading zero", edit(t, "listen: 127.0.0.1:7443", "listen: 127.0.0.1:07443"), "listen", "listen:", `port "07443" is not a number 0..65535`},
		{"listen port name", edit(t, "listen: 127.0.0.1:7443", "listen: 127.0.0.1:https"), "listen", "listen:", "is not a number"},
		{"listen port too big", edit(t, "listen: 127.0.0.1:7443", "listen: 127.0.0.1:65536"), "listen", "listen:", "is not a number"},
		{"listen bad ip", edit(t, "listen: 127.0.0.1:7443", "listen: 999.0.0.1:7443"), "listen", "listen:", "is not an IP address or DNS name"},
		{"listen bad host", edit(t, "listen: 127.0.0.1:7443", "listen: kb_central:7443"), "listen", "listen:", "is not an IP address or DNS name"},
		{"ops on listen port", edit(t, "ops_listen: 127.0.0.1:7080", "ops_listen: 127.0.0.1:7443"), "ops_listen", "ops_listen:", "overlaps listen"},
		{"wildcard listen, no advertise", edit(t, "listen: 127.0.0.1:7443", "listen: \"0.0.0.0:7443\""), "advertise_address", "", "required when listen"},
		{"advertise a wildcard", edit(t, "ops_listen: 127.0.0.1:7080", "ops_listen: 127.0.0.1:7080\nadvertise_address: \":7443\""), "advertise_address", "advertise_address:", "peers can dial"},
		{"ops wildcard overlap", edit(t, "ops_listen: 127.0.0.1:7080", "ops_listen: \":7443\""), "ops_listen", "ops_listen:", "overlaps listen"},
		{"missing ops_listen", edit(t, "ops_listen: 127.0.0.1:7080\n", ""), "ops_listen", "", "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseCentral("central.yaml", []byte(tc.yaml), "/etc/keybroker")
			if err == nil {
				t.Fatalf("ParseCentral accepted it: %+v", c)
			}
			line := 0
			if tc.at != "" {
				i := strings.Index(tc.yaml, tc.at)
				if i < 0 {
					t.Fatalf("test case: %q is not in the config", tc.at)
				}
				line = strings.Count(tc.yaml[:i], "\n") + 1
			}
			errs := errorsOf(t, err)
			for _, e := range errs {
				if e.Field == tc.field && e.Line == line && strings.Contains(e.Error(), tc.msg) {
					if e.File != "central.yaml" || !strings.HasPrefix(e.Error(), "central.yaml: ") {
						t.Errorf("error %q does not name the file", e)
					}
					if tc.field != "" && !strings.HasPrefix(e.Error(), "central.yaml: "+tc.field+": ") {
						t.Errorf("error %q does not start with file and field", e)
					}
					return
				}
			}
			t.Errorf("got errors:\n%v\nwant one for field %q at line %d containing %q", err, tc.field, line, tc.msg)
		})
	}
}

func TestAllProblemsAtOnce(t *testing.T) {
	cfg := strings.NewReplacer(
		"node_id: central-1", "node_id: -x",
		"listen: 127.0.0.1:7443", "listen: 127.0.0.1",
		"reload_interval: 10s", "reload_interval: 1ms",
		"level: info", "level: loud",
	).Replace(base)
	_, err := ParseCentral("central.yaml", []byte(cfg), "/")
	errs := errorsOf(t, err)
	var fields []string
	for _, e := range errs {
		fields = append(fields, e.Field)
	}
	want := []string{"node_id", "listen", "policy.reload_interval", "log.level"}
	if diff := cmp.Diff(want, fields); diff != "" {
		t.Errorf("fields in errors, in line order (-want +got):\n%s", diff)
	}

	// Decoding problems are all reported at once too.
	cfg = strings.NewReplacer(
		"node_id: central-1", "node_ID: central-1",
		"reload_interval: 10s", "reload_interval: 10",
		"level: info", "level: [info]",
	).Replace(base)
	_, err = ParseCentral("central.yaml", []byte(cfg), "/")
	if n := len(errorsOf(t, err)); n != 3 {
		t.Errorf("got %d errors, want 3:\n%v", n, err)
	}
}

func TestProblemsAreBounded(t *testing.T) {
	var b strings.Builder
	for i := range 500 {
		b.WriteString("unknown" + strconv.Itoa(i) + ": x\n")
	}
	_, err := ParseCentral("c.yaml", []byte(b.String()), "/")
	errs := errorsOf(t, err)
	if len(errs) != maxProblems+1 || errs[maxProblems].Error() != "c.yaml: 400 more problems not shown" {
		t.Errorf("got %d errors, the last %q; want %d and a count of the rest", len(errs), errs[len(errs)-1], maxProblems+1)
	}
}

func TestNoSecretInErrors(t *testing.T) {
	const pin = "s3cr3t-1234"
	for _, cfg := range []string{
		edit(t, "uri: \"softkms:", "uri: \"pkcs11:token=kb?pin-value="+pin+"&x=\"\n    #softkms:"),
		edit(t, "wrap: \"softkms:root-aes\"", "wrap: \"pkcs11:token=kb;object=a?pin-value="+pin+"\""),
		edit(t, "wrap: \"softkms:root-aes\"", "wrap: \"pkcs11:token=kb;object=a?module-path=/m&pin-value="+pin+strings.Repeat("x", 300)+"\""),
	} {
		_, err := ParseCentral("central.yaml", []byte(cfg), "/")
		if err == nil {
			t.Fatal("a pin-value was accepted")
		}
		if strings.Contains(err.Error(), pin) {
			t.Errorf("error repeats the PIN: %v", err)
		}
		if !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("error %v is not backends.ErrInvalidArgument", err)
		}
	}
}

func TestLoadCentral(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "central.yaml")
	if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCentral(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "ca.pem"); c.TLS.CA != want {
		t.Errorf("tls.ca = %q, want %q (relative to the file)", c.TLS.CA, want)
	}

	// Relative to the file, also when the file is named relatively.
	t.Chdir(dir)
	if err := os.Mkdir("sub", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("sub", "c.yaml"), []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = LoadCentral(filepath.Join("sub", "c.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "sub", "ca.pem"); c.TLS.CA != want {
		t.Errorf("tls.ca = %q, want %q", c.TLS.CA, want)
	}

	for name, data := range map[string]string{
		"bad.yaml":  edit(t, "reload_interval: 10s", "reload_interval: 500ms"),
		"huge.yaml": base + "#" + strings.Repeat("x", MaxFileSize),
	} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadCentral(name)
		if err == nil || !strings.HasPrefix(err.Error(), name+": ") {
			t.Errorf("LoadCentral(%q) = %v, want an error naming the file", name, err)
		}
	}
	_, err = LoadCentral("bad.yaml")
	if want := "bad.yaml: policy.reload_interval: 500ms is below the minimum 1s; 0s disables polling (line 20)"; err == nil || err.Error() != want {
		t.Errorf("LoadCentral error = %v, want %q", err, want)
	}
	_, err = LoadCentral("missing.yaml")
	if err == nil || err.Error() != "missing.yaml: no such file or directory" || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadCentral(missing) = %v, want %q (and os.ErrNotExist)", err, "missing.yaml: no such file or directory")
	}
}

func TestValidateInCode(t *testing.T) {
	c := DefaultCentral()
	c.NodeID, c.TrustDomain, c.Listen, c.OpsListen = "central-1", "kb.example", "127.0.0.1:7443", "127.0.0.1:7080"
	c.TLS = TLS{CA: "ca.pem", Cert: "c.pem", Key: "c.key"}
	c.DataDir = "data"
	c.Backends = []Backend{{Name: "soft", URI: "softkms:path=/k.json;kek-source=/kek"}}
	c.Policy.Paths = []string{"policy"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "audit.path: empty: ResolvePaths") {
		t.Errorf("Validate before ResolvePaths = %v, want the audit path reported", err)
	}
	c.ResolvePaths("/etc/kb")
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}

	// The zero value reports every required field, without a file name.
	var zero Central
	err := zero.Validate()
	var fields []string
	for _, e := range errorsOf(t, err) {
		if e.File != "" || e.Line != 0 {
			t.Errorf("error %q has a file or line", e)
		}
		fields = append(fields, e.Field)
	}
	for _, f := range []string{"node_id", "trust_domain", "listen", "ops_listen", "tls.ca", "tls.cert", "tls.key", "data_dir", "backends", "policy.paths", "audit.flush_interval", "material_cache.size", "log.level", "shutdown_timeout"} {
		if !strings.Contains(err.Error(), f+": ") {
			t.Errorf("zero Central: no error for %s; got %v", f, fields)
		}
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Field != "node_id" {
		t.Errorf("errors.As(err, *Error) = %v, want the node_id error first", ce)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"ca.pem", "central.pem", "central.key", "policy/a.cedar", "extra.cedar", "notes.txt"} {
		write(f, "x")
	}
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("data_dir: /var/lib/keybroker", "data_dir: data", "paths: [policy/]", "paths: [policy/, extra.cedar]").Replace(base)
	c, err := ParseCentral("c.yaml", []byte(cfg), dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check(); err != nil {
		t.Fatalf("Check() = %v", err)
	}
	// The node creates data_dir, and the default audit log in it.
	fresh := *c
	fresh.DataDir = filepath.Join(dir, "new", "data")
	fresh.Audit.Path = ""
	fresh.ResolvePaths(dir)
	if err := fresh.Check(); err != nil {
		t.Errorf("Check() with a data_dir still to be created = %v", err)
	}

	bad := *c
	bad.TLS.Key = filepath.Join(dir, "missing.key")
	bad.TLS.CA = dir
	bad.DataDir = filepath.Join(dir, "ca.pem")
	bad.Policy.Paths = []string{filepath.Join(dir, "notes.txt"), filepath.Join(dir, "nope")}
	bad.Audit.Path = filepath.Join(dir, "nodir", "audit.jsonl")
	err = bad.Check()
	want := map[string]string{
		"tls.key":         "no such file",
		"tls.ca":          "is not a regular file",
		"data_dir":        "is not a directory",
		"policy.paths[0]": "neither a directory nor a .cedar file",
		"policy.paths[1]": "no such file",
		"audit.path":      "no such file",
	}
	got := map[string]string{}
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

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	l := Log{Level: "warn", Format: "text"}.NewLogger(&buf)
	l.Info("hidden")
	l.Warn("shown", "k", "v")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, "level=WARN msg=shown k=v") {
		t.Errorf("text logger at warn wrote %q", got)
	}
	buf.Reset()
	Log{Level: "debug", Format: "json"}.NewLogger(&buf).Debug("d")
	if got := buf.String(); !strings.Contains(got, `"level":"DEBUG","msg":"d"`) {
		t.Errorf("json logger at debug wrote %q", got)
	}
	if got := (Log{Level: "error"}).SlogLevel(); got != slog.LevelError {
		t.Errorf("SlogLevel(error) = %v", got)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "c.yaml", Line: 3, Field: "tls.ca", Err: errors.New("bad")}, "c.yaml: tls.ca: bad (line 3)"},
		{Error{File: "c.yaml", Line: 3, Err: errors.New("bad")}, "c.yaml: line 3: bad"},
		{Error{File: "c.yaml", Field: "tls.ca", Err: errors.New("bad")}, "c.yaml: tls.ca: bad"},
		{Error{Field: "tls.ca", Err: errors.New("bad")}, "tls.ca: bad"},
		{Error{}, "invalid"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// TestSPIFFEIdentity loads a node whose identity comes from a Workload
// API agent: no tls.ca, tls.cert or tls.key, the revocation files kept,
// the wait defaulted, and Check not asking for the TLS files.
func TestSPIFFEIdentity(t *testing.T) {
	dir := t.TempDir()
	deny := filepath.Join(dir, "deny.txt")
	if err := os.WriteFile(deny, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := edit(t, "tls:\n  ca: ca.pem\n  cert: central.pem\n  key: central.key\n", "spiffe:\n  socket: /run/spire/agent.sock\ntls:\n  deny: deny.txt\n")
	c, err := ParseCentral("central.yaml", []byte(doc), dir)
	if err != nil {
		t.Fatalf("ParseCentral: %v", err)
	}
	want := SPIFFE{Socket: "/run/spire/agent.sock", Timeout: DefaultSPIFFETimeout}
	if diff := cmp.Diff(want, c.SPIFFE); diff != "" {
		t.Errorf("spiffe (-want +got):\n%s", diff)
	}
	if c.TLS.Deny != deny || c.TLS.CA != "" {
		t.Errorf("tls = %+v, want deny %s and no files", c.TLS, deny)
	}
	var p problems
	c.TLS.stat(&p, "tls", !c.SPIFFE.Enabled())
	if len(p) != 0 {
		t.Errorf("stat of a spiffe node's tls: %v, want nothing (no tls files named)", p.join("", nil))
	}
}
