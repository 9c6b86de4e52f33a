package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
)

// KindKeys is the store kind holding managed keys.
const KindKeys store.Kind = "keys"

// Registry stores managed keys.
//
// Reads are served from a bounded in-memory cache of decoded keys (at most
// DefaultKeyCache, or SetCacheSize's; least recently used go first, see
// keyCache), filled by Get and by writes made here, so a request does not
// decode a warm key's record from the store every time; a key not cached
// is read from the store on use. A cached copy is replaced by every write
// made through this Registry and, with Follow running, by every change
// the store's feed reports (writes by other central nodes sharing the
// store); the feed decodes in full only changes to keys already cached,
// and forgets the others — of every change it reads just the lifecycle
// fields, for the sweep's index of keys with a rotation or deletion due
// (sweepindex.go). Listings (List, Page, Scan) read the store and
// never fill the cache, so walking a million keys costs a page of memory,
// not a million decoded keys. Keys returned are shared and must not be
// modified; Update hands its function a private copy.
type Registry struct {
	st       store.Store
	now      func() time.Time
	maxStale time.Duration // see FailClosedAfter

	// writeMu serialises this registry's writes: writers in one process
	// queue instead of racing each other's compare-and-swap, so retries
	// are only ever for writes by other nodes.
	writeMu sync.Mutex

	mu       sync.RWMutex
	cache    *keyCache
	loading  map[string]*loadMark // keys being read from the store by load
	gen      uint64               // bumped when the cache is emptied or a key dropped
	followed uint64               // last feed revision applied
	advanced chan struct{}        // closed and replaced when followed advances
	// aliases remembers alias lookups, kept current by the feed as the
	// key cache is (aliases.go).
	aliases aliasMemo
	// sweep indexes the keys the lifecycle sweep may have work for, kept
	// by the feed (sweepindex.go); sweeps counts how sweeps went.
	sweep  sweepIndex
	sweeps struct{ scans, indexed atomic.Uint64 }
	// accessKeyChanged hears the access keys the feed reports changed,
	// and "" when the feed starts (OnAccessKeyChange).
	accessKeyChanged func(id string)
}

// OnAccessKeyChange has f hear the id of each access key whose record the
// feed reports changed — by any node sharing the store — and "" each time
// Follow (re)starts its feed, when changes may have been missed: a central
// node's cache of signing keys forgets a key revoked at another node as
// soon as it hears of it. Call it before Follow.
func (r *Registry) OnAccessKeyChange(f func(id string)) { r.accessKeyChanged = f }

func (r *Registry) heardAccessKey(id string) {
	if r.accessKeyChanged != nil {
		r.accessKeyChanged(id)
	}
}

// NewRegistry returns a registry on st; now is the clock (time.Now when nil).
func NewRegistry(st store.Store, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{st: st, now: now, cache: newKeyCache(DefaultKeyCache), loading: map[string]*loadMark{}, advanced: make(chan struct{})}
}

// SetCacheSize bounds the cache of decoded keys to n (at least 1); call it
// before the registry is used.
func (r *Registry) SetCacheSize(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache = newKeyCache(n)
}

// Cached is how many decoded keys the registry holds in memory.
func (r *Registry) Cached() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cache.len()
}

// loadMark counts the loads of one key in flight; stale says the feed
// reported a change to the key meanwhile, which their reads may predate.
type loadMark struct {
	n     int
	stale bool
}

// FailClosedAfter makes the registry refuse to serve once its store has
// been silent for longer than d (a central node cut off from etcd, which
// cannot know what another central changed meanwhile): Get and List fail
// with managed.ErrUnavailable, so clients and edges go to another
// central; and it refuses writes once the store has been silent for
// longer than WriteSilence (or d, if shorter), rather than queue them
// behind requests that cannot commit. Zero (the default) never fails
// closed; a store that is not a store.Current (bbolt) is always current.
func (r *Registry) FailClosedAfter(d time.Duration) { r.maxStale = d }

// WriteSilence is how long a registry's store may be silent before
// writes are refused: a few of the store's progress intervals.
var WriteSilence = 3 * time.Second

