package broker

import (
	"context"
	"crypto/x509"
	"fmt"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/internal/ttlcache"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// DeriveInput is the PRF input for a derive-mode version's material:
// "keybroker/v2/material" ‖ 0 ‖ salt ‖ key id ‖ 0 ‖ u32 version, or for a
// key made before salts "keybroker/v1/material" ‖ 0 ‖ key id ‖ 0 ‖ u32
// version. Changing it changes every derived key.
func DeriveInput(k *managed.Key, version uint32) []byte {
	return k.Input(managed.DomainMaterial, version)
}

// WrapAAD binds wrapped material to its key (and its salt) and version.
func WrapAAD(k *managed.Key, version uint32) []byte {
	return k.Input(managed.DomainWrap, version)
}

// Materials produces and caches key-version material. It is the only place
// the central tier asks a root of trust for material.
//
// The cache is an internal/ttlcache cache that hands out the cached secret
// itself and does not zero what it drops: a caller of Get may still be
// using it; the runtime cleanup on secret.Bytes zeroes it once unreachable.
type Materials struct {
	roots *Roots
	cache *ttlcache.Cache[string, *secret.Bytes]
}

// NewMaterials returns a material service caching at most capacity
// versions for ttl each.
func NewMaterials(roots *Roots, capacity int, ttl time.Duration, now func() time.Time) *Materials {
	return &Materials{roots: roots, cache: ttlcache.New(ttlcache.Config[string, *secret.Bytes]{Capacity: capacity, TTL: ttl, Now: now,
		Group: ttlcache.UpToNUL[string]})}
}

// appendCacheID names a version of one incarnation of a key: key id ‖ 0 ‖
// decimal version ‖ 0 ‖ incarnation. A key created again under a deleted
// id has another salt, so it never meets its predecessor's material here,
// even on a node that missed the deletion.
func appendCacheID(buf []byte, k *managed.Key, v uint32) []byte {
	buf = append(append(buf, k.ID...), 0)
	buf = append(strconv.AppendUint(buf, uint64(v), 10), 0)
	return append(buf, k.Salt...)
}

// Material is Get as a managed.MaterialSource: a copy the caller destroys.
func (ms *Materials) Material(ctx context.Context, k *managed.Key, v uint32) (*secret.Bytes, error) {
	m, err := ms.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	return m.Clone(), nil
}

// Get returns the material of version v of k. The caller must not destroy
// it; it belongs to the cache.
func (ms *Materials) Get(ctx context.Context, k *managed.Key, v uint32) (*secret.Bytes, error) {
	ver := k.Version(v)
	if ver == nil {
		return nil, managed.Errorf(managed.ErrNotFound, "key %q has no version %d", k.ID, v)
	}
	if !k.Mode.HoldsMaterial() {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q is a backend-mode key: its material never leaves the backend", k.ID)
	}
	var buf [128]byte
	id := appendCacheID(buf[:0], k, v)
	// The view of buf lives only for the call: the cache copies a key it
	// keeps. A hit is looked up first so that it makes no closure.
	if m, ok := ms.cache.Get(ttlcache.View[string](id)); ok {
		return m, nil
	}
	return ms.cache.GetOrLoad(ctx, ttlcache.View[string](id), func(ctx context.Context) (*secret.Bytes, error) {
		return ms.produce(ctx, k, ver)
	})
}

func (ms *Materials) produce(ctx context.Context, k *managed.Key, ver *managed.Version) (*secret.Bytes, error) {
	b, backendName, name, err := ms.roots.Resolve(ver.RootKey)
	if err != nil {
		return nil, err
	}
	if err := ms.roots.CheckRole(ver.RootKey, backendName, name, k.Mode); err != nil {
		return nil, err
	}
	switch k.Mode {
	case managed.ModeDerive:
		mac, ok := b.(backends.MACer)
		if !ok {
			return nil, managed.Errorf(managed.ErrFailedPrecondition, "root key %q cannot derive material: its backend has no HMAC", ver.RootKey)
		}
		return mac.MAC(backends.WithOp(ctx, "derive"), name, DeriveInput(k, ver.Version))
	case managed.ModeWrap:
		return b.Decrypt(backends.WithOp(ctx, "unwrap"), name, ver.Wrapped, WrapAAD(k, ver.Version))
	}
	return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q mode %s has no material", k.ID, k.Mode)
}

// NewVersion prepares version v of k on rootKey: for wrap mode it draws 32
// random bytes from the backend and stores them wrapped; for asymmetric
// keys it records the public key (derived from material, or the backend
// key's own in backend mode). It checks that the root key can do what the
// mode needs, so a bad root key fails at creation, not at first use.
func (ms *Materials) NewVersion(ctx context.Context, k *managed.Key, rootKey string, v uint32) (managed.Version, error) {
	b, backendName, name, err := ms.roots.Resolve(rootKey)
	if err != nil {
		return managed.Version{}, err
	}
	if err := ms.roots.CheckRole(rootKey, backendName, name, k.Mode); err != nil {
		return managed.Version{}, err
	}
	ver := managed.Version{Version: v, RootKey: rootKey}
	var material *secret.Bytes
	switch k.Mode {
	case managed.ModeDerive:
		mac, ok := b.(backends.MACer)
		if !ok {
			return managed.Version{}, managed.Errorf(managed.ErrInvalidArgument, "root key %q: derive mode needs an HMAC-capable backend", rootKey)
		}
		if material, err = mac.MAC(backends.WithOp(ctx, "derive"), name, DeriveInput(k, v)); err != nil {
			return managed.Version{}, rootError(rootKey, err)
		}
	case managed.ModeWrap:
		raw, err := b.GenerateRandom(ctx, 32)
		if err != nil {
			return managed.Version{}, rootError(rootKey, err)
		}
		material = secret.New(raw)
		if ver.Wrapped, err = b.Encrypt(backends.WithOp(ctx, "wrap"), name, raw, WrapAAD(k, v)); err != nil {
			material.Destroy()
			return managed.Version{}, rootError(rootKey, err)
		}
	case managed.ModeBackend:
		if err := checkBackendRoot(ctx, b, name, k.Type, rootKey); err != nil {
			return managed.Version{}, err
		}
		if k.Type.Asymmetric() {
			pub, err := b.(backends.Signer).PublicKey(ctx, name)
			if err != nil {
				return managed.Version{}, rootError(rootKey, err)
			}
			if ver.PublicKey, err = x509.MarshalPKIXPublicKey(pub); err != nil {
				return managed.Version{}, err
			}
		}
		return ver, nil
	}
	defer material.Destroy()
	if k.Type.Asymmetric() {
		sk, err := managed.SigningKey(k.Type, material)
		if err != nil {
			return managed.Version{}, err
		}
		if ver.PublicKey, err = x509.MarshalPKIXPublicKey(sk.Public()); err != nil {
			return managed.Version{}, err
		}
	}
	return ver, nil
}

// checkBackendRoot verifies that a backend-mode root key has the algorithm
// the managed key type needs.
func checkBackendRoot(ctx context.Context, b backends.Backend, name string, t managed.KeyType, rootKey string) error {
	info, err := b.Describe(ctx, name)
	if err != nil {
		return rootError(rootKey, err)
	}
	want := map[managed.KeyType]backends.Algorithm{managed.AES256GCM: backends.AES256, managed.HMACSHA256: backends.HMAC256, managed.ECDSAP256: backends.ECDSAP256, managed.Ed25519: backends.Ed25519}[t]
	if info.Algorithm != want {
		return managed.Errorf(managed.ErrInvalidArgument, "root key %q is %s; a backend-mode %s key needs a %s root key", rootKey, info.Algorithm, t, want)
	}
	if t.Asymmetric() {
		if _, ok := b.(backends.Signer); !ok {
			return managed.Errorf(managed.ErrInvalidArgument, "root key %q: its backend cannot sign", rootKey)
		}
	}
	if t == managed.HMACSHA256 {
		if _, ok := b.(backends.MACer); !ok {
			return managed.Errorf(managed.ErrInvalidArgument, "root key %q: its backend has no HMAC", rootKey)
		}
	}
	return nil
}

// rootError keeps a backend error's classification and names the root key.
func rootError(rootKey string, err error) error {
	return fmt.Errorf("root key %q: %w", rootKey, err)
}

// Forget drops every cached version of keyID (on disable, deletion or a
// minimum-version change), in time proportional to their number: a scan
// of the whole cache took most of a RotateKey's CPU at a central whose
// cache had filled (a million keys on etcd: 372 rotations a second).
func (ms *Materials) Forget(keyID string) { ms.cache.ForgetGroup(keyID) }
