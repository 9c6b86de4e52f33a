package broker

import (
	"container/list"
	"context"
	"crypto/x509"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/internal/flight"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// DeriveInput is the PRF input for a derive-mode version's material:
// "keybroker/v2/material" ‖ 0 ‖ salt ‖ key id ‖ 0 ‖ u32 version, or for a
// key made before salts "keybroker/v1/material" ‖ 0 ‖ key id ‖ 0 ‖ u32
// version. Changing it changes every derived key.
func DeriveInput(k *Key, version uint32) []byte {
	return k.Input(managed.DomainMaterial, version)
}

// WrapAAD binds wrapped material to its key (and its salt) and version.
func WrapAAD(k *Key, version uint32) []byte {
	return k.Input(managed.DomainWrap, version)
}

// Materials produces and caches key-version material. It is the only place
// the central tier asks a root of trust for material.
type Materials struct {
	roots *Roots
	ttl   time.Duration
	cap   int
	now   func() time.Time

	mu sync.Mutex
	ll *list.List
	m  map[string]*list.Element
	sf singleflight.Group
}

type materialEntry struct {
	id      string
	m       *secret.Bytes
	expires time.Time
}

// NewMaterials returns a material service caching at most capacity
// versions for ttl each.
func NewMaterials(roots *Roots, capacity int, ttl time.Duration, now func() time.Time) *Materials {
	if now == nil {
		now = time.Now
	}
	return &Materials{roots: roots, ttl: ttl, cap: max(capacity, 1), now: now, ll: list.New(), m: map[string]*list.Element{}}
}

// cacheID names a version of one incarnation of a key: a key created
// again under a deleted id has another salt, so it never meets its
// predecessor's material here, even on a node that missed the deletion.
func cacheID(k *Key, v uint32) string {
	return k.ID + "\x00" + strconv.FormatUint(uint64(v), 10) + "\x00" + k.Incarnation()
}

// Material is Get as a managed.MaterialSource: a copy the caller destroys.
func (ms *Materials) Material(ctx context.Context, k *Key, v uint32) (*secret.Bytes, error) {
	m, err := ms.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	return m.Clone(), nil
}

// Get returns the material of version v of k. The caller must not destroy
// it; it belongs to the cache.
func (ms *Materials) Get(ctx context.Context, k *Key, v uint32) (*secret.Bytes, error) {
	ver := k.Version(v)
	if ver == nil {
		return nil, errorf(ErrNotFound, "key %q has no version %d", k.ID, v)
	}
	if k.Mode == ModeBackend {
		return nil, errorf(ErrFailedPrecondition, "key %q is a backend-mode key: its material never leaves the backend", k.ID)
	}
	id := cacheID(k, v)
	if m := ms.lookup(id); m != nil {
		return m, nil
	}
	res, err := flight.Do(ctx, &ms.sf, id, func(ctx context.Context) (any, error) {
		if m := ms.lookup(id); m != nil {
			return m, nil
		}
		m, err := ms.produce(ctx, k, ver)
		if err != nil {
			return nil, err
		}
		ms.insert(id, m)
		return m, nil
	})
	if err != nil {
		return nil, err
	}
	return res.(*secret.Bytes), nil
}

func (ms *Materials) produce(ctx context.Context, k *Key, ver *Version) (*secret.Bytes, error) {
	b, backendName, name, err := ms.roots.Resolve(ver.RootKey)
	if err != nil {
		return nil, err
	}
	if err := ms.roots.CheckRole(ver.RootKey, backendName, name, k.Mode); err != nil {
		return nil, err
	}
	switch k.Mode {
	case ModeDerive:
		mac, ok := b.(backends.MACer)
		if !ok {
			return nil, errorf(ErrFailedPrecondition, "root key %q cannot derive material: its backend has no HMAC", ver.RootKey)
		}
		return mac.MAC(backends.WithOp(ctx, "derive"), name, DeriveInput(k, ver.Version))
	case ModeWrap:
		return b.Decrypt(backends.WithOp(ctx, "unwrap"), name, ver.Wrapped, WrapAAD(k, ver.Version))
	}
	return nil, errorf(ErrFailedPrecondition, "key %q mode %s has no material", k.ID, k.Mode)
}

// NewVersion prepares version v of k on rootKey: for wrap mode it draws 32
// random bytes from the backend and stores them wrapped; for asymmetric
// keys it records the public key (derived from material, or the backend
// key's own in backend mode). It checks that the root key can do what the
// mode needs, so a bad root key fails at creation, not at first use.
func (ms *Materials) NewVersion(ctx context.Context, k *Key, rootKey string, v uint32) (Version, error) {
	b, backendName, name, err := ms.roots.Resolve(rootKey)
	if err != nil {
		return Version{}, err
	}
	if err := ms.roots.CheckRole(rootKey, backendName, name, k.Mode); err != nil {
		return Version{}, err
	}
	ver := Version{Version: v, RootKey: rootKey}
	var material *secret.Bytes
	switch k.Mode {
	case ModeDerive:
		mac, ok := b.(backends.MACer)
		if !ok {
			return Version{}, errorf(ErrInvalidArgument, "root key %q: derive mode needs an HMAC-capable backend", rootKey)
		}
		if material, err = mac.MAC(backends.WithOp(ctx, "derive"), name, DeriveInput(k, v)); err != nil {
			return Version{}, rootError(rootKey, err)
		}
	case ModeWrap:
		raw, err := b.GenerateRandom(ctx, 32)
		if err != nil {
			return Version{}, rootError(rootKey, err)
		}
		material = secret.New(raw)
		if ver.Wrapped, err = b.Encrypt(backends.WithOp(ctx, "wrap"), name, raw, WrapAAD(k, v)); err != nil {
			material.Destroy()
			return Version{}, rootError(rootKey, err)
		}
	case ModeBackend:
		if err := checkBackendRoot(ctx, b, name, k.Type, rootKey); err != nil {
			return Version{}, err
		}
		if k.Type.Asymmetric() {
			pub, err := b.(backends.Signer).PublicKey(ctx, name)
			if err != nil {
				return Version{}, rootError(rootKey, err)
			}
			if ver.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
				return Version{}, err
			}
		}
		return ver, nil
	}
	defer material.Destroy()
	if k.Type.Asymmetric() {
		sk, err := managed.SigningKey(k.Type, material)
		if err != nil {
			return Version{}, err
		}
		if ver.PublicKey, err = x509.MarshalPKIXPublicKey(sk.Public()); err != nil {
			return Version{}, err
		}
	}
	return ver, nil
}

