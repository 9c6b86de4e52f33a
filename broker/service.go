package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// Request limits enforced by the service (the gRPC layer bounds whole
// messages too).
const (
	MaxPlaintext    = 4 << 20
	MaxSignInput    = 64 << 10
	MaxRandom       = 1024
	MaxListPageSize = 1000
)

// ServiceConfig assembles a Service.
type ServiceConfig struct {
	Registry  *Registry
	Roots     *Roots
	Materials *Materials
	// DefaultRoots gives the root key URI for each mode when CreateKey
	// names none.
	DefaultRoots map[Mode]string
	// Reuse bounds data-key reuse for Encrypt (zero fields take defaults).
	Reuse envelope.ReusePolicy
	// ReuseEntries and UnwrapEntries bound the data-key caches.
	ReuseEntries, UnwrapEntries int
	// UnwrapTTL is how long an unwrapped data key stays cached.
	UnwrapTTL time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Service performs every KeyBroker and KeyAdmin operation at the central
// tier, for every key mode. It knows nothing of transports, identities or
// policy: the gRPC layer authorizes and audits around it.
type Service struct {
	reg      *Registry
	roots    *Roots
	mat      *Materials
	defaults map[Mode]string
	reuser   *envelope.Reuser
	unwrap   *envelope.Cache
	now      func() time.Time
}

// NewService builds a Service.
func NewService(c ServiceConfig) (*Service, error) {
	if c.Registry == nil || c.Roots == nil || c.Materials == nil {
		return nil, errors.New("broker: service needs a registry, roots and materials")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	reuser, err := envelope.NewReuser(c.Reuse, max(c.ReuseEntries, 1024), c.Now)
	if err != nil {
		return nil, err
	}
	if c.UnwrapTTL == 0 {
		c.UnwrapTTL = 5 * time.Minute
	}
	return &Service{
		reg: c.Registry, roots: c.Roots, mat: c.Materials, defaults: maps.Clone(c.DefaultRoots),
		reuser: reuser, unwrap: envelope.NewCache(max(c.UnwrapEntries, 1024), c.UnwrapTTL, c.Now), now: c.Now,
	}, nil
}

// Registry returns the key registry.
func (s *Service) Registry() *Registry { return s.reg }

// Roots returns the roots of trust.
func (s *Service) Roots() *Roots { return s.roots }

// CreateParams describes a new key.
type CreateParams struct {
	ID             string
	Type           KeyType
	Mode           Mode
	Derived        bool
	RootKey        string
	Labels         map[string]string
	RotationPeriod time.Duration
	Description    string
	Placement      string
}

// CreateKey creates a key and its first version.
func (s *Service) CreateKey(ctx context.Context, p CreateParams) (*Key, error) {
	k := &Key{ID: p.ID, Type: p.Type, Mode: p.Mode, Derived: p.Derived, State: StateEnabled,
		Labels: maps.Clone(p.Labels), RotationPeriod: p.RotationPeriod, Description: p.Description, Placement: p.Placement, Primary: 1}
	root := p.RootKey
	if root == "" {
		root = s.defaults[p.Mode]
	}
	// Validate everything that does not need the backend before asking it.
	if err := k.validateMeta(); err != nil {
		return nil, err
	}
	if root == "" {
		return nil, errorf(ErrInvalidArgument, "no root key given and no default root key for %s mode", p.Mode)
	}
	if _, err := s.reg.Get(ctx, p.ID); err == nil {
		return nil, errorf(ErrAlreadyExists, "key %q already exists", p.ID)
	}
	v, err := s.mat.NewVersion(ctx, k, root, 1)
	if err != nil {
		return nil, err
	}
	v.Created = s.now().UTC()
	k.Versions = []Version{v}
	if k.RotationPeriod > 0 {
		k.NextRotation = s.now().Add(k.RotationPeriod).UTC()
	}
	return s.reg.Create(ctx, k)
}

// RotateKey adds a version on the primary version's root key.
func (s *Service) RotateKey(ctx context.Context, id string) (*Key, error) {
	for range maxCASRetries {
		k, err := s.reg.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := k.Usable(); err != nil {
			return nil, err
		}
		// A backend-mode signing or MAC key is the backend key itself: a new
		// version on the same root would be the same key, and retiring the
		// old version would retire nothing. (Backend-mode AES keys rotate:
		// each data key is bound to its version.)
		if k.Mode == ModeBackend && k.Type != AES256GCM {
			return nil, errorf(ErrFailedPrecondition, "key %q is a backend-mode %s key: its one backend key cannot be rotated; create a new key on a new root", id, k.Type)
		}
		next := uint32(len(k.Versions) + 1)
		v, err := s.mat.NewVersion(ctx, k, k.PrimaryVersion().RootKey, next)
		if err != nil {
			return nil, err
		}
		out, err := s.reg.Update(ctx, id, k.Revision, AddVersion(s.now(), v))
		if errors.Is(err, ErrConflict) {
			continue // another change landed; prepare against the new state
		}
		if err == nil {
			s.forget(id)
		}
		return out, err
	}
	return nil, errorf(ErrConflict, "key %q: too many concurrent changes", id)
}

// UpdateParams changes a key's metadata; nil fields stay as they are.
type UpdateParams struct {
	ID                   string
	ExpectedRevision     uint64
	Description          *string
	Labels               map[string]string
	ReplaceLabels        bool
	RotationPeriod       *time.Duration
	MinDecryptionVersion *uint32
	Placement            *string
}

// UpdateKey changes metadata with a compare-and-swap.
func (s *Service) UpdateKey(ctx context.Context, p UpdateParams) (*Key, error) {
	if err := ValidateLabels(p.Labels); err != nil {
		return nil, err
	}
	k, err := s.reg.Update(ctx, p.ID, p.ExpectedRevision, func(k *Key) error {
		if k.State == StatePendingDeletion {
			return errorf(ErrFailedPrecondition, "key %q is pending deletion", k.ID)
		}
		if p.Description != nil {
			k.Description = *p.Description
		}
		if p.ReplaceLabels {
			k.Labels = maps.Clone(p.Labels)
		} else if len(p.Labels) > 0 {
			if k.Labels == nil {
				k.Labels = map[string]string{}
			}
			maps.Copy(k.Labels, p.Labels)
		}
		if p.RotationPeriod != nil {
			k.RotationPeriod = *p.RotationPeriod
			k.NextRotation = time.Time{}
			if k.RotationPeriod > 0 {
				k.NextRotation = s.now().Add(k.RotationPeriod).UTC()
			}
		}
		if p.MinDecryptionVersion != nil {
			k.MinDecryptionVersion = *p.MinDecryptionVersion
		}
		if p.Placement != nil {
			k.Placement = *p.Placement
		}
		return nil
	})
	if err == nil && p.MinDecryptionVersion != nil {
		s.forget(p.ID)
	}
	return k, err
}

// SetState applies a lifecycle transition (Disable, Enable, CancelDeletion
// or ScheduleDeletion(...)) and drops cached material and data keys.
func (s *Service) SetState(ctx context.Context, id string, fn func(*Key) error) (*Key, error) {
	k, err := s.reg.Update(ctx, id, 0, fn)
	if err == nil {
		s.forget(id)
	}
	return k, err
}

// ScheduleDeletion puts a key in pending deletion for window (0: the
// default 30 days) from now on the service's clock.
func (s *Service) ScheduleDeletion(ctx context.Context, id string, window time.Duration) (*Key, error) {
	return s.SetState(ctx, id, ScheduleDeletion(s.now(), window))
}

// forget drops everything cached for a key.
func (s *Service) forget(id string) {
	s.mat.Forget(id)
	s.unwrap.Purge(id)
	prefix := id + "\x00"
	s.reuser.Forget(func(p string) bool { return len(p) >= len(prefix) && p[:len(prefix)] == prefix })
}

// Forget is called for changes that arrive from elsewhere (another central
// node, through the store's change feed).
func (s *Service) Forget(id string) { s.forget(id) }

// usableKey loads a key and checks it is enabled and of type t.
func (s *Service) usableKey(ctx context.Context, id string, t KeyType, op string) (*Key, error) {
	k, err := s.reg.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := k.Usable(); err != nil {
		return nil, err
	}
	if k.Type != t && !(t == "" && k.Type.Asymmetric()) {
		return nil, errorf(ErrInvalidArgument, "key %q is %s; %s needs %s", id, k.Type, op, describeType(t))
	}
	return k, nil
}

func describeType(t KeyType) string {
	if t == "" {
		return "an ecdsa-p256 or ed25519 key"
	}
	return "an " + string(t) + " key"
}

// dekAAD binds a backend-wrapped data key to its key and version.
func dekAAD(id string, v uint32) []byte { return versionInput("keybroker/v1/backend-dek", id, v) }

// newDataKey makes a data key for sealing under version v of k.
func (s *Service) newDataKey(ctx context.Context, k *Key, v uint32, ectx map[string]string) (*envelope.DataKey, error) {
	if k.Mode == ModeBackend {
		b, _, name, err := s.roots.Resolve(k.Version(v).RootKey)
		if err != nil {
			return nil, err
		}
		raw := make([]byte, envelope.DEKSize)
		_, _ = rand.Read(raw)
		dek := secret.New(raw)
		wrapped, err := b.Encrypt(ctx, name, raw, dekAAD(k.ID, v))
		if err != nil {
			dek.Destroy()
			return nil, err
		}
		return envelope.NewDataKey(k.ID, v, dek, wrapped)
	}
	m, err := s.mat.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	kek, err := envelope.KEK(m, k.Derived, ectx)
	if err != nil {
		return nil, errorf(ErrInvalidArgument, "%v", err)
	}
	if k.Derived {
		defer kek.Destroy()
	}
	return envelope.GenerateDataKey(kek, k.ID, v)
}

// openDataKey recovers the data key of a parsed ciphertext.
func (s *Service) openDataKey(ctx context.Context, k *Key, h *envelope.Header, ectx map[string]string) (*envelope.DataKey, error) {
	return s.unwrap.Get(ctx, h, func(ctx context.Context) (*envelope.DataKey, error) {
		if k.Mode == ModeBackend {
			b, _, name, err := s.roots.Resolve(k.Version(h.Version).RootKey)
			if err != nil {
				return nil, err
			}
			dek, err := b.Decrypt(ctx, name, h.WrappedDEK, dekAAD(k.ID, h.Version))
			if errors.Is(err, backends.ErrDecryptionFailed) {
				return nil, errorf(ErrInvalidArgument, "decryption failed: the ciphertext's data key does not open under key %q version %d", k.ID, h.Version)
			}
			if err != nil {
				return nil, err
			}
			return envelope.NewDataKey(k.ID, h.Version, dek, append([]byte(nil), h.WrappedDEK...))
		}
		m, err := s.mat.Get(ctx, k, h.Version)
		if err != nil {
			return nil, err
		}
		kek, err := envelope.KEK(m, k.Derived, ectx)
		if err != nil {
			return nil, errorf(ErrInvalidArgument, "%v", err)
		}
		if k.Derived {
			defer kek.Destroy()
		}
		dk, err := envelope.UnwrapDataKey(kek, k.ID, h.Version, h.WrappedDEK)
		if errors.Is(err, envelope.ErrDecrypt) {
			return nil, errorf(ErrInvalidArgument, "decryption failed: wrong encryption context, or a tampered or foreign ciphertext")
		}
		return dk, err
	})
}

// partition is the reuse-cache key: key, version and, for derived keys,
// the context (each context has its own KEK).
func partition(k *Key, v uint32, ectx map[string]string) (string, error) {
	p := k.ID + "\x00" + fmt.Sprint(v) + "\x00"
	if k.Derived {
		c, err := envelope.CanonicalContext(ectx)
		if err != nil {
			return "", errorf(ErrInvalidArgument, "%v", err)
		}
		sum := sha256.Sum256(c)
		p += hex.EncodeToString(sum[:])
	}
	return p, nil
}

// Encrypt seals plaintext under the key's primary version, reusing data
// keys within the reuse policy.
func (s *Service) Encrypt(ctx context.Context, id string, plaintext []byte, ectx map[string]string) ([]byte, *Key, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, nil, errorf(ErrInvalidArgument, "plaintext is %d bytes, limit %d", len(plaintext), MaxPlaintext)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return nil, nil, errorf(ErrInvalidArgument, "%v", err)
	}
	k, err := s.usableKey(ctx, id, AES256GCM, "Encrypt")
	if err != nil {
		return nil, nil, err
	}
	v := k.Primary
	part, err := partition(k, v, ectx)
	if err != nil {
		return nil, nil, err
	}
	dk, err := s.reuser.Get(ctx, part, len(plaintext), func(ctx context.Context) (*envelope.DataKey, error) {
		return s.newDataKey(ctx, k, v, ectx)
	})
	if err != nil {
		return nil, nil, err
	}
	ct, err := dk.Seal(plaintext, ectx)
	if err != nil {
		return nil, nil, errorf(ErrInvalidArgument, "%v", err)
	}
	return ct, k, nil
}

// Decrypt opens a ciphertext. expectKey, when set, must be the key the
// ciphertext names.
func (s *Service) Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string, expectKey string) ([]byte, *Key, uint32, error) {
	h, body, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, nil, 0, errorf(ErrInvalidArgument, "%v", err)
	}
	if expectKey != "" && expectKey != h.KeyID {
		return nil, nil, 0, errorf(ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, expectKey)
	}
	if _, err := envelope.CanonicalContext(ectx); err != nil {
		return nil, nil, 0, errorf(ErrInvalidArgument, "%v", err)
	}
	k, err := s.usableKey(ctx, h.KeyID, AES256GCM, "Decrypt")
	if err != nil {
		return nil, nil, 0, err
	}
	if err := k.CheckDecryptVersion(h.Version); err != nil {
		return nil, nil, 0, err
	}
	dk, err := s.openDataKey(ctx, k, h, ectx)
	if err != nil {
		return nil, nil, 0, err
	}
	pt, err := dk.Open(h, body, ectx)
	if err != nil {
		return nil, nil, 0, errorf(ErrInvalidArgument, "decryption failed: wrong encryption context, or a tampered or foreign ciphertext")
	}
	return pt, k, h.Version, nil
}