// current says whether the store has been heard from within bound.
func (r *Registry) current(bound time.Duration, what string) error {
	c, ok := r.st.(store.Current)
	if !ok || r.maxStale <= 0 {
		return nil
	}
	if silent := time.Since(c.Heard()); silent > bound {
		return managed.Errorf(managed.ErrUnavailable, "this central node has not heard from its store for %s (bound %s), so it %s: another central may have changed the key meanwhile; retry at another central node",
			silent.Round(100*time.Millisecond), bound, what)
	}
	return nil
}

func (r *Registry) currentForRead() error {
	return r.current(r.maxStale, "serves no key from its registry")
}

func (r *Registry) currentForWrite() error {
	return r.current(min(r.maxStale, WriteSilence), "accepts no write")
}

// Current is nil while the registry serves: its store heard from within
// the bound FailClosedAfter set.
func (r *Registry) Current() error { return r.currentForRead() }

// markFollowed records that the feed has been applied up to rev.
func (r *Registry) markFollowed(rev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev > r.followed {
		r.followed = rev
		close(r.advanced)
		r.advanced = make(chan struct{})
	}
}

// WaitFollowed blocks until Follow has applied the store's changes up to
// revision rev, or ctx ends.
func (r *Registry) WaitFollowed(ctx context.Context, rev uint64) error {
	for {
		r.mu.RLock()
		done, ch := r.followed >= rev, r.advanced
		r.mu.RUnlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// remember caches k unless a newer revision is already cached.
func (r *Registry) remember(k *managed.Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rememberLocked(k)
}

func (r *Registry) rememberLocked(k *managed.Key) { r.cache.put(k) }

// heard applies a change the feed reported to key o.ID: a cached key is
// replaced (or dropped, when its record cannot be decoded: it is read
// from the store next time); a key not cached is not decoded, and loads
// of it in flight are not cached, as they may have read it before the
// change.
func (r *Registry) heard(o store.Object) {
	r.mu.Lock()
	if !r.cache.has(o.ID) {
		if m := r.loading[o.ID]; m != nil {
			m.stale = true
		}
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	// Cached a moment ago: a load or write that caches it meanwhile holds
	// this revision or a later one, and remember keeps the later.
	k, err := decodeKey(o)
	if err != nil {
		r.drop(o.ID)
		return
	}
	r.remember(k)
}

// invalidate empties the cache. A read from the store that began before
// this may be older than a change the feed will not repeat, so its result
// is not cached (see load).
func (r *Registry) invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache.clear()
	r.gen++
	r.aliases.reset()
}

// drop forgets a key. A read from the store that began before this may
// hold the key as it was before its deletion, so gen is bumped and such a
// read's result is not cached (see load and List): a deleted key is never
// cached again by a read that raced its deletion.
func (r *Registry) drop(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache.drop(id)
	if m := r.loading[id]; m != nil {
		m.stale = true
	}
	r.gen++
}

// followRetry is the wait before Follow tries its feed again.
var followRetry = time.Second

// Follow keeps the cache current with the store's change feed until ctx
// ends, so writes by other nodes sharing the store are seen. When the feed
// is lost (a slow watcher, a compacted revision) the cache is emptied and
// the feed resumed from the store's current revision.
func (r *Registry) Follow(ctx context.Context) {
	for wait := false; ctx.Err() == nil; {
		if wait {
			// A feed that could not start or failed (etcd unreachable for
			// a moment, a record the feed cannot decode) is tried again,
			// never given up: a registry that stopped following would serve
			// another node's disabled or deleted keys from its cache.
			select {
			case <-ctx.Done():
				return
			case <-time.After(followRetry):
			}
		}
		from := r.st.Revision()
		w, err := r.st.Watch(ctx, from)
		if errors.Is(err, store.ErrClosed) {
			return
		}
		if wait = err != nil; wait {
			continue
		}
		// Anything cached before the feed began may have changed before
		// `from`, which the feed will not report.
		r.invalidate()
		r.heardAccessKey("")
		r.sweep.start()
		r.markFollowed(from)
		for ev := range w.C() {
			switch {
			case ev.Type != store.Progress && ev.Object.Kind == KindAliases:
				r.aliases.forget(ev.Object.ID)
			case ev.Type != store.Progress && ev.Object.Kind == KindAccessKeys:
				r.heardAccessKey(ev.Object.ID)
			case ev.Type == store.Progress, ev.Object.Kind != KindKeys:
			case ev.Type == store.Delete:
				r.sweep.forget(ev.Object.ID)
				r.drop(ev.Object.ID)
			default:
				r.sweep.noteRecord(ev.Object)
				r.heard(ev.Object)
			}
			r.markFollowed(ev.Revision)
		}
		r.sweep.stop()
		if ctx.Err() != nil || errors.Is(w.Err(), store.ErrClosed) {
			return
		}
		// Events may have been missed; the next round starts afresh — at
		// once after a slow reader's cut, after followRetry otherwise.
		wait = !errors.Is(w.Err(), store.ErrSlowWatcher)
	}
}

// Store returns the underlying store (for its change feed).
func (r *Registry) Store() store.Store { return r.st }

func decodeKey(o store.Object) (*managed.Key, error) {
	var k managed.Key
	if err := json.Unmarshal(o.Value, &k); err != nil {
		return nil, fmt.Errorf("broker: key %q: corrupt record: %w", o.ID, err)
	}
	k.Revision = o.Revision
	return &k, nil
}

// DecodeKey decodes a key from a store object (change-feed consumers).
func DecodeKey(o store.Object) (*managed.Key, error) { return decodeKey(o) }

// Get returns a key.
func (r *Registry) Get(ctx context.Context, id string) (*managed.Key, error) {
	if !envelope.ValidKeyID(id) {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "key id %s must be 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", clip.Quote(id))
	}
	if err := r.currentForRead(); err != nil {
		return nil, err
	}
	r.mu.RLock()
	k := r.cache.get(id)
	r.mu.RUnlock()
	if k != nil {
		return k, nil
	}
	return r.load(ctx, id)
}

// load reads a key from the store and caches it, unless the key changed
// or the cache was emptied while it read.
func (r *Registry) load(ctx context.Context, id string) (*managed.Key, error) {
	r.mu.Lock()
	gen := r.gen
	m := r.loading[id]
	if m == nil {
		m = &loadMark{}
		r.loading[id] = m
	}
	m.n++
	r.mu.Unlock()
	o, err := r.st.Get(ctx, KindKeys, id)
	r.mu.Lock()
	stale := m.stale
	if m.n--; m.n == 0 {
		delete(r.loading, id)
	}
	r.mu.Unlock()
	if errors.Is(err, store.ErrNotFound) {
		r.drop(id)
		return nil, managed.Errorf(managed.ErrNotFound, "key %q does not exist", id)
	}
	if err != nil {
		return nil, err
	}
	k, err := decodeKey(o)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if gen == r.gen && !stale {
		r.rememberLocked(k)
	}
	r.mu.Unlock()
	return k, nil
}

// List returns every key, sorted by id, and the revision it reflects. It
// holds every key in memory at once: Page and Scan do not.
func (r *Registry) List(ctx context.Context) ([]*managed.Key, uint64, error) {
	if err := r.currentForRead(); err != nil {
		return nil, 0, err
	}
	objs, rev, err := r.st.List(ctx, KindKeys)
	if err != nil {
		return nil, 0, err
	}
	keys, err := r.decodeAll(objs)
	if err != nil {
		return nil, 0, err
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].ID < keys[j].ID })
	return keys, rev, nil
}

