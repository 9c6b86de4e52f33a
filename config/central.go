package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/managed"
)

// Central is the configuration of keybroker's central process
// (keybroker central --config central.yaml). The zero value is not
// useful: start from DefaultCentral, or load a file with LoadCentral.
type Central struct {
	// Node holds what central and edge nodes configure alike: node_id,
	// trust_domain, listen, advertise_address, ops_listen, ops, tls,
	// spiffe (the SVID must be spiffe://<trust_domain>/central/<node_id>),
	// data_dir (the key registry, registry.db), audit, material_cache,
	// data_key_reuse, limits, log and shutdown_timeout.
	Node `yaml:",inline"`
	// Backends are the roots of trust opened at start. At least one;
	// names unique, and no two may open the same backend.
	Backends []Backend `yaml:"backends"`
	// RootKeys declares every root key new managed keys may use, each
	// with its one role; CreateKey refuses any other. Optional: when
	// empty, each default_root_keys entry is declared with the role of its
	// mode (every type), the migration for configurations made before
	// roles. Each must name a key in exactly one configured backend, and
	// no key may be declared twice (a root key has one role).
	RootKeys []RootKey `yaml:"root_keys,omitempty"`
	// DefaultRootKeys name the root keys CreateKey uses when a request
	// names none. Optional; each unset mode then needs a root key in every
	// CreateKey request. With root_keys set, each must be declared there
	// with the role of its mode.
	DefaultRootKeys RootKeys `yaml:"default_root_keys"`
	// Policy says where the Cedar policies are and how often they are
	// re-read. Required (policy.paths).
	Policy Policy `yaml:"policy"`
	// Edges configures how this node keeps track of the edges connected to
	// it. Optional.
	Edges Edges `yaml:"edges"`
	// BackendBudget bounds each principal's calls to the roots of trust.
	// Optional.
	BackendBudget BackendBudget `yaml:"backend_budget"`
	// Store says where the key registry lives. Optional: by default the
	// bbolt file <data_dir>/registry.db; store.etcd shares it between
	// central nodes.
	Store Store `yaml:"store"`
	// AWSKMS serves the AWS KMS JSON API on a listener of its own.
	// Optional.
	AWSKMS *AWSKMS `yaml:"aws_kms,omitempty"`
	// XKS serves the AWS KMS External Key Store proxy API on a listener
	// of its own. Optional.
	XKS *XKS `yaml:"xks,omitempty"`
}

// BackendBudget is a token bucket per principal, charged for every call to
// a root of trust made on the principal's behalf — a client's, an admin's,
// an edge's material fetches — so that one caller cannot drain a shared
// cloud quota or HSM. A call beyond it is refused with ResourceExhausted
// and audited. Data keys that just failed to unwrap are refused from
// memory and cost nothing.
type BackendBudget struct {
	// Rate is the calls a second each principal may make on average.
	// Default 500, range 1..1000000.
	Rate int `yaml:"rate"`
	// Burst is the calls a principal may make at once. Default 1000,
	// range 1..1000000.
	Burst int `yaml:"burst"`
	// MaxPrincipals bounds the principals tracked; the one seen least
	// recently is forgotten first (and starts afresh). Default 10000,
	// range 1..10000000.
	MaxPrincipals int `yaml:"max_principals"`
	// EdgeRate is the calls a second each edge may make on average,
	// instead of Rate: an edge's calls derive the material it holds — one
	// per key version, sealed once per Watch stream — so a prefetching
	// edge of N keys makes N calls when it first synchronises, where a
	// client's budget is meant for requests. Default 20000, range
	// 1..1000000; lower it on a metered or slow root of trust (a new
	// prefetching edge then fills at this rate).
	EdgeRate int `yaml:"edge_rate"`
	// EdgeBurst is the calls an edge may make at once. Default 20000,
	// range 1..1000000.
	EdgeBurst int `yaml:"edge_burst"`
}