// PeekKeyID returns the key a ciphertext names, for authorization before
// decryption.
func PeekKeyID(ciphertext []byte) (string, uint32, error) {
	h, _, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return "", 0, errorf(ErrInvalidArgument, "%v", err)
	}
	return h.KeyID, h.Version, nil
}

// GenerateDataKey returns a fresh 32-byte data key and the key's
// ciphertext of it.
func (s *Service) GenerateDataKey(ctx context.Context, id string, ectx map[string]string) (*secret.Bytes, []byte, *Key, error) {
	raw := make([]byte, envelope.DEKSize)
	_, _ = rand.Read(raw)
	dek := secret.New(raw)
	ct, k, err := s.Encrypt(ctx, id, raw, ectx)
	if err != nil {
		dek.Destroy()
		return nil, nil, nil, err
	}
	return dek, ct, k, nil
}

// sign signs msg (or a digest) with version v of k.
func (s *Service) sign(ctx context.Context, k *Key, v uint32, msg []byte, digest bool) ([]byte, error) {
	if k.Type == Ed25519 && digest {
		return nil, errorf(ErrInvalidArgument, "ed25519 keys sign messages, not digests")
	}
	var d []byte
	if k.Type == ECDSAP256 {
		if digest {
			if len(msg) != sha256.Size {
				return nil, errorf(ErrInvalidArgument, "digest is %d bytes, want 32 (SHA-256)", len(msg))
			}
			d = msg
		} else {
			sum := sha256.Sum256(msg)
			d = sum[:]
		}
	}
	if k.Mode == ModeBackend {
		b, _, name, err := s.roots.Resolve(k.Version(v).RootKey)
		if err != nil {
			return nil, err
		}
		signer, ok := b.(backends.Signer)
		if !ok {
			return nil, errorf(ErrFailedPrecondition, "the backend of key %q cannot sign", k.ID)
		}
		if k.Type == Ed25519 {
			return signer.Sign(ctx, name, msg)
		}
		return signer.Sign(ctx, name, d)
	}
	m, err := s.mat.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	sk, err := SigningKey(k.Type, m)
	if err != nil {
		return nil, err
	}
	if k.Type == Ed25519 {
		return sk.Sign(nil, msg, crypto.Hash(0))
	}
	return sk.Sign(rand.Reader, d, crypto.SHA256)
}