// decodeAll decodes listed objects. A key whose cached copy is at the
// listed revision is returned as that copy — the pointer Get serves — so
// what callers remember per key (the RPC layer's policy decisions) is
// shared between listings and Get; the others are decoded and not cached.
func (r *Registry) decodeAll(objs []store.Object) ([]*managed.Key, error) {
	keys := make([]*managed.Key, len(objs))
	r.mu.RLock()
	for i, o := range objs {
		if k := r.cache.peek(o.ID); k != nil && k.Revision == o.Revision {
			keys[i] = k
		}
	}
	r.mu.RUnlock()
	for i, o := range objs {
		if keys[i] != nil {
			continue
		}
		k, err := decodeKey(o)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	return keys, nil
}

// KeyPage is one page of keys in id order.
type KeyPage struct {
	Keys     []*managed.Key
	Revision uint64 // the store revision the page reflects
	More     bool   // keys follow the page's last one
}

// Page returns at most limit keys whose id sorts after after, in id
// order, at the store's latest revision (store.ListPage): a cursor from
// the last id seen, which any change to the registry leaves valid.
func (r *Registry) Page(ctx context.Context, after string, limit int) (KeyPage, error) {
	if err := r.currentForRead(); err != nil {
		return KeyPage{}, err
	}
	p, err := r.st.ListPage(ctx, KindKeys, after, limit)
	if err != nil {
		return KeyPage{}, err
	}
	keys, err := r.decodeAll(p.Objects)
	if err != nil {
		return KeyPage{}, err
	}
	return KeyPage{Keys: keys, Revision: p.Revision, More: p.More}, nil
}

// Scan calls fn with every key in id order, in pages of at most limit,
// all at one revision (store.Scan), holding one page at a time.
func (r *Registry) Scan(ctx context.Context, limit int, fn func(KeyPage) error) error {
	if err := r.currentForRead(); err != nil {
		return err
	}
	return r.st.Scan(ctx, KindKeys, limit, func(p store.Page) error {
		keys, err := r.decodeAll(p.Objects)
		if err != nil {
			return err
		}
		return fn(KeyPage{Keys: keys, Revision: p.Revision, More: p.More})
	})
}

// Create stores a new key.
func (r *Registry) Create(ctx context.Context, k *managed.Key) (*managed.Key, error) {
	if err := r.currentForWrite(); err != nil {
		return nil, err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	k = k.Clone()
	now := r.now().UTC()
	k.Created, k.Updated = now, now
	if err := validateStored(k); err != nil {
		return nil, err
	}
	data, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	rev, err := r.st.Put(ctx, KindKeys, k.ID, data, 0)
	if errors.Is(err, store.ErrConflict) {
		return nil, managed.Errorf(managed.ErrAlreadyExists, "key %q already exists", k.ID)
	}
	if err != nil {
		return nil, err
	}
	k.Revision = rev
	r.remember(k)
	return k, nil
}

// maxCASRetries bounds retries of an update that races with another node.
const maxCASRetries = 16

// Update applies fn to the current key and stores the result with a
// compare-and-swap. With expected != 0 the key must be at that revision
// (ErrConflict otherwise); with 0 a lost race is retried on the new
// revision, so fn must be a pure function of the key it is given.
func (r *Registry) Update(ctx context.Context, id string, expected uint64, fn func(*managed.Key) error) (*managed.Key, error) {
	if err := r.currentForWrite(); err != nil {
		return nil, err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	for range maxCASRetries {
		// The store, not the cache, has the revision to swap against.
		if !envelope.ValidKeyID(id) {
			return nil, managed.Errorf(managed.ErrInvalidArgument, "key id %s must be 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", clip.Quote(id))
		}
		cur, err := r.load(ctx, id)
		if err != nil {
			return nil, err
		}
		if expected != 0 && cur.Revision != expected {
			return nil, managed.Errorf(managed.ErrConflict, "key %q is at revision %d, not %d", id, cur.Revision, expected)
		}
		next := cur.Clone()
		if err := fn(next); err != nil {
			return nil, err
		}
		next.ID = cur.ID
		next.Created = cur.Created
		next.Updated = r.now().UTC()
		if err := validateStored(next); err != nil {
			return nil, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		rev, err := r.st.Put(ctx, KindKeys, id, data, cur.Revision)
		if errors.Is(err, store.ErrConflict) {
			if expected != 0 {
				return nil, managed.Errorf(managed.ErrConflict, "key %q changed concurrently", id)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		next.Revision = rev
		r.remember(next)
		return next, nil
	}
	return nil, managed.Errorf(managed.ErrConflict, "key %q: too many concurrent updates", id)
}

// Delete removes a key for good (after its pending window).
func (r *Registry) Delete(ctx context.Context, k *managed.Key) error {
	if err := r.currentForWrite(); err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	_, err := r.st.Delete(ctx, KindKeys, k.ID, k.Revision)
	if errors.Is(err, store.ErrConflict) {
		return managed.Errorf(managed.ErrConflict, "key %q changed concurrently", k.ID)
	}
	if err == nil {
		r.drop(k.ID)
	}
	return err
}

// validateStored checks a key before it is stored: its invariants, and the
// wrapped material every wrap-mode version needs.
func validateStored(k *managed.Key) error {
	if err := k.Validate(); err != nil {
		return err
	}
	if k.Mode == managed.ModeWrap {
		for _, v := range k.Versions {
			if len(v.Wrapped) == 0 {
				return managed.Errorf(managed.ErrInvalidArgument, "wrap-mode version %d has no wrapped material", v.Version)
			}
		}
	}
	return nil
}