// checkBackendRoot verifies that a backend-mode root key has the algorithm
// the managed key type needs.
func checkBackendRoot(ctx context.Context, b backends.Backend, name string, t KeyType, rootKey string) error {
	info, err := b.Describe(ctx, name)
	if err != nil {
		return rootError(rootKey, err)
	}
	want := map[KeyType]backends.Algorithm{AES256GCM: backends.AES256, HMACSHA256: backends.HMAC256, ECDSAP256: backends.ECDSAP256, Ed25519: backends.Ed25519}[t]
	if info.Algorithm != want {
		return errorf(ErrInvalidArgument, "root key %q is %s; a backend-mode %s key needs a %s root key", rootKey, info.Algorithm, t, want)
	}
	if t.Asymmetric() {
		if _, ok := b.(backends.Signer); !ok {
			return errorf(ErrInvalidArgument, "root key %q: its backend cannot sign", rootKey)
		}
	}
	if t == HMACSHA256 {
		if _, ok := b.(backends.MACer); !ok {
			return errorf(ErrInvalidArgument, "root key %q: its backend has no HMAC", rootKey)
		}
	}
	return nil
}

// rootError keeps a backend error's classification and names the root key.
func rootError(rootKey string, err error) error {
	return fmt.Errorf("root key %q: %w", rootKey, err)
}

func (ms *Materials) lookup(id string) *secret.Bytes {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	el, ok := ms.m[id]
	if !ok {
		return nil
	}
	e := el.Value.(*materialEntry)
	if !ms.now().Before(e.expires) {
		ms.removeLocked(el)
		return nil
	}
	ms.ll.MoveToFront(el)
	return e.m
}

func (ms *Materials) insert(id string, m *secret.Bytes) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if el, ok := ms.m[id]; ok {
		ms.removeLocked(el)
	}
	ms.m[id] = ms.ll.PushFront(&materialEntry{id: id, m: m, expires: ms.now().Add(ms.ttl)})
	for ms.ll.Len() > ms.cap {
		ms.removeLocked(ms.ll.Back())
	}
}

// removeLocked drops an entry. The material is not zeroed here: a caller
// may still be using it; the runtime cleanup on secret.Bytes zeroes it once
// unreachable.
func (ms *Materials) removeLocked(el *list.Element) {
	e := ms.ll.Remove(el).(*materialEntry)
	delete(ms.m, e.id)
}

// Forget drops every cached version of keyID (on disable, deletion or a
// minimum-version change).
func (ms *Materials) Forget(keyID string) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	prefix := keyID + "\x00"
	for el := ms.ll.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*materialEntry); len(e.id) > len(prefix) && e.id[:len(prefix)] == prefix {
			ms.removeLocked(el)
		}
		el = next
	}
}