// Sign signs with the primary version.
func (s *Service) Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *Key, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return nil, nil, errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	k, err := s.usableKey(ctx, id, "", "Sign")
	if err != nil {
		return nil, nil, err
	}
	sig, err := s.sign(ctx, k, k.Primary, msg, digest)
	return sig, k, err
}

// PublicKey returns the DER public key of version v (0: primary).
func (s *Service) PublicKey(ctx context.Context, id string, v uint32) ([]byte, *Key, uint32, error) {
	k, err := s.usableKey(ctx, id, "", "GetPublicKey")
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
func (s *Service) Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error) {
	if len(msg) == 0 || len(msg) > MaxSignInput {
		return false, 0, errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), MaxSignInput)
	}
	der, k, v, err := s.PublicKey(ctx, id, v)
	if err != nil {
		return false, 0, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return false, 0, fmt.Errorf("broker: key %q version %d: stored public key: %w", id, v, err)
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		d := msg
		if !digest {
			sum := sha256.Sum256(msg)
			d = sum[:]
		} else if len(d) != sha256.Size {
			return false, 0, errorf(ErrInvalidArgument, "digest is %d bytes, want 32 (SHA-256)", len(d))
		}
		return ecdsa.VerifyASN1(p, d, sig), v, nil
	case ed25519.PublicKey:
		if digest || k.Type != Ed25519 {
			return false, 0, errorf(ErrInvalidArgument, "ed25519 keys verify messages, not digests")
		}
		return ed25519.Verify(p, msg, sig), v, nil
	}
	return false, 0, fmt.Errorf("broker: key %q: unexpected public key type %T", id, pub)
}

