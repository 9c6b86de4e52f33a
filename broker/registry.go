package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// KindKeys is the store kind holding managed keys.
const KindKeys store.Kind = "keys"

// Registry stores managed keys.
type Registry struct {
	st  store.Store
	now func() time.Time
}

// NewRegistry returns a registry on st; now is the clock (time.Now when nil).
func NewRegistry(st store.Store, now func() time.Time) *Registry {
	if now == nil {
		now = time.Now
	}
	return &Registry{st: st, now: now}
}

// Store returns the underlying store (for its change feed).
func (r *Registry) Store() store.Store { return r.st }

func decodeKey(o store.Object) (*Key, error) {
	var k Key
	if err := json.Unmarshal(o.Value, &k); err != nil {
		return nil, fmt.Errorf("broker: key %q: corrupt record: %w", o.ID, err)
	}
	k.Revision = o.Revision
	return &k, nil
}

// DecodeKey decodes a key from a store object (change-feed consumers).
func DecodeKey(o store.Object) (*Key, error) { return decodeKey(o) }

// Get returns a key.
func (r *Registry) Get(ctx context.Context, id string) (*Key, error) {
	if !ValidKeyID(id) {
		return nil, errorf(ErrInvalidArgument, "key id %q is not valid", id)
	}
	o, err := r.st.Get(ctx, KindKeys, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(ErrNotFound, "key %q does not exist", id)
	}
	if err != nil {
		return nil, err
	}
	return decodeKey(o)
}

// List returns every key, sorted by id, and the revision it reflects.
func (r *Registry) List(ctx context.Context) ([]*Key, uint64, error) {
	objs, rev, err := r.st.List(ctx, KindKeys)
	if err != nil {
		return nil, 0, err
	}
	keys := make([]*Key, 0, len(objs))
	for _, o := range objs {
		k, err := decodeKey(o)
		if err != nil {
			return nil, 0, err
		}
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].ID < keys[j].ID })
	return keys, rev, nil
}

// Create stores a new key.
func (r *Registry) Create(ctx context.Context, k *Key) (*Key, error) {
	k = k.Clone()
	now := r.now().UTC()
	k.Created, k.Updated = now, now
	if err := k.validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	rev, err := r.st.Put(ctx, KindKeys, k.ID, data, 0)
	if errors.Is(err, store.ErrConflict) {
		return nil, errorf(ErrAlreadyExists, "key %q already exists", k.ID)
	}
	if err != nil {
		return nil, err
	}
	k.Revision = rev
	return k, nil
}

// maxCASRetries bounds retries of an update that races with others.
const maxCASRetries = 16

// Update applies fn to the current key and stores the result with a
// compare-and-swap. With expected != 0 the key must be at that revision
// (ErrConflict otherwise); with 0 a lost race is retried on the new
// revision, so fn must be a pure function of the key it is given.
func (r *Registry) Update(ctx context.Context, id string, expected uint64, fn func(*Key) error) (*Key, error) {
	for range maxCASRetries {
		cur, err := r.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if expected != 0 && cur.Revision != expected {
			return nil, errorf(ErrConflict, "key %q is at revision %d, not %d", id, cur.Revision, expected)
		}
		next := cur.Clone()
		if err := fn(next); err != nil {
			return nil, err
		}
		next.ID = cur.ID
		next.Created = cur.Created
		next.Updated = r.now().UTC()
		if err := next.validate(); err != nil {
			return nil, err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, err
		}
		rev, err := r.st.Put(ctx, KindKeys, id, data, cur.Revision)
		if errors.Is(err, store.ErrConflict) {
			if expected != 0 {
				return nil, errorf(ErrConflict, "key %q changed concurrently", id)
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		next.Revision = rev
		return next, nil
	}
	return nil, errorf(ErrConflict, "key %q: too many concurrent updates", id)
}

// Delete removes a key for good (after its pending window).
func (r *Registry) Delete(ctx context.Context, k *Key) error {
	_, err := r.st.Delete(ctx, KindKeys, k.ID, k.Revision)
	if errors.Is(err, store.ErrConflict) {
		return errorf(ErrConflict, "key %q changed concurrently", k.ID)
	}
	return err
}
