package managed

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/secret"
)

// Request limits, the same at every node (the gRPC layer bounds whole
// messages too).
const (
	MaxPlaintext = 4 << 20
	MaxSignInput = 64 << 10
	// MaxBackendMACInput is the roots of trust's MAC input limit, which
	// bounds MACs of backend-mode keys (backends.MaxMACInput).
	MaxBackendMACInput = 4 << 10
	MaxListPageSize    = 1000
)

// KeySource finds keys by id: the registry at the central tier, the replica
// at an edge.
type KeySource interface {
	Get(ctx context.Context, id string) (*Key, error)
}

// MaterialSource gives a key version's 32 bytes of material. The caller
// owns the secret it returns and destroys it after use, so a source can
// zero its cached copy on eviction without pulling it from under a call.
type MaterialSource interface {
	Material(ctx context.Context, k *Key, v uint32) (*secret.Bytes, error)
}

// Backend performs the operations of backend-mode keys, whose material
// never leaves the root of trust. Only the central tier has one.
type Backend interface {
	// WrapDataKey encrypts a data key under version v.
	WrapDataKey(ctx context.Context, k *Key, v uint32, dek []byte) ([]byte, error)
	// UnwrapDataKey recovers a data key; a data key that does not open is
	// an ErrInvalidArgument.
	UnwrapDataKey(ctx context.Context, k *Key, v uint32, wrapped []byte) (*secret.Bytes, error)
	// Sign signs the message (Ed25519) or SHA-256 digest (ECDSA P-256).
	Sign(ctx context.Context, k *Key, v uint32, input []byte) ([]byte, error)
	// MAC computes HMAC-SHA256.
	MAC(ctx context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error)
}