// mac computes HMAC-SHA256 with version v.
func (s *Service) mac(ctx context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error) {
	if k.Mode == ModeBackend {
		b, _, name, err := s.roots.Resolve(k.Version(v).RootKey)
		if err != nil {
			return nil, err
		}
		m, ok := b.(backends.MACer)
		if !ok {
			return nil, errorf(ErrFailedPrecondition, "the backend of key %q has no HMAC", k.ID)
		}
		return m.MAC(ctx, name, msg)
	}
	material, err := s.mat.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	h := hmac.New(sha256.New, material.Reveal())
	h.Write(msg)
	return secret.New(h.Sum(nil)), nil
}

// GenerateMac computes a MAC with the primary version.
func (s *Service) GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *Key, error) {
	k, err := s.usableKey(ctx, id, HMACSHA256, "GenerateMac")
	if err != nil {
		return nil, nil, err
	}
	if err := checkMACInput(k, msg); err != nil {
		return nil, nil, err
	}
	tag, err := s.mac(ctx, k, k.Primary, msg)
	if err != nil {
		return nil, nil, err
	}
	return tag.Reveal(), k, nil
}

// checkMACInput bounds a MAC message: 64 KiB, or the backends' 4 KiB for
// backend-mode keys (the backend computes the MAC).
func checkMACInput(k *Key, msg []byte) error {
	limit := MaxSignInput
	if k.Mode == ModeBackend {
		limit = backends.MaxMACInput
	}
	if len(msg) == 0 || len(msg) > limit {
		return errorf(ErrInvalidArgument, "message is %d bytes, want 1..%d", len(msg), limit)
	}
	return nil
}