func (b BackendBudget) check(p *problems, field string) {
	checkInt(p, field+".rate", int64(b.Rate), 1, 1_000_000, "")
	checkInt(p, field+".burst", int64(b.Burst), 1, 1_000_000, "")
	checkInt(p, field+".max_principals", int64(b.MaxPrincipals), 1, 10_000_000, "")
	checkInt(p, field+".edge_rate", int64(b.EdgeRate), 1, 1_000_000, "")
	checkInt(p, field+".edge_burst", int64(b.EdgeBurst), 1, 1_000_000, "")
}

// Edges says how the central tier keeps track of connected edges. An
// edge holds a lease while its Watch stream is open; each heartbeat on the
// stream extends it. An edge whose lease has run out is no longer offered
// by LookupKey, and stops serving from cached material once it is also
// past its own max_staleness.
type Edges struct {
	// Lease is how long an edge's lease lasts past its last heartbeat.
	// Default 30s, range 1s..10m.
	Lease time.Duration `yaml:"lease"`
	// Heartbeat is how often a Watch stream carries a heartbeat extending
	// the edge's lease. Default 0s, meaning a third of Lease; when not 0s,
	// range 100ms..Lease/2, so that a heartbeat can be late once without
	// the lease running out.
	Heartbeat time.Duration `yaml:"heartbeat"`
}

// HeartbeatInterval returns Heartbeat, or a third of Lease when Heartbeat
// is 0.
func (e Edges) HeartbeatInterval() time.Duration {
	if e.Heartbeat > 0 {
		return e.Heartbeat
	}
	return e.Lease / 3
}

func (e Edges) check(p *problems, field string) {
	checkDuration(p, field+".lease", e.Lease, MinEdgeLease, MaxEdgeLease)
	leaseOK := e.Lease >= MinEdgeLease && e.Lease <= MaxEdgeLease
	switch h := e.Heartbeat; {
	case h == 0:
	case h < 0:
		p.add(field+".heartbeat", "%s is negative; 0s means a third of the lease", formatDuration(h))
	case h < MinEdgeHeartbeat:
		p.add(field+".heartbeat", "%s is below the minimum %s; 0s means a third of the lease", formatDuration(h), formatDuration(MinEdgeHeartbeat))
	case leaseOK && h > e.Lease/2:
		p.add(field+".heartbeat", "%s is above half of %s.lease (%s): a heartbeat must be able to come late once without the lease running out", formatDuration(h), field, formatDuration(e.Lease))
	}
}

// Backend is one root of trust.
type Backend struct {
	// Name identifies the backend in logs, metrics and audit records.
	// Required; 1-64 letters, digits, '.', '_' or '-', starting with a
	// letter or digit; unique.
	Name string `yaml:"name"`
	// URI opens the backend: a pkcs11:, awskms:, gcpkms: or softkms: URI
	// as backends.ParseKeyURI accepts it, with or without a key. Secrets
	// are named by file (pin-source, kek-source, passphrase-source), never
	// given inline. Required.
	URI string `yaml:"uri"`
}

// RootKey declares a root key and its role.
type RootKey struct {
	// URI names the key, as default_root_keys entries do. CreateKey
	// stores this spelling, and Cedar policies see it as resource.root.
	// Required.
	URI string `yaml:"uri"`
	// Role is what the key is for: derive (the HMAC PRF of derive-mode
	// keys), wrap (the encryption key that wraps wrap-mode material) or
	// backend (performs the operations of backend-mode keys). Required.
	Role managed.Role `yaml:"role"`
	// Types restricts the managed key types (aes-256-gcm, hmac-sha256,
	// ecdsa-p256, ed25519) the key may serve. Optional: empty means every
	// type.
	Types []string `yaml:"types,omitempty"`
}

