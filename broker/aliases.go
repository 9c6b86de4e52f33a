package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
)

// Named aliases (AWS KMS's alias/<name>). Which key an alias names is an
// object of its own kind in the store, aliases/<name> → key id, created
// with a compare-and-swap from "absent", so that two central nodes cannot
// give one alias to two keys, and moved or removed with a
// compare-and-swap on its revision. The store has no transaction across
// objects, so the key's own list of its aliases (managed.Key.Aliases,
// which carries them to edges) is written after the record when an alias
// is given, and before it when an alias is taken away:
//
//   - the record decides at the central tier (AliasTarget);
//   - a key may list an alias for a while after the record has moved on or
//     before it lists it (a crash between the two writes, a race between
//     two moves), so an edge's answer can lag the central tier's as any
//     replicated state does; every use is authorized on the key the alias
//     resolved to, so a lagging alias never lets a caller use a key its
//     policy does not allow;
//   - DeleteAlias removes a record its key does not list, and the sweep
//     that deletes a key removes the records that still name it.

// KindAliases is the store kind holding named aliases.
const KindAliases store.Kind = "aliases"

type aliasRecord struct {
	Key string `json:"key"`
}

// aliasTarget is the key alias name names and the record's revision.
func (r *Registry) aliasTarget(ctx context.Context, name string) (string, uint64, error) {
	if err := managed.ValidateAlias(name); err != nil {
		return "", 0, err
	}
	o, err := r.st.Get(ctx, KindAliases, name)
	if errors.Is(err, store.ErrNotFound) {
		return "", 0, managed.Errorf(managed.ErrNotFound, "alias/%s does not exist", name)
	}
	if err != nil {
		return "", 0, err
	}
	var rec aliasRecord
	if err := json.Unmarshal(o.Value, &rec); err != nil || rec.Key == "" {
		return "", 0, fmt.Errorf("broker: alias record %q is corrupt: %v", name, err)
	}
	return rec.Key, o.Revision, nil
}

// aliasNaming is the revision of alias name's record, which must name key
// id (the key the caller was authorized on): ErrConflict when it names
// another key now.
func (r *Registry) aliasNaming(ctx context.Context, name, id string) (uint64, error) {
	target, rev, err := r.aliasTarget(ctx, name)
	if err != nil {
		return 0, err
	}
	if target != id {
		return 0, managed.Errorf(managed.ErrConflict, "alias/%s names key %q now, not %q", name, target, id)
	}
	return rev, nil
}

// AliasTarget is the id of the key alias name (without alias/) names;
// managed.ErrNotFound when it names none. Answers are remembered until
// the feed (or a change made here) reports a change of the alias, so
// the AWS API's alias/<name> key ids cost no store read each, including
// alias/<id> of keys, which are looked up as aliases first.
func (s *Service) AliasTarget(ctx context.Context, name string) (string, error) {
	if err := managed.ValidateAlias(name); err != nil {
		return "", err
	}
	m := &s.reg.aliases
	if id, ok := m.get(name); ok {
		if id == "" {
			return "", managed.Errorf(managed.ErrNotFound, "alias/%s does not exist", name)
		}
		return id, nil
	}
	gen := m.generation()
	id, _, err := s.reg.aliasTarget(ctx, name)
	switch {
	case err == nil:
		m.put(name, id, gen)
	case errors.Is(err, managed.ErrNotFound):
		m.put(name, "", gen)
	}
	return id, err
}

// maxAliasMemo bounds the remembered alias lookups: when it holds this
// many it starts afresh.
const maxAliasMemo = 1 << 14

// aliasMemo remembers alias lookups, "" for "no such alias". A lookup
// read from the store is remembered only if no change of any alias was
// reported since it began (gen), so a read that raced a change is never
// kept.
type aliasMemo struct {
	mu  sync.Mutex
	m   map[string]string
	gen uint64
}

func (a *aliasMemo) get(name string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.m[name]
	return id, ok
}

func (a *aliasMemo) generation() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gen
}

func (a *aliasMemo) put(name, id string, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if gen != a.gen {
		return
	}
	if a.m == nil || len(a.m) >= maxAliasMemo {
		a.m = map[string]string{}
	}
	a.m[name] = id
}

// forget drops what is remembered of name: it changed.
func (a *aliasMemo) forget(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, name)
	a.gen++
}

// reset forgets everything: the feed was lost.
func (a *aliasMemo) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m = nil
	a.gen++
}

func aliasValue(keyID string) []byte {
	b, _ := json.Marshal(aliasRecord{Key: keyID})
	return b
}

// addAlias lists name on a key that is not pending deletion.
func addAlias(name string) func(*managed.Key) error {
	return func(k *managed.Key) error {
		if k.State == managed.StatePendingDeletion {
			return managed.Errorf(managed.ErrFailedPrecondition, "key %q is pending deletion", k.ID)
		}
		if !slices.Contains(k.Aliases, name) {
			k.Aliases = append(k.Aliases, name)
		}
		return nil
	}
}

func removeAlias(name string) func(*managed.Key) error {
	return func(k *managed.Key) error {
		k.Aliases = slices.DeleteFunc(k.Aliases, func(a string) bool { return a == name })
		if len(k.Aliases) == 0 {
			k.Aliases = nil
		}
		return nil
	}
}