// Config assembles an Ops.
type Config struct {
	Keys     KeySource
	Material MaterialSource
	// Backend serves backend-mode keys; nil refuses them with
	// ErrFailedPrecondition.
	Backend Backend
	// Reuse bounds data-key reuse for Encrypt (zero fields take defaults).
	Reuse envelope.ReusePolicy
	// ReuseEntries and UnwrapEntries bound the data-key caches (default
	// 1024 each).
	ReuseEntries, UnwrapEntries int
	// UnwrapTTL is how long an unwrapped data key stays cached (default 5
	// minutes).
	UnwrapTTL time.Duration
	// MaxDataKeysPerVersion bounds the data keys this node wraps under one
	// key version (0: DefaultMaxDataKeysPerVersion; at most
	// MaxMaxDataKeysPerVersion); past it new data keys are refused with
	// ErrFailedPrecondition until the key is rotated.
	MaxDataKeysPerVersion uint64
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Ops performs the key operations of the KeyBroker API on keys from a
// KeySource. It knows nothing of transports, identities or policy: the
// gRPC layer authorizes and audits around it.
//
// # Caching
//
// Encrypt reuses one data key per (key, salt, version, context partition)
// within the reuse policy; Decrypt keeps unwrapped data keys in a bounded
// cache keyed by the key, its salt and the wrapped data key, so a key
// created again under a deleted id meets none of its predecessor's data
// keys even when Forget was missed. Concurrent misses for one
// entry are coalesced, so N cold requests cost one material fetch and one
// unwrap. Forget drops both caches' entries for a key.
//
// # Data keys per key version
//
// Every data key this node wraps under a key version is counted when it is
// made (a reuse miss, a GenerateDataKey), never per message, per
// key-encryption key: per version, and for derived keys per version and
// encryption context (in a fixed-size sketch that can only overcount).
// Past Config.MaxDataKeysPerVersion that key-encryption key makes no more
// and Encrypt and GenerateDataKey fail with ErrFailedPrecondition saying
// to rotate. Counts are kept per key incarnation, so a key created again
// under a deleted id starts from zero.
// DefaultMaxDataKeysPerVersion explains the bound and the cluster-wide
// reasoning. The counts are per process: a restart starts them again.
type Ops struct {
	keys KeySource
	// byMaterial and byBackend are the two protections (protect picks
	// one per key), made once so that picking allocates nothing.
	byMaterial, byBackend protection
	reuser                *envelope.Reuser
	unwrap                *envelope.Cache
	wraps                 *wrapCounter
}

// New builds an Ops.
func New(c Config) (*Ops, error) {
	if c.Keys == nil || c.Material == nil {
		return nil, errors.New("managed: a key source and a material source are required")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxDataKeysPerVersion > MaxMaxDataKeysPerVersion {
		return nil, fmt.Errorf("managed: %d data keys per version is more than %d", c.MaxDataKeysPerVersion, uint64(MaxMaxDataKeysPerVersion))
	}
	reuser, err := envelope.NewReuser(c.Reuse, cmpOr(c.ReuseEntries, 1024), c.Now)
	if err != nil {
		return nil, err
	}
	return &Ops{keys: c.Keys, byMaterial: byMaterial{c.Material}, byBackend: byBackend{c.Backend}, reuser: reuser,
		unwrap: envelope.NewCache(cmpOr(c.UnwrapEntries, 1024), cmpOrDur(c.UnwrapTTL, 5*time.Minute), c.Now),
		wraps:  newWrapCounter(c.MaxDataKeysPerVersion)}, nil
}

func cmpOr(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

func cmpOrDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Forget drops the data keys cached for a key (on disable, rotation,
// deletion or a minimum-version change).
func (o *Ops) Forget(id string) {
	o.unwrap.Purge(id)
	prefix := id + "\x00"
	o.reuser.Forget(func(p string) bool { return strings.HasPrefix(p, prefix) })
}

// ForgetAll drops every cached data key, for reuse and unwrapped.
func (o *Ops) ForgetAll() {
	o.unwrap.PurgeAll()
	o.reuser.Forget(func(string) bool { return true })
}

// DataKeysCreated counts the data keys Encrypt has made.
func (o *Ops) DataKeysCreated() uint64 { return o.reuser.Created() }

// DataKeysRefused counts the data keys refused because their key version
// had reached MaxDataKeysPerVersion at this node.
func (o *Ops) DataKeysRefused() uint64 { return o.wraps.refused.Load() }

// DataKeysWrapped is how many data keys this node has wrapped under
// version v of k (this incarnation of it; every context of a derived key).
func (o *Ops) DataKeysWrapped(k *Key, v uint32) uint64 { return o.wraps.count(k, v) }

// UnwrapStats reports the unwrap cache's hits, misses and evictions.
func (o *Ops) UnwrapStats() (hits, misses, evictions uint64) { return o.unwrap.Stats() }

// UsableKey loads a key and checks it is enabled and of type t ("" means
// any signing type).
func (o *Ops) UsableKey(ctx context.Context, id string, t KeyType, op string) (*Key, error) {
	k, err := o.keys.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := k.Usable(); err != nil {
		return nil, err
	}
	if k.Type != t && !(t == "" && k.Type.Asymmetric()) {
		return nil, Errorf(ErrInvalidArgument, "key %q is %s; %s needs %s", id, k.Type, op, describeType(t))
	}
	return k, nil
}

func describeType(t KeyType) string {
	if t == "" {
		return "an ecdsa-p256 or ed25519 key"
	}
	return "an " + string(t) + " key"
}

// newDataKey makes a data key for sealing under version v of k.
func (o *Ops) newDataKey(ctx context.Context, k *Key, v uint32, ectx map[string]string) (*envelope.DataKey, error) {
	raw := make([]byte, envelope.DEKSize)
	_, _ = rand.Read(raw)
	dek := secret.New(raw)
	wrapped, err := o.wrapDataKey(ctx, k, v, ectx, raw)
	if err != nil {
		dek.Destroy()
		return nil, err
	}
	return envelope.NewDataKey(k.ID, v, dek, wrapped)
}

// errBadCiphertext is what every failure to open a ciphertext says.
const errBadCiphertext = "decryption failed: wrong encryption context, or a tampered or foreign ciphertext"

// openDataKey recovers the data key of a parsed ciphertext.
func (o *Ops) openDataKey(ctx context.Context, k *Key, h *envelope.Header, ectx map[string]string) (*envelope.DataKey, error) {
	return o.unwrap.GetIncarnation(ctx, h, k.Incarnation(), func(ctx context.Context) (*envelope.DataKey, error) {
		return o.protect(k).unwrapDataKey(ctx, k, h, ectx)
	})
}

// partition is the reuse-cache key: key, version, the key's incarnation
// (a key created again under a deleted id reuses none of its
// predecessor's data keys) and, for derived keys, the context (each
// context has its own KEK).
func partition(k *Key, v uint32, ectx map[string]string) (string, error) {
	p := k.ID + "\x00" + strconv.FormatUint(uint64(v), 10) + "\x00" + k.Incarnation() + "\x00"
	if k.Derived {
		c, err := envelope.CanonicalContext(ectx)
		if err != nil {
			return "", Errorf(ErrInvalidArgument, "%w", err)
		}
		sum := sha256.Sum256(c)
		p += hex.EncodeToString(sum[:])
	}
	return p, nil
}

// Encrypt seals plaintext under the key's primary version, reusing data
// keys within the reuse policy.
func (o *Ops) Encrypt(ctx context.Context, id string, plaintext []byte, ectx map[string]string) ([]byte, *Key, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, nil, Errorf(ErrInvalidArgument, "plaintext is %d bytes, limit %d", len(plaintext), MaxPlaintext)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return nil, nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	k, err := o.UsableKey(ctx, id, AES256GCM, "Encrypt")
	if err != nil {
		return nil, nil, err
	}
	v := k.Primary
	part, err := partition(k, v, ectx)
	if err != nil {
		return nil, nil, err
	}
	dk, err := o.reuser.Get(ctx, part, len(plaintext), func(ctx context.Context) (*envelope.DataKey, error) {
		return o.newDataKey(ctx, k, v, ectx)
	})
	if err != nil {
		return nil, nil, err
	}
	ct, err := dk.Seal(plaintext, ectx)
	if err != nil {
		return nil, nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	return ct, k, nil
}

// Decrypt opens a ciphertext. expectKey, when set, must be the key the
// ciphertext names.
func (o *Ops) Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string, expectKey string) ([]byte, *Key, uint32, error) {
	h, body, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, nil, 0, Errorf(ErrInvalidArgument, "%w", err)
	}
	if expectKey != "" && expectKey != h.KeyID {
		return nil, nil, 0, Errorf(ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, expectKey)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return nil, nil, 0, Errorf(ErrInvalidArgument, "%w", err)
	}
	k, err := o.UsableKey(ctx, h.KeyID, AES256GCM, "Decrypt")
	if err != nil {
		return nil, nil, 0, err
	}
	if err := k.CheckDecryptVersion(h.Version); err != nil {
		return nil, nil, 0, err
	}
	dk, err := o.openDataKey(ctx, k, h, ectx)
	if err != nil {
		return nil, nil, 0, err
	}
	pt, err := dk.Open(h, body, ectx)
	if err != nil {
		return nil, nil, 0, Errorf(ErrInvalidArgument, errBadCiphertext)
	}
	return pt, k, h.Version, nil
}

// PeekKeyID returns the key and version a ciphertext names, for
// authorization and routing before decryption.
func PeekKeyID(ciphertext []byte) (string, uint32, error) {
	h, _, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return "", 0, Errorf(ErrInvalidArgument, "%w", err)
	}
	return h.KeyID, h.Version, nil
}

// DataKey is what GenerateDataKey returns.
type DataKey struct {
	// Plaintext is the 32-byte data key; the caller destroys it.
	Plaintext *secret.Bytes
	// Encrypted is the key's ciphertext of the data key (Decrypt opens it).
	Encrypted []byte
	// Wrapped is the data key as a ciphertext header carries it, so that a
	// client can seal ciphertexts under it that any node opens; nil unless
	// asked for.
	Wrapped []byte
	// Key is the key, at the version that wrapped the data key.
	Key *Key
}

// GenerateDataKey returns a fresh 32-byte data key, the key's ciphertext
// of it and, when wrapped is set, the data key wrapped for a ciphertext
// header (for backend-mode keys that is one backend call).
func (o *Ops) GenerateDataKey(ctx context.Context, id string, ectx map[string]string, wrapped bool) (*DataKey, error) {
	raw := make([]byte, envelope.DEKSize)
	_, _ = rand.Read(raw)
	dek := secret.New(raw)
	ct, k, err := o.Encrypt(ctx, id, raw, ectx)
	if err != nil {
		dek.Destroy()
		return nil, err
	}
	out := &DataKey{Plaintext: dek, Encrypted: ct, Key: k}
	if wrapped {
		if out.Wrapped, err = o.wrapDataKey(ctx, k, k.Primary, ectx, raw); err != nil {
			dek.Destroy()
			return nil, err
		}
	}
	return out, nil
}

// wrapDataKey wraps dek for a ciphertext header under version v of k,
// counting it against the version's bound first.
func (o *Ops) wrapDataKey(ctx context.Context, k *Key, v uint32, ectx map[string]string, dek []byte) ([]byte, error) {
	p := o.protect(k)
	if err := p.ready(k); err != nil {
		return nil, err
	}
	if err := o.wraps.take(k, v, ectx); err != nil {
		return nil, err
	}
	return p.wrapDataKey(ctx, k, v, ectx, dek)
}

// DecryptDataKey returns the data key of a ciphertext whose header names
// key id, version v and the wrapped data key, after the same checks as
// Decrypt (key state, minimum version, encryption context for derived
// keys). The caller destroys the result.
func (o *Ops) DecryptDataKey(ctx context.Context, id string, v uint32, wrapped []byte, ectx map[string]string) (*secret.Bytes, *Key, error) {
	h, err := envelope.NewDataKeyHeader(id, v, wrapped)
	if err != nil {
		return nil, nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return nil, nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	k, err := o.UsableKey(ctx, id, AES256GCM, "DecryptDataKey")
	if err != nil {
		return nil, nil, err
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return nil, nil, err
	}
	if k.Derived {
		// The unwrap cache is keyed by the wrapped data key alone, which
		// is right for Decrypt (the message's tag checks the context) but
		// would hand this data key out under any context.
		dk, err := o.protect(k).unwrapDataKey(ctx, k, h, ectx)
		if err != nil {
			return nil, nil, err
		}
		return dk.Key(), k, nil
	}
	dk, err := o.openDataKey(ctx, k, h, ectx)
	if err != nil {
		return nil, nil, err
	}
	return dk.Key().Clone(), k, nil
}

// sign signs msg (or a digest) with version v of k.
func (o *Ops) sign(ctx context.Context, k *Key, v uint32, msg []byte, digest bool) ([]byte, error) {
	if k.Type == Ed25519 && digest {
		return nil, Errorf(ErrInvalidArgument, "ed25519 keys sign messages, not digests")
	}
	input := msg
	if k.Type == ECDSAP256 {
		if digest {
			if len(msg) != sha256.Size {
				return nil, Errorf(ErrInvalidArgument, "digest is %d bytes, want 32 (SHA-256)", len(msg))
			}
		} else {
			sum := sha256.Sum256(msg)
			input = sum[:]
		}
	}
	return o.protect(k).sign(ctx, k, v, input)
}

// Sign signs with the primary version.
func (o *Ops) Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *Key, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return nil, nil, Errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	k, err := o.UsableKey(ctx, id, "", "Sign")
	if err != nil {
		return nil, nil, err
	}
	sig, err := o.sign(ctx, k, k.Primary, msg, digest)
	return sig, k, err
}

// PublicKey returns the DER public key of version v (0: primary).
func (o *Ops) PublicKey(ctx context.Context, id string, v uint32) ([]byte, *Key, uint32, error) {
	k, err := o.UsableKey(ctx, id, "", "GetPublicKey")
	if err != nil {
		return nil, nil, 0, err
	}
	if v == 0 {
		v = k.Primary
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return nil, nil, 0, err
	}
	return k.Version(v).PublicKey, k, v, nil
}

// Verify checks a signature with version v's public key (0: primary).
func (o *Ops) Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return false, 0, Errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	der, k, v, err := o.PublicKey(ctx, id, v)
	if err != nil {
		return false, 0, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return false, 0, fmt.Errorf("managed: key %q version %d: stored public key: %w", id, v, err)
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		d := msg
		if !digest {
			sum := sha256.Sum256(msg)
			d = sum[:]
		} else if len(d) != sha256.Size {
			return false, 0, Errorf(ErrInvalidArgument, "digest is %d bytes, want 32 (SHA-256)", len(d))
		}
		return ecdsa.VerifyASN1(p, d, sig), v, nil
	case ed25519.PublicKey:
		if digest || k.Type != Ed25519 {
			return false, 0, Errorf(ErrInvalidArgument, "ed25519 keys verify messages, not digests")
		}
		return ed25519.Verify(p, msg, sig), v, nil
	}
	return false, 0, fmt.Errorf("managed: key %q: unexpected public key type %T", id, pub)
}

// GenerateMac computes a MAC with the primary version.
func (o *Ops) GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *Key, error) {
	k, err := o.UsableKey(ctx, id, HMACSHA256, "GenerateMac")
	if err != nil {
		return nil, nil, err
	}
	if err := o.checkMACInput(k, msg); err != nil {
		return nil, nil, err
	}
	tag, err := o.protect(k).mac(ctx, k, k.Primary, msg)
	if err != nil {
		return nil, nil, err
	}
	// The tag is public; the secret.Bytes holding it is zeroed when
	// collected, so the caller gets a copy of its own.
	defer tag.Destroy()
	return bytes.Clone(tag.Reveal()), k, nil
}

