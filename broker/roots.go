package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/internal/flight"
	"github.com/keybroker/keybroker/managed"
)

// RootConfig names one configured root of trust.
type RootConfig struct {
	// Name identifies the backend in logs, metrics and audit lines.
	Name string
	// URI opens the backend (a backend URI, with or without a key).
	URI string
}

type root struct {
	name    string
	uri     backends.KeyURI
	backend backends.Backend
}

// Roots holds the opened roots of trust and resolves root key URIs to one
// of them.
//
// A root key URI names the backend it lives in by whatever connection
// attributes it gives (backends.Holds): softkms:root-1 names the one
// configured softkms keystore, pkcs11:token=kb;object=root-1 the configured
// backend on token kb, whatever its module path and PIN source. A key URI
// that no configured backend holds, or that several could, is refused, so
// a CreateKey cannot make the central tier open a backend nobody
// configured.
//
// # Root key roles
//
// Every root key a new managed key may use is declared (Declare) with one
// role: RoleDerive (the PRF of derive-mode keys), RoleWrap (wraps
// wrap-mode material) or RoleBackend (performs the operations of
// backend-mode keys, optionally of given types only). CreateKey takes only
// a declared root in the role of the new key's mode (Admit), and no
// operation runs on a root declared for another role than its key's mode
// (CheckRole): a backend-mode HMAC key on the derive root would hand out
// the PRF of every derive-mode key. Keys made before roles on roots left
// undeclared keep working.
type Roots struct {
	roots []*root

	// declared holds the root key declarations by backend name ‖ 0 ‖
	// key name; set once by Declare, before the roots serve.
	declared map[string]RootKey

	// resolved memoizes Resolve: the roots never change after
	// construction, and every request resolves its key's root.
	resolved sync.Map // key URI → resolution
	memoized atomic.Int64

	// metrics counts and times every call, through the decorator each
	// root's backend is behind (instrument).
	metrics *backends.Metrics
	log     *slog.Logger
	refused sync.Map // CallKey → *atomic.Uint64

	// budget, when set, bounds each principal's calls (SetBudget);
	// edgeBudget, when set, each edge's instead.
	budget, edgeBudget atomic.Pointer[budget.Budget]
}

// RoleOf is the role a root key needs to serve keys of mode m.
func RoleOf(m managed.Mode) managed.Role {
	switch m {
	case managed.ModeDerive:
		return managed.RoleDerive
	case managed.ModeWrap:
		return managed.RoleWrap
	case managed.ModeBackend:
		return managed.RoleBackend
	}
	return ""
}

// RootKey declares one root key and its role.
type RootKey struct {
	// URI names the key in one configured backend (see Resolve); it is
	// the spelling CreateKey stores and policies see as resource.root.
	URI string
	// Role is the one thing the key is for.
	Role managed.Role
	// Types are the managed key types it may serve; empty means all.
	Types []managed.KeyType
}

// Declare records the root keys new keys may use and their roles. It is
// called once, before the roots serve. A key declared twice — in two
// roles, or twice in one under two spellings — is refused, as is one no
// configured backend holds.
func (r *Roots) Declare(keys []RootKey) error {
	declared := map[string]RootKey{}
	for _, rk := range keys {
		switch rk.Role {
		case managed.RoleDerive, managed.RoleWrap, managed.RoleBackend:
		default:
			return fmt.Errorf("broker: root key %q: role %q is not derive, wrap or backend", rk.URI, rk.Role)
		}
		for _, t := range rk.Types {
			if !t.Valid() {
				return fmt.Errorf("broker: root key %q: type %q is not a key type", rk.URI, t)
			}
		}
		_, backendName, name, err := r.resolve(rk.URI)
		if err != nil {
			return fmt.Errorf("broker: root key %q: %w", rk.URI, err)
		}
		id := backendName + "\x00" + name
		if prev, dup := declared[id]; dup {
			return fmt.Errorf("broker: root key %q is declared twice (as %s %q and as %s %q): a root key has one role", rk.URI, prev.Role, prev.URI, rk.Role, rk.URI)
		}
		declared[id] = RootKey{URI: rk.URI, Role: rk.Role, Types: slices.Clone(rk.Types)}
	}
	r.declared = declared
	return nil
}

// declaration returns the declaration of the root key keyURI names.
func (r *Roots) declaration(keyURI string) (RootKey, bool, error) {
	_, backendName, name, err := r.Resolve(keyURI)
	if err != nil {
		return RootKey{}, false, err
	}
	rk, ok := r.declared[backendName+"\x00"+name]
	return rk, ok, nil
}