// CreateAlias gives alias name to key id: ErrAlreadyExists when the alias
// names a key already, or is the id of a key (alias/<id> names that key);
// ErrFailedPrecondition for a key pending deletion.
func (s *Service) CreateAlias(ctx context.Context, name, id string) (*managed.Key, error) {
	// Whatever happened, what this node remembers of the alias goes.
	defer s.reg.aliases.forget(name)
	if err := managed.ValidateAlias(name); err != nil {
		return nil, err
	}
	if err := s.reg.currentForWrite(); err != nil {
		return nil, err
	}
	k, err := s.reg.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := addAlias(name)(k.Clone()); err != nil {
		return nil, err
	}
	if len(k.Aliases) >= managed.MaxAliases {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q has %d aliases, the limit", id, len(k.Aliases))
	}
	if _, err := s.reg.Get(ctx, name); err == nil {
		return nil, managed.Errorf(managed.ErrAlreadyExists, "alias/%s already names key %q", name, name)
	}
	rev, err := s.reg.st.Put(ctx, KindAliases, name, aliasValue(id), 0)
	if errors.Is(err, store.ErrConflict) {
		rev, err = s.reclaimAlias(ctx, name, id)
	}
	if err != nil {
		return nil, err
	}
	k, err = s.reg.Update(ctx, id, 0, addAlias(name))
	if err != nil {
		// The key went (or left its state) meanwhile: give the alias back.
		_, _ = s.reg.st.Delete(ctx, KindAliases, name, rev)
		return nil, err
	}
	return k, nil
}

// reclaimAlias gives id an alias whose record names a key that no longer
// exists (the sweep that deleted it failed before removing the record);
// ErrAlreadyExists when the key exists.
func (s *Service) reclaimAlias(ctx context.Context, name, id string) (uint64, error) {
	target, rev, err := s.reg.aliasTarget(ctx, name)
	if err != nil {
		return 0, err
	}
	if _, err := s.reg.Get(ctx, target); !errors.Is(err, managed.ErrNotFound) {
		return 0, managed.Errorf(managed.ErrAlreadyExists, "alias/%s already exists", name)
	}
	rev, err = s.reg.st.Put(ctx, KindAliases, name, aliasValue(id), rev)
	if errors.Is(err, store.ErrConflict) {
		return 0, managed.Errorf(managed.ErrAlreadyExists, "alias/%s already exists", name)
	}
	return rev, err
}

// DeleteAlias removes alias name, which must name key id (the key the
// caller was authorized on): ErrConflict when it names another key now.
// It returns the key as it is left.
func (s *Service) DeleteAlias(ctx context.Context, name, id string) (*managed.Key, error) {
	defer s.reg.aliases.forget(name)
	rev, err := s.reg.aliasNaming(ctx, name, id)
	if err != nil {
		return nil, err
	}
	k, err := s.reg.Update(ctx, id, 0, removeAlias(name))
	if err != nil && !errors.Is(err, managed.ErrNotFound) {
		return nil, err
	}
	if _, err := s.reg.st.Delete(ctx, KindAliases, name, rev); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, managed.Errorf(managed.ErrConflict, "alias/%s changed concurrently", name)
		}
		return nil, err
	}
	return k, nil
}

// UpdateAlias moves alias name from key from (the key it names, which the
// caller was authorized on) to key to: ErrConflict when it names another
// key now; ErrFailedPrecondition when to is pending deletion or of
// another type (as AWS KMS requires: the alias's users keep working).
// It returns key to as it is left.
func (s *Service) UpdateAlias(ctx context.Context, name, from, to string) (*managed.Key, error) {
	defer s.reg.aliases.forget(name)
	rev, err := s.reg.aliasNaming(ctx, name, from)
	if err != nil {
		return nil, err
	}
	dst, err := s.reg.Get(ctx, to)
	if err != nil {
		return nil, err
	}
	if err := addAlias(name)(dst.Clone()); err != nil {
		return nil, err
	}
	if src, err := s.reg.Get(ctx, from); err == nil && src.Type != dst.Type {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "alias/%s names a %s key; key %q is %s", name, src.Type, to, dst.Type)
	}
	if from == to {
		return s.reg.Update(ctx, to, 0, addAlias(name))
	}
	if len(dst.Aliases) >= managed.MaxAliases {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q has %d aliases, the limit", to, len(dst.Aliases))
	}
	// The record moves first: it decides. The old key stops listing the
	// alias, then the new one lists it.
	if _, err := s.reg.st.Put(ctx, KindAliases, name, aliasValue(to), rev); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, managed.Errorf(managed.ErrConflict, "alias/%s changed concurrently", name)
		}
		return nil, err
	}
	if _, err := s.reg.Update(ctx, from, 0, removeAlias(name)); err != nil && !errors.Is(err, managed.ErrNotFound) {
		return nil, err
	}
	k, err := s.reg.Update(ctx, to, 0, addAlias(name))
	if err != nil {
		return nil, err
	}
	// A move that raced this one and won after our record write leaves
	// the record elsewhere: the new key must not keep listing the alias.
	if now, _, err := s.reg.aliasTarget(ctx, name); err == nil && now != to {
		return s.reg.Update(ctx, to, 0, removeAlias(name))
	}
	return k, nil
}

// dropAliases removes the alias records that still name k, a key just
// deleted.
func (r *Registry) dropAliases(ctx context.Context, k *managed.Key) error {
	for _, name := range k.Aliases {
		target, rev, err := r.aliasTarget(ctx, name)
		if errors.Is(err, managed.ErrNotFound) || (err == nil && target != k.ID) {
			continue
		}
		if err != nil {
			return err
		}
		_, err = r.st.Delete(ctx, KindAliases, name, rev)
		r.aliases.forget(name)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return nil
}
