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

// KeyOperations is what a node does with a key its caller resolved and
// checked: Ops at the central tier and in an edge's cache, and a tier's
// pipeline performer, which may forward some of them.
type KeyOperations interface {
	Encrypt(ctx context.Context, k *Key, plaintext []byte, ectx map[string]string) (Encrypted, error)
	Decrypt(ctx context.Context, k *Key, h *envelope.Header, body []byte, ectx map[string]string) (Decrypted, error)
	// GenerateDataKey returns the wrapped form only when wrapped is set.
	GenerateDataKey(ctx context.Context, k *Key, ectx map[string]string, wrapped bool) (*DataKey, error)
	DecryptDataKey(ctx context.Context, k *Key, v uint32, wrapped []byte, ectx map[string]string) (UnwrappedDataKey, error)
	Sign(ctx context.Context, k *Key, msg []byte, digest bool) (Signature, error)
	PublicKey(ctx context.Context, k *Key, v uint32) (PublicKey, error)
	Verify(ctx context.Context, k *Key, v uint32, msg []byte, digest bool, sig []byte) (Verification, error)
	GenerateMac(ctx context.Context, k *Key, msg []byte) (MAC, error)
	VerifyMac(ctx context.Context, k *Key, v uint32, msg, tag []byte) (Verification, error)
}

var _ KeyOperations = (*Ops)(nil)

// Ops performs the key operations of the KeyBroker API on keys its caller
// resolved and checked: every method takes the *Key that was authorized
// (package pipeline resolves it once, authorizes it, and checks it with
// CheckUsable and Key.CheckDecryptVersion), never an id, and returns a
// result struct naming the key and version it used. Ops checks its inputs
// (sizes, encryption contexts, digests) but not the key's state or type:
// that is done once, before, by the caller. It knows nothing of
// transports, identities or policy.
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
	// byMaterial and byBackend are the two protections (protect picks
	// one per key), made once so that picking allocates nothing.
	byMaterial, byBackend protection
	reuser                *envelope.Reuser
	unwrap                *envelope.Cache
	wraps                 *wrapCounter
}