// DeclaredRootKeys returns root_keys, or when it is empty the declaration
// default_root_keys implies: each default with the role of its mode.
func (c *Central) DeclaredRootKeys() []RootKey {
	if len(c.RootKeys) > 0 {
		return c.RootKeys
	}
	var out []RootKey
	for _, d := range c.DefaultRootKeys.byRole() {
		if d.uri != "" {
			out = append(out, RootKey{URI: d.uri, Role: d.role})
		}
	}
	return out
}

type defaultRoot struct {
	field string
	role  managed.Role
	uri   string
}

func (r RootKeys) byRole() []defaultRoot {
	return []defaultRoot{
		{"default_root_keys.derive", managed.RoleDerive, r.Derive},
		{"default_root_keys.wrap", managed.RoleWrap, r.Wrap},
		{"default_root_keys.backend", managed.RoleBackend, r.Backend},
	}
}

// RootKeys name a default root key per material mode. Each is a key URI
// that names a key in exactly one configured backend: either it repeats
// that backend URI's connection attributes, or it gives none and only one
// backend has its scheme (softkms:root-1).
type RootKeys struct {
	// Derive is the root of derive-mode keys: an HMAC key the backend
	// computes the material PRF with. Optional.
	Derive string `yaml:"derive"`
	// Wrap is the root of wrap-mode keys: an encryption key the backend
	// wraps random material with. Optional.
	Wrap string `yaml:"wrap"`
	// Backend is the root of backend-mode keys, whose operations all run
	// in the backend. Optional.
	Backend string `yaml:"backend"`
}