// VerifyMac checks a MAC in constant time with version v (0: primary).
func (s *Service) VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error) {
	k, err := s.usableKey(ctx, id, HMACSHA256, "VerifyMac")
	if err != nil {
		return false, 0, err
	}
	if err := checkMACInput(k, msg); err != nil {
		return false, 0, err
	}
	if v == 0 {
		v = k.Primary
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return false, 0, err
	}
	want, err := s.mac(ctx, k, v, msg)
	if err != nil {
		return false, 0, err
	}
	defer want.Destroy()
	return hmac.Equal(want.Reveal(), tag), v, nil
}

// GenerateRandom draws n bytes from the first root of trust's RNG.
func (s *Service) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, errorf(ErrInvalidArgument, "length %d out of 1..%d", n, MaxRandom)
	}
	return s.roots.roots[0].backend.GenerateRandom(ctx, n)
}

// ListKeys returns keys whose labels include every selector pair, a page at
// a time; the token is the last id of the previous page.
func (s *Service) ListKeys(ctx context.Context, selector map[string]string, pageSize int, token string) ([]*Key, string, error) {
	if pageSize <= 0 {
		pageSize = 100
	}
	if pageSize > MaxListPageSize {
		return nil, "", errorf(ErrInvalidArgument, "page size %d above %d", pageSize, MaxListPageSize)
	}
	keys, _, err := s.reg.List(ctx)
	if err != nil {
		return nil, "", err
	}
	var out []*Key
	for _, k := range keys {
		if token != "" && k.ID <= token {
			continue
		}
		match := true
		for lk, lv := range selector {
			if k.Labels[lk] != lv {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if len(out) == pageSize {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, k)
	}
	return out, "", nil
}

// Sweep carries out due rotations and deletions.
func (s *Service) Sweep(ctx context.Context) (rotated, deleted []string, err error) {
	due, deleted, err := s.reg.Sweep(ctx)
	for _, id := range deleted {
		s.forget(id)
	}
	if err != nil {
		return nil, deleted, err
	}
	var errs []error
	for _, k := range due {
		if _, err := s.RotateKey(ctx, k.ID); err != nil {
			errs = append(errs, fmt.Errorf("rotating %q: %w", k.ID, err))
			continue
		}
		rotated = append(rotated, k.ID)
	}
	return rotated, deleted, errors.Join(errs...)
}

// SealMaterial returns version v of key k's material sealed to a
// registered edge. The caller has authorized the edge (HoldMaterial).
// Backend-mode keys have no material to give.
func (s *Service) SealMaterial(ctx context.Context, edge *Node, k *Key, v uint32) ([]byte, error) {
	if err := k.Usable(); err != nil {
		return nil, err
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return nil, err
	}
	if k.Mode == ModeBackend {
		return nil, errorf(ErrFailedPrecondition, "key %q is a backend-mode key: its material never leaves the backend; forward the operation", k.ID)
	}
	m, err := s.mat.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	return sealed.Seal(edge.SealingKey, edge.ID, k.ID, v, m)
}