// Admit checks that the root key keyURI names may serve a new key of mode
// m and type t, and returns the URI as declared. An undeclared root key,
// or one declared for another role or other types, is an
// ErrInvalidArgument naming the key and its role.
func (r *Roots) Admit(keyURI string, m managed.Mode, t managed.KeyType) (string, error) {
	rk, ok, err := r.declaration(keyURI)
	if err != nil {
		return "", err
	}
	switch want := RoleOf(m); {
	case !ok:
		return "", managed.Errorf(managed.ErrInvalidArgument, "root key %q is not a declared root key: a %s-mode key needs a root key declared with role %s", keyURI, m, want)
	case rk.Role != want:
		return "", managed.Errorf(managed.ErrInvalidArgument, "root key %q is declared with role %s: a %s-mode key needs a root key with role %s", keyURI, rk.Role, m, want)
	case len(rk.Types) > 0 && !slices.Contains(rk.Types, t):
		return "", managed.Errorf(managed.ErrInvalidArgument, "root key %q (role %s) serves %v keys, not %s", keyURI, rk.Role, rk.Types, t)
	}
	return rk.URI, nil
}

// CheckRole refuses to use the root key keyURI names for a key of mode m
// when it is declared for another role (an ErrFailedPrecondition). An
// undeclared root key passes: keys created before roots had roles keep
// working; CreateKey (Admit) takes declared roots only. backendName and
// key are what Resolve returned for keyURI: the caller has resolved it
// already, so it is not resolved again on every backend call.
func (r *Roots) CheckRole(keyURI, backendName, key string, m managed.Mode) error {
	rk, ok := r.declared[backendName+"\x00"+key]
	if !ok {
		return nil
	}
	if want := RoleOf(m); rk.Role != want {
		return managed.Errorf(managed.ErrFailedPrecondition, "root key %q is declared with role %s: it does not serve %s-mode keys", keyURI, rk.Role, m)
	}
	return nil
}

// CallKey names a count of calls: a backend and an operation.
type CallKey struct{ Backend, Op string }

// SetBudget makes every call made on a principal's behalf charge that
// principal's bucket in b. Call it before serving.
func (r *Roots) SetBudget(b *budget.Budget) { r.budget.Store(b) }

// SetEdgeBudget makes calls made on an edge's behalf — the material it
// holds, sealed by Watch or fetched — charge the edge's bucket in b
// rather than the budget SetBudget set. Call it before serving.
func (r *Roots) SetEdgeBudget(b *budget.Budget) { r.edgeBudget.Store(b) }

// instrument puts a root's backend behind backends.Instrument, which
// checks, admits (charges), counts, audits, times and traces every call
// the central tier makes to it: no call site counts by hand, and none can
// forget to. Call sites name what a call is for with backends.WithOp
// ("derive", "unwrap", "wrap-data-key", ...); a call that names nothing is
// counted under its method's name ("random", "describe", "sign", ...).
func (r *Roots) instrument(name string, u backends.KeyURI, b backends.Backend) backends.Backend {
	return backends.Instrument(b, backends.InstrumentOptions{
		Name: name, Scheme: u.Scheme(), Metrics: r.metrics, Admit: r.admit, Logger: r.log,
	})
}

// admit charges one call the broker is about to make to a backend to the
// principal ctx carries (identity.FromContext: the client, the admin, or
// the edge fetching material; a forwarded call carries the client the edge
// forwards for). The decorator asks before every call; once admitted, it
// counts the call (Calls) and notes it in the request's audit line.
//
// When the principal's budget is spent, admit counts a refusal and returns
// an ErrResourceExhausted error, and the call is not made. The error is
// marked flight.Personal and names no principal: callers who joined a
// coalesced call this one led run it again under their own budget, and
// never see another principal's refusal. Work the node does by itself (the
// lifecycle sweep) carries no principal and is not charged.
func (r *Roots) admit(ctx context.Context, c backends.Call) error {
	who, ok := identity.FromContext(ctx)
	if !ok {
		return nil
	}
	b := r.budget.Load()
	if who.Kind == identity.Edge {
		if eb := r.edgeBudget.Load(); eb != nil {
			b = eb
		}
	}
	if b != nil {
		if !b.Take(who.String()) {
			count(&r.refused, CallKey(c))
			// The refusal is this caller's alone: a call coalesced with
			// others (material, data keys) is run again for them.
			return flight.Personal(managed.Errorf(managed.ErrResourceExhausted, "your budget of calls to the roots of trust is spent; retry later"))
		}
	}
	return nil
}