// Policy locates the Cedar policies.
type Policy struct {
	// Paths are Cedar policy files and directories; a directory
	// contributes every *.cedar file in it. Required; at least one.
	Paths []string `yaml:"paths"`
	// ReloadInterval is how often the files are checked for changes; a
	// policy that fails to load is refused and the previous one stays in
	// force. 0s disables polling (SIGHUP still reloads). Default 10s; at
	// least 1s when not 0s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// Central defaults and bounds not shared with other nodes.
const (
	DefaultReloadInterval = 10 * time.Second
	MinReloadInterval     = time.Second
	DefaultEdgeLease      = 30 * time.Second
	MinEdgeLease          = time.Second
	MaxEdgeLease          = 10 * time.Minute
	MinEdgeHeartbeat      = 100 * time.Millisecond
)

// DefaultCentral returns a configuration holding every default; the
// required fields are empty. audit.path is left empty because its default
// depends on data_dir: ResolvePaths fills it.
func DefaultCentral() Central {
	return Central{
		Node:   defaultNode(),
		Policy: Policy{ReloadInterval: DefaultReloadInterval},
		Edges:  Edges{Lease: DefaultEdgeLease},
		BackendBudget: BackendBudget{Rate: budget.DefaultRate, Burst: budget.DefaultBurst, MaxPrincipals: budget.DefaultMaxPrincipals,
			EdgeRate: budget.DefaultEdgeRate, EdgeBurst: budget.DefaultEdgeBurst},
	}
}

// LoadCentral reads, decodes and validates the central configuration in
// path. Relative paths in it are resolved against the file's directory.
// Every error is an *Error naming the file, and the line and field where
// known; all problems are reported together (errors.Join).
func LoadCentral(path string) (*Central, error) {
	data, dir, err := readConfig(path)
	if err != nil {
		return nil, err
	}
	return ParseCentral(path, data, dir)
}

// ParseCentral is LoadCentral on data already read: name is used in
// errors, and baseDir is the directory relative paths are resolved against
// ("" leaves them relative to the working directory).
//
// Decoding is strict: unknown or repeated fields, values of the wrong
// type, null values, YAML aliases, more than one document and input over
// MaxFileSize are errors. Fields left out take their defaults.
func ParseCentral(name string, data []byte, baseDir string) (*Central, error) {
	return parse(name, data, baseDir, DefaultCentral())
}

// nodeConfig is a node's configuration file: central or edge.
type nodeConfig[T any] interface {
	*T
	ResolvePaths(baseDir string)
	validate() problems
}

// parse decodes data over the defaults cfg, resolves its paths against
// baseDir and validates it.
func parse[T any, P nodeConfig[T]](name string, data []byte, baseDir string, cfg T) (*T, error) {
	lines, probs := decode(data, &cfg)
	if len(probs) > 0 {
		return nil, probs.join(name, lines)
	}
	P(&cfg).ResolvePaths(baseDir)
	if probs := P(&cfg).validate(); len(probs) > 0 {
		return nil, probs.join(name, lines)
	}
	return &cfg, nil
}

// ResolvePaths makes the relative paths in c (tls, data_dir, policy.paths,
// audit.path) absolute against baseDir, and sets audit.path to
// <data_dir>/audit.jsonl when it is empty. It is idempotent. ParseCentral
// calls it; a configuration built in code calls it before Validate.
func (c *Central) ResolvePaths(baseDir string) {
	c.Node.resolve(baseDir)
	c.Store.resolve(baseDir)
	c.AWSKMS.resolve(baseDir)
	c.XKS.resolve(baseDir)
	for i := range c.Policy.Paths {
		resolvePath(baseDir, &c.Policy.Paths[i])
	}
}

// Validate checks every field and the relations between them, and returns
// every problem found, joined; each is an *Error naming its field. It does
// not touch the file system: see Check.
func (c *Central) Validate() error {
	return c.validate().join("", nil)
}

func (c *Central) validate() problems {
	var p problems
	c.Node.check(&p, identity.Central)
	uris, allParsed := c.checkBackends(&p)
	if allParsed {
		c.checkRootKeys(&p, uris)
	}
	c.Policy.check(&p, "policy")
	c.Edges.check(&p, "edges")
	c.BackendBudget.check(&p, "backend_budget")
	c.Store.check(&p, "store")
	c.AWSKMS.check(&p, "aws_kms", c.Listen, c.OpsListen)
	others := map[string]string{"listen": c.Listen, "ops_listen": c.OpsListen}
	if c.AWSKMS != nil {
		others["aws_kms.listen"] = c.AWSKMS.Listen
	}
	c.XKS.check(&p, "xks", others)
	return p
}

// checkBackends parses the backend URIs; it returns them (nil where one
// did not parse) and whether all did (if not, root keys are not matched
// against them, which would only repeat the problem).
func (c *Central) checkBackends(p *problems) ([]backends.KeyURI, bool) {
	if len(c.Backends) == 0 {
		p.add("backends", "at least one backend is required")
	}
	uris := make([]backends.KeyURI, len(c.Backends))
	names := map[string]int{}
	conns := map[string]int{}
	allParsed := true
	for i, b := range c.Backends {
		f := fmt.Sprintf("backends[%d]", i)
		checkName(p, f+".name", b.Name)
		if j, dup := names[b.Name]; dup && b.Name != "" {
			p.add(f+".name", "%q is already the name of backends[%d]", b.Name, j)
		} else {
			names[b.Name] = i
		}
		if b.URI == "" {
			p.add(f+".uri", "required")
			allParsed = false
			continue
		}
		u, err := backends.ParseKeyURI(b.URI)
		if err != nil {
			p.at(0, f+".uri", uriError(b.URI, err))
			allParsed = false
			continue
		}
		uris[i] = u
		// Two entries for one backend would open a token or keystore
		// twice and make every root key in it ambiguous.
		if j, dup := conns[u.BackendURI()]; dup {
			p.add(f+".uri", "opens the same backend as backends[%d] (%q); configure each root of trust once", j, c.Backends[j].Name)
		} else {
			conns[u.BackendURI()] = i
		}
	}
	return uris, allParsed
}

// rootKeyID names a root key exactly: the backend holding it and its name
// there, whatever spelling its URI has.
type rootKeyID struct {
	backend int
	key     string
}

// checkRootKeys checks the root key declarations and the defaults: each
// names a key in exactly one configured backend (matchRootKey), no key is
// declared twice, roles and types are known, and each default is declared
// with the role of its mode.
func (c *Central) checkRootKeys(p *problems, uris []backends.KeyURI) {
	declared := map[rootKeyID]int{}
	for i, rk := range c.RootKeys {
		f := fmt.Sprintf("root_keys[%d]", i)
		switch rk.Role {
		case managed.RoleDerive, managed.RoleWrap, managed.RoleBackend:
		case "":
			p.add(f+".role", "required: derive, wrap or backend")
		default:
			p.add(f+".role", "%q is not derive, wrap or backend", rk.Role)
		}
		seenType := map[string]bool{}
		for j, t := range rk.Types {
			switch {
			case !managed.KeyType(t).Valid():
				p.add(fmt.Sprintf("%s.types[%d]", f, j), "%q is not aes-256-gcm, hmac-sha256, ecdsa-p256 or ed25519", t)
			case seenType[t]:
				p.add(fmt.Sprintf("%s.types[%d]", f, j), "%q is repeated", t)
			}
			seenType[t] = true
		}
		if rk.URI == "" {
			p.add(f+".uri", "required")
			continue
		}
		id, ok := matchRootKey(p, f+".uri", rk.URI, uris)
		if !ok {
			continue
		}
		if j, dup := declared[id]; dup {
			p.add(f+".uri", "names the key root_keys[%d] declares (%s %q): a root key has one role", j, c.RootKeys[j].Role, c.RootKeys[j].URI)
			continue
		}
		declared[id] = i
	}
	implied := map[rootKeyID]string{}
	for _, d := range c.DefaultRootKeys.byRole() {
		if d.uri == "" {
			continue
		}
		id, ok := matchRootKey(p, d.field, d.uri, uris)
		if !ok {
			continue
		}
		if len(c.RootKeys) == 0 {
			// The legacy form: defaults declare themselves. One key as
			// the default of two modes would serve two roles.
			if other, dup := implied[id]; dup {
				p.add(d.field, "names the key %s names: a root key has one role; declare each root key once in root_keys", other)
			}
			implied[id] = d.field
			continue
		}
		j, ok := declared[id]
		switch {
		case !ok:
			p.add(d.field, "%q is not declared in root_keys", d.uri)
		case c.RootKeys[j].Role != d.role:
			p.add(d.field, "names root_keys[%d], declared with role %s, not %s", j, c.RootKeys[j].Role, d.role)
		}
	}
}

// matchRootKey checks that a root key URI names a key in exactly one
// configured backend, by the rule broker.Roots.Resolve applies when the
// key is used (backends.Holds: the connection attributes the key URI
// gives must agree with the backend's), and returns which. The central
// node resolves declared root keys at start too, but this is where a
// problem is named by its field.
func matchRootKey(p *problems, field, uri string, uris []backends.KeyURI) (rootKeyID, bool) {
	u, err := backends.ParseKeyURI(uri)
	if err != nil {
		p.at(0, field, uriError(uri, err))
		return rootKeyID{}, false
	}
	if u.Key() == "" {
		p.add(field, "names a backend but no key: add object= (pkcs11), key-id= (awskms), a cryptoKeys/ resource (gcpkms) or a key name (softkms)")
		return rootKeyID{}, false
	}
	var schemes, same []string
	var match []int
	for i, b := range uris {
		if !slices.Contains(schemes, b.Scheme()) {
			schemes = append(schemes, b.Scheme())
		}
		if b.Scheme() != u.Scheme() {
			continue
		}
		same = append(same, fmt.Sprintf("backends[%d]", i))
		if backends.Holds(b, u) {
			match = append(match, i)
		}
	}
	switch {
	case len(match) == 1:
		return rootKeyID{backend: match[0], key: u.Key()}, true
	case len(same) == 0:
		slices.Sort(schemes)
		p.add(field, "scheme %s is not that of any configured backend (configured: %s)", u.Scheme(), strings.Join(schemes, ", "))
	case len(match) == 0 && len(same) == 1:
		p.add(field, "its connection attributes (%s) disagree with %s.uri's", u.BackendURI(), same[0])
	case len(match) == 0:
		p.add(field, "its connection attributes (%s) disagree with those of every one of %s", u.BackendURI(), strings.Join(same, ", "))
	default:
		names := make([]string, len(match))
		for i, m := range match {
			names[i] = fmt.Sprintf("backends[%d]", m)
		}
		p.add(field, "could be in %s: give the connection attributes of one", strings.Join(names, " or "))
	}
	return rootKeyID{}, false
}

func (pol Policy) check(p *problems, field string) {
	if len(pol.Paths) == 0 {
		p.add(field+".paths", "at least one policy file or directory is required")
	}
	seen := map[string]int{}
	for i, path := range pol.Paths {
		f := fmt.Sprintf("%s.paths[%d]", field, i)
		checkPath(p, f, path)
		if j, dup := seen[path]; dup && path != "" {
			p.add(f, "%q is already %s.paths[%d]", path, field, j)
		} else {
			seen[path] = i
		}
	}
	switch d := pol.ReloadInterval; {
	case d < 0:
		p.add(field+".reload_interval", "%s is negative; 0s disables polling", formatDuration(d))
	case d > 0 && d < MinReloadInterval:
		p.add(field+".reload_interval", "%s is below the minimum %s; 0s disables polling", formatDuration(d), formatDuration(MinReloadInterval))
	}
}

// uriError is a URI parse error without the URI itself. The field path
// already says which URI, and a URI that fails to parse may hold what must
// not be repeated into logs (a pin-value, say). The cause stays reachable
// with errors.Is (backends.ErrInvalidArgument).
func uriError(uri string, err error) error {
	msg := err.Error()
	shown := uri
	if len(shown) > 200 { // as backends shortens it
		shown = shown[:200] + "..."
	}
	q := strconv.Quote(shown)
	i := strings.Index(msg, q)
	if i < 0 {
		// Not the form this expects: say less rather than risk echoing it.
		return &redacted{msg: "not a valid key URI", cause: err}
	}
	msg = strings.TrimSpace(msg[i+len(q):])
	msg = strings.TrimPrefix(msg, ": ")
	msg = strings.TrimSuffix(msg, ": "+backends.ErrInvalidArgument.Error())
	return &redacted{msg: msg, cause: err}
}

// redacted is an error whose message leaves out what its cause says.
type redacted struct {
	msg   string
	cause error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.cause }

// Check looks at the files the configuration names, after Validate: the
// TLS files are readable regular files, each policy path is a directory or
// a readable *.cedar file, data_dir is a directory if it exists (the node
// creates it), and audit.path's directory exists or is data_dir. It
// neither parses nor keeps what it reads. Every problem is an *Error
// naming its field, joined.
func (c *Central) Check() error {
	var p problems
	c.Node.stat(&p)
	for i, path := range c.Policy.Paths {
		f := fmt.Sprintf("policy.paths[%d]", i)
		st, err := os.Stat(path)
		switch {
		case err != nil:
			p.at(0, f, err)
		case st.IsDir():
		case filepath.Ext(path) != ".cedar":
			p.add(f, "%s is neither a directory nor a .cedar file", path)
		default:
			statFile(&p, f, path)
		}
	}
	return p.join("", nil)
}

// statFile checks that path is a regular file this process can open. It
// stats first, so that a FIFO is reported rather than blocking the open.
func statFile(p *problems, field, path string) {
	st, err := os.Stat(path)
	if err != nil {
		p.at(0, field, err)
		return
	}
	if !st.Mode().IsRegular() {
		p.add(field, "%s is not a regular file", path)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		p.at(0, field, err)
		return
	}
	f.Close()
}

// statDir checks that path is a directory.
func statDir(p *problems, field, path string) {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		p.at(0, field, err)
	case !st.IsDir():
		p.add(field, "%s is not a directory", path)
	}
}