// checkMACInput bounds a MAC message: 64 KiB, or for backend-mode keys
// the roots of trust's 4 KiB less the domain prefix the backend MACs
// with the message (BackendMACInput).
func (o *Ops) checkMACInput(k *Key, msg []byte) error {
	limit := o.protect(k).macInputLimit(k)
	if len(msg) == 0 || len(msg) > limit {
		return Errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), limit)
	}
	return nil
}

// VerifyMac checks a MAC in constant time with version v (0: primary).
func (o *Ops) VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error) {
	k, err := o.UsableKey(ctx, id, HMACSHA256, "VerifyMac")
	if err != nil {
		return false, 0, err
	}
	if err := o.checkMACInput(k, msg); err != nil {
		return false, 0, err
	}
	if v == 0 {
		v = k.Primary
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return false, 0, err
	}
	want, err := o.protect(k).mac(ctx, k, v, msg)
	if err != nil {
		return false, 0, err
	}
	defer want.Destroy()
	return hmac.Equal(want.Reveal(), tag), v, nil
}

// Page returns the keys whose labels include every selector pair and that
// visible keeps (nil keeps every key), a page at a time; the token is the
// last id of the previous page. keys must be sorted by id. A page is
// filled from kept keys only, and the next token is the id of the page's
// last key, so a caller shown only kept keys learns nothing of the others.
func Page(keys []*Key, selector map[string]string, pageSize int, token string, visible func(*Key) bool) ([]*Key, string, error) {
	if pageSize <= 0 {
		pageSize = 100
	}
	if pageSize > MaxListPageSize {
		return nil, "", Errorf(ErrInvalidArgument, "page size %d above %d", pageSize, MaxListPageSize)
	}
	var out []*Key
	start := sort.Search(len(keys), func(i int) bool { return keys[i].ID > token })
	for _, k := range keys[start:] {
		match := true
		for lk, lv := range selector {
			if k.Labels[lk] != lv {
				match = false
				break
			}
		}
		if !match || (visible != nil && !visible(k)) {
			continue
		}
		if len(out) == pageSize {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, k)
	}
	return out, "", nil
}