// New builds an Ops.
func New(c Config) (*Ops, error) {
	if c.Material == nil {
		return nil, errors.New("managed: a material source is required")
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
	return &Ops{byMaterial: byMaterial{c.Material}, byBackend: byBackend{c.Backend}, reuser: reuser,
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

// Operation is a key operation as CheckUsable checks it: it says which
// key type the operation needs and how refusals name it.
type Operation uint8

// Operations. GenerateDataKey is checked as OpEncrypt and Verify as
// OpPublicKey, the operations they are made of.
const (
	OpEncrypt Operation = iota + 1
	OpDecrypt
	OpDecryptDataKey
	OpSign
	OpPublicKey
	OpGenerateMac
	OpVerifyMac
)

var operations = [...]struct {
	name string
	typ  KeyType // "": any signing type
}{
	OpEncrypt:        {"Encrypt", AES256GCM},
	OpDecrypt:        {"Decrypt", AES256GCM},
	OpDecryptDataKey: {"DecryptDataKey", AES256GCM},
	OpSign:           {"Sign", ""},
	OpPublicKey:      {"GetPublicKey", ""},
	OpGenerateMac:    {"GenerateMac", HMACSHA256},
	OpVerifyMac:      {"VerifyMac", HMACSHA256},
}

// String is the operation's name in refusals.
func (op Operation) String() string {
	if int(op) < len(operations) && op != 0 {
		return operations[op].name
	}
	return "Operation(" + strconv.Itoa(int(op)) + ")"
}

// CheckUsable refuses an operation on k that its state or type forbids:
// k must be enabled (Key.Usable) and of the type op needs. It is the one
// check of usability: the caller that resolved k (package pipeline) makes
// it once, before the operation, and Ops does not make it again. The
// version an operation names is checked by Key.CheckDecryptVersion.
func CheckUsable(k *Key, op Operation) error {
	if err := k.Usable(); err != nil {
		return err
	}
	if op == 0 || int(op) >= len(operations) {
		return &Error{Kind: ErrInvalidArgument, Op: op.String(), Key: k.ID, Err: errors.New("unknown operation")}
	}
	t := operations[op].typ
	if k.Type != t && !(t == "" && k.Type.Asymmetric()) {
		return &Error{Kind: ErrInvalidArgument, Op: op.String(), Key: k.ID,
			Err: fmt.Errorf("key %q is %s; %s needs %s", k.ID, k.Type, op, describeType(t))}
	}
	return nil
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

// ErrBadCiphertext is the cause of every failure to open a ciphertext (an
// InvalidArgument), one text for all of them, so that a front-end can name
// it as its protocol does (AWS's InvalidCiphertextException).
var ErrBadCiphertext = errors.New("decryption failed: wrong encryption context, or a tampered or foreign ciphertext")

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

// Encrypted is what Encrypt returns.
type Encrypted struct {
	Ciphertext []byte
	// Key is the key that sealed it, Version the version (the primary).
	Key     *Key
	Version uint32
}

// Encrypt seals plaintext under k's primary version, reusing data keys
// within the reuse policy. k is the key the caller resolved, authorized
// and checked (CheckUsable with OpEncrypt).
func (o *Ops) Encrypt(ctx context.Context, k *Key, plaintext []byte, ectx map[string]string) (Encrypted, error) {
	if len(plaintext) > MaxPlaintext {
		return Encrypted{}, Errorf(ErrInvalidArgument, "plaintext is %d bytes, limit %d", len(plaintext), MaxPlaintext)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return Encrypted{}, Errorf(ErrInvalidArgument, "%w", err)
	}
	v := k.Primary
	part, err := partition(k, v, ectx)
	if err != nil {
		return Encrypted{}, err
	}
	dk, err := o.reuser.Get(ctx, part, len(plaintext), func(ctx context.Context) (*envelope.DataKey, error) {
		return o.newDataKey(ctx, k, v, ectx)
	})
	if err != nil {
		return Encrypted{}, err
	}
	ct, err := dk.Seal(plaintext, ectx)
	if err != nil {
		return Encrypted{}, Errorf(ErrInvalidArgument, "%w", err)
	}
	return Encrypted{Ciphertext: ct, Key: k, Version: v}, nil
}

// Decrypted is what Decrypt returns.
type Decrypted struct {
	Plaintext []byte
	// Key is the key that opened it, Version the version.
	Key     *Key
	Version uint32
}

// ParseCiphertext parses a ciphertext's header, once, for the caller to
// authorize the key it names and hand to Decrypt.
func ParseCiphertext(ciphertext []byte) (*envelope.Header, []byte, error) {
	h, body, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	return h, body, nil
}

// Decrypt opens the ciphertext of header h and body (ParseCiphertext)
// with k, the key h names, which the caller resolved, authorized and
// checked (CheckUsable with OpDecrypt, CheckDecryptVersion of h.Version).
func (o *Ops) Decrypt(ctx context.Context, k *Key, h *envelope.Header, body []byte, ectx map[string]string) (Decrypted, error) {
	if h.KeyID != k.ID {
		return Decrypted{}, Errorf(ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, k.ID)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return Decrypted{}, Errorf(ErrInvalidArgument, "%w", err)
	}
	dk, err := o.openDataKey(ctx, k, h, ectx)
	if err != nil {
		return Decrypted{}, err
	}
	pt, err := dk.Open(h, body, ectx)
	if err != nil {
		return Decrypted{}, &Error{Kind: ErrInvalidArgument, Err: ErrBadCiphertext}
	}
	return Decrypted{Plaintext: pt, Key: k, Version: h.Version}, nil
}

// PeekKeyID returns the key and version a ciphertext names, for routing
// before decryption.
func PeekKeyID(ciphertext []byte) (string, uint32, error) {
	h, _, err := ParseCiphertext(ciphertext)
	if err != nil {
		return "", 0, err
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
	// Key is the key, Version the version that wrapped the data key.
	Key     *Key
	Version uint32
}

// GenerateDataKey returns a fresh 32-byte data key, k's ciphertext of it
// and, when wrapped is set, the data key wrapped for a ciphertext header
// (for backend-mode keys that is one backend call). k is checked as for
// Encrypt.
func (o *Ops) GenerateDataKey(ctx context.Context, k *Key, ectx map[string]string, wrapped bool) (*DataKey, error) {
	raw := make([]byte, envelope.DEKSize)
	_, _ = rand.Read(raw)
	dek := secret.New(raw)
	enc, err := o.Encrypt(ctx, k, raw, ectx)
	if err != nil {
		dek.Destroy()
		return nil, err
	}
	out := &DataKey{Plaintext: dek, Encrypted: enc.Ciphertext, Key: k, Version: enc.Version}
	if wrapped {
		if out.Wrapped, err = o.wrapDataKey(ctx, k, enc.Version, ectx, raw); err != nil {
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

// UnwrappedDataKey is what DecryptDataKey returns.
type UnwrappedDataKey struct {
	// Plaintext is the data key; the caller destroys it.
	Plaintext *secret.Bytes
	Key       *Key
	Version   uint32
}

// DecryptDataKey returns the data key of a ciphertext whose header names
// k, version v and the wrapped data key. The caller resolved, authorized
// and checked k (CheckUsable with OpDecryptDataKey, CheckDecryptVersion of
// v); the encryption context is checked here, and for derived keys it
// selects the key that unwraps.
func (o *Ops) DecryptDataKey(ctx context.Context, k *Key, v uint32, wrapped []byte, ectx map[string]string) (UnwrappedDataKey, error) {
	h, err := envelope.NewDataKeyHeader(k.ID, v, wrapped)
	if err != nil {
		return UnwrappedDataKey{}, Errorf(ErrInvalidArgument, "%w", err)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return UnwrappedDataKey{}, Errorf(ErrInvalidArgument, "%w", err)
	}
	if k.Derived {
		// The unwrap cache is keyed by the wrapped data key alone, which
		// is right for Decrypt (the message's tag checks the context) but
		// would hand this data key out under any context.
		dk, err := o.protect(k).unwrapDataKey(ctx, k, h, ectx)
		if err != nil {
			return UnwrappedDataKey{}, err
		}
		return UnwrappedDataKey{Plaintext: dk.Key(), Key: k, Version: v}, nil
	}
	dk, err := o.openDataKey(ctx, k, h, ectx)
	if err != nil {
		return UnwrappedDataKey{}, err
	}
	return UnwrappedDataKey{Plaintext: dk.Key().Clone(), Key: k, Version: v}, nil
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

// Signature is what Sign returns.
type Signature struct {
	Signature []byte
	// Key is the key that signed, Version the version (the primary).
	Key     *Key
	Version uint32
}

// Sign signs msg (a SHA-256 digest when digest is set) with k's primary
// version. The caller checked k (CheckUsable with OpSign).
func (o *Ops) Sign(ctx context.Context, k *Key, msg []byte, digest bool) (Signature, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return Signature{}, Errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	v := k.Primary
	sig, err := o.sign(ctx, k, v, msg, digest)
	if err != nil {
		return Signature{}, err
	}
	return Signature{Signature: sig, Key: k, Version: v}, nil
}

// PublicKey is what Ops.PublicKey returns.
type PublicKey struct {
	// DER is the SubjectPublicKeyInfo.
	DER     []byte
	Key     *Key
	Version uint32
}

// PublicKey returns version v of k's DER public key. The caller resolved
// v (0 is the primary: Key.At) and checked k (CheckUsable with
// OpPublicKey, CheckDecryptVersion of v).
func (o *Ops) PublicKey(_ context.Context, k *Key, v uint32) (PublicKey, error) {
	kv := k.Version(v)
	if kv == nil {
		return PublicKey{}, k.CheckDecryptVersion(v)
	}
	return PublicKey{DER: kv.PublicKey, Key: k, Version: v}, nil
}

// Verification is what Verify and VerifyMac return.
type Verification struct {
	Valid   bool
	Key     *Key
	Version uint32
}

// Verify checks a signature with version v of k's public key, whatever
// k's mode. The caller checked k and v as for PublicKey.
func (o *Ops) Verify(ctx context.Context, k *Key, v uint32, msg []byte, digest bool, sig []byte) (Verification, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return Verification{}, Errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	pk, err := o.PublicKey(ctx, k, v)
	if err != nil {
		return Verification{}, err
	}
	pub, err := x509.ParsePKIXPublicKey(pk.DER)
	if err != nil {
		return Verification{}, fmt.Errorf("managed: key %q version %d: stored public key: %w", k.ID, v, err)
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		d := msg
		if !digest {
			sum := sha256.Sum256(msg)
			d = sum[:]
		} else if len(d) != sha256.Size {
			return Verification{}, Errorf(ErrInvalidArgument, "digest is %d bytes, want 32 (SHA-256)", len(d))
		}
		return Verification{Valid: ecdsa.VerifyASN1(p, d, sig), Key: k, Version: v}, nil
	case ed25519.PublicKey:
		if digest || k.Type != Ed25519 {
			return Verification{}, Errorf(ErrInvalidArgument, "ed25519 keys verify messages, not digests")
		}
		return Verification{Valid: ed25519.Verify(p, msg, sig), Key: k, Version: v}, nil
	}
	return Verification{}, fmt.Errorf("managed: key %q: unexpected public key type %T", k.ID, pub)
}

// MAC is what GenerateMac returns.
type MAC struct {
	Tag []byte
	// Key is the key, Version the version (the primary).
	Key     *Key
	Version uint32
}

// GenerateMac computes a MAC with k's primary version. The caller checked
// k (CheckUsable with OpGenerateMac).
func (o *Ops) GenerateMac(ctx context.Context, k *Key, msg []byte) (MAC, error) {
	if err := o.checkMACInput(k, msg); err != nil {
		return MAC{}, err
	}
	v := k.Primary
	tag, err := o.protect(k).mac(ctx, k, v, msg)
	if err != nil {
		return MAC{}, err
	}
	// The tag is public; the secret.Bytes holding it is zeroed when
	// collected, so the caller gets a copy of its own.
	defer tag.Destroy()
	return MAC{Tag: bytes.Clone(tag.Reveal()), Key: k, Version: v}, nil
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

// VerifyMac checks a MAC in constant time with version v of k. The caller
// resolved v (Key.At) and checked k (CheckUsable with OpVerifyMac,
// CheckDecryptVersion of v).
func (o *Ops) VerifyMac(ctx context.Context, k *Key, v uint32, msg, tag []byte) (Verification, error) {
	if err := o.checkMACInput(k, msg); err != nil {
		return Verification{}, err
	}
	want, err := o.protect(k).mac(ctx, k, v, msg)
	if err != nil {
		return Verification{}, err
	}
	defer want.Destroy()
	return Verification{Valid: hmac.Equal(want.Reveal(), tag), Key: k, Version: v}, nil
}

// Page returns the keys whose labels include every selector pair and that
// visible keeps (nil keeps every key), a page at a time; the token is
// PageToken's cursor (see PageAfter), "" for the first page. keys must be
// sorted by id. A page is filled from kept keys only, and the next token
// names the page's last key, so a caller shown only kept keys learns
// nothing of the others; it is "" when no kept key follows.
func Page(keys []*Key, selector map[string]string, pageSize int, token string, visible func(*Key) bool) ([]*Key, string, error) {
	pageSize, err := CheckPageSize(pageSize)
	if err != nil {
		return nil, "", err
	}
	after, err := PageAfter(token, selector)
	if err != nil {
		return nil, "", err
	}
	var out []*Key
	start := sort.Search(len(keys), func(i int) bool { return keys[i].ID > after })
	for _, k := range keys[start:] {
		if !k.Matches(selector) || (visible != nil && !visible(k)) {
			continue
		}
		if len(out) == pageSize {
			return out, PageToken(selector, out[len(out)-1].ID), nil
		}
		out = append(out, k)
	}
	return out, "", nil
}

// CheckPageSize is a ListKeys page size: 100 when 0 or less, and at most
// MaxListPageSize.
func CheckPageSize(pageSize int) (int, error) {
	if pageSize <= 0 {
		return 100, nil
	}
	if pageSize > MaxListPageSize {
		return 0, Errorf(ErrInvalidArgument, "page size %d above %d", pageSize, MaxListPageSize)
	}
	return pageSize, nil
}