func count(m *sync.Map, k CallKey) {
	v, ok := m.Load(k)
	if !ok {
		v, _ = m.LoadOrStore(k, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

func counts(m *sync.Map) map[CallKey]uint64 {
	out := map[CallKey]uint64{}
	m.Range(func(k, v any) bool {
		out[k.(CallKey)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// Calls returns the counts of calls made to each backend, by operation.
func (r *Roots) Calls() map[CallKey]uint64 {
	out := map[CallKey]uint64{}
	for c, n := range r.metrics.Calls() {
		out[CallKey(c)] = n
	}
	return out
}

// Refused returns the counts of calls refused for want of budget, by
// backend and operation.
func (r *Roots) Refused() map[CallKey]uint64 { return counts(&r.refused) }

// Metrics is the collector of every root's calls and their durations
// (keybroker_backend_calls_total, keybroker_backend_call_duration_seconds);
// the host process registers it.
func (r *Roots) Metrics() *backends.Metrics { return r.metrics }

// GenerateRandom draws n bytes from the RNG of the first configured root
// of trust: the first entry of the configured backends (OpenRoots), or the
// first by name (NewRoots). The rule is fixed so that the randomness a
// client gets does not move between backends from call to call; the call
// is checked, charged, counted and audited like every other
// ("<backend>:random").
func (r *Roots) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	return r.roots[0].backend.GenerateRandom(ctx, n)
}

// maxResolved bounds the resolution memo.
const maxResolved = 100_000

type resolution struct {
	b    backends.Backend
	name string
	key  string
}

// OpenRoots opens every configured backend. On error, those already open
// are closed.
func OpenRoots(ctx context.Context, reg *backends.Registry, cfgs []RootConfig, opts backends.Options) (*Roots, error) {
	r := &Roots{metrics: backends.NewMetrics(), log: opts.Logger}
	seen := map[string]bool{}
	for _, c := range cfgs {
		if c.Name == "" || seen[c.Name] {
			r.Close()
			return nil, fmt.Errorf("broker: backend name %q is empty or repeated", c.Name)
		}
		seen[c.Name] = true
		u, err := backends.ParseKeyURI(c.URI)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("broker: backend %q: %w", c.Name, err)
		}
		b, err := reg.Open(ctx, c.URI, opts)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("broker: backend %q: %w", c.Name, err)
		}
		r.roots = append(r.roots, &root{name: c.Name, uri: u, backend: r.instrument(c.Name, u, b)})
	}
	if len(r.roots) == 0 {
		return nil, errors.New("broker: no backends configured")
	}
	return r, nil
}

// NewRoots wraps already opened backends (tests, keybroker dev).
func NewRoots(named map[string]backends.Backend, uris map[string]string) (*Roots, error) {
	r := &Roots{metrics: backends.NewMetrics()}
	names := make([]string, 0, len(named))
	for n := range named {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		u, err := backends.ParseKeyURI(uris[n])
		if err != nil {
			return nil, fmt.Errorf("broker: backend %q: %w", n, err)
		}
		r.roots = append(r.roots, &root{name: n, uri: u, backend: r.instrument(n, u, named[n])})
	}
	return r, nil
}

// Resolve finds the backend holding the root key named by keyURI and the
// key's name inside it.
func (r *Roots) Resolve(keyURI string) (b backends.Backend, backendName, key string, err error) {
	if v, ok := r.resolved.Load(keyURI); ok {
		res := v.(resolution)
		return res.b, res.name, res.key, nil
	}
	b, backendName, key, err = r.resolve(keyURI)
	// Only successes are kept, and only so many: a URI resolves before the
	// backend says whether its key exists, so callers could otherwise grow
	// the memo without bound.
	if err == nil && r.memoized.Load() < maxResolved {
		if _, loaded := r.resolved.LoadOrStore(keyURI, resolution{b, backendName, key}); !loaded {
			r.memoized.Add(1)
		}
	}
	return b, backendName, key, err
}

func (r *Roots) resolve(keyURI string) (b backends.Backend, backendName, key string, err error) {
	u, err := backends.ParseKeyURI(keyURI)
	if err != nil {
		return nil, "", "", managed.Errorf(managed.ErrInvalidArgument, "root key: %v", err)
	}
	if u.Key() == "" {
		return nil, "", "", managed.Errorf(managed.ErrInvalidArgument, "root key URI %q names no key", keyURI)
	}
	var match []*root
	for _, rt := range r.roots {
		if backends.Holds(rt.uri, u) {
			match = append(match, rt)
		}
	}
	switch len(match) {
	case 0:
		return nil, "", "", managed.Errorf(managed.ErrInvalidArgument, "root key %q is in no configured backend", keyURI)
	case 1:
		return match[0].backend, match[0].name, u.Key(), nil
	}
	return nil, "", "", managed.Errorf(managed.ErrInvalidArgument, "root key %q matches %d configured backends; give its connection attributes", keyURI, len(match))
}

// Names lists the configured backends.
func (r *Roots) Names() []string {
	out := make([]string, len(r.roots))
	for i, rt := range r.roots {
		out[i] = rt.name
	}
	return out
}

// Health checks every backend that can say; the map holds one entry per
// backend (nil when healthy or not a HealthChecker).
func (r *Roots) Health(ctx context.Context) map[string]error {
	out := map[string]error{}
	for _, rt := range r.roots {
		if h, ok := rt.backend.(backends.HealthChecker); ok {
			out[rt.name] = h.Health(ctx)
		} else {
			out[rt.name] = nil
		}
	}
	return out
}

// Close closes every backend.
func (r *Roots) Close() error {
	var errs []error
	for _, rt := range r.roots {
		errs = append(errs, rt.backend.Close())
	}
	return errors.Join(errs...)
}
