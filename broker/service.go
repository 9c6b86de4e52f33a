package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"sync"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// MaxRandom is the most bytes one GenerateRandom returns. (The other
// request limits are managed's: managed.MaxPlaintext, MaxSignInput,
// MaxListPageSize.)
const MaxRandom = 1024

// ServiceConfig assembles a Service.
type ServiceConfig struct {
	Registry  *Registry
	Roots     *Roots
	Materials *Materials
	// DefaultRoots gives the root key URI for each mode when CreateKey
	// names none.
	DefaultRoots map[managed.Mode]string
	// Reuse bounds data-key reuse for Encrypt (zero fields take defaults).
	Reuse envelope.ReusePolicy
	// ReuseEntries and UnwrapEntries bound the data-key caches.
	ReuseEntries, UnwrapEntries int
	// UnwrapTTL is how long an unwrapped data key stays cached.
	UnwrapTTL time.Duration
	// FailedUnwrapTTL is how long a backend-mode data key that did not
	// unwrap is refused from memory, without another backend call (0:
	// DefaultFailedUnwrapTTL); FailedUnwrapEntries bounds how many are
	// remembered (0: DefaultFailedUnwrapEntries).
	FailedUnwrapTTL     time.Duration
	FailedUnwrapEntries int
	// MaxDataKeysPerVersion bounds the data keys wrapped under one key
	// version here (0: managed.DefaultMaxDataKeysPerVersion).
	MaxDataKeysPerVersion uint64
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Service performs every KeyBroker and KeyAdmin operation at the central
// tier, for every key mode. It knows nothing of transports, identities or
// policy: package pipeline resolves, authorizes, checks and audits around
// it, and hands the key operations (managed.Ops: Encrypt, Decrypt,
// GenerateDataKey, DecryptDataKey, Sign, PublicKey, Verify, GenerateMac,
// VerifyMac) the key it resolved.
type Service struct {
	*managed.Ops

	reg      *Registry
	roots    *Roots
	mat      *Materials
	defaults map[managed.Mode]string
	now      func() time.Time

	// rotating queues this node's rotations of one key (by a hash of its
	// id) so that they do not race each other's compare-and-swap: each
	// makes a new version in a root of trust before it swaps, and a lost
	// race wastes that call. Rotations by other nodes sharing the store
	// can still race; they retry.
	rotating [64]sync.Mutex
}

// NewService builds a Service.
func NewService(c ServiceConfig) (*Service, error) {
	if c.Registry == nil || c.Roots == nil || c.Materials == nil {
		return nil, errors.New("broker: service needs a registry, roots and materials")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	ops, err := managed.New(managed.Config{
		Material: c.Materials, Backend: &rootBackend{roots: c.Roots, failed: newFailedUnwraps(c.FailedUnwrapTTL, c.FailedUnwrapEntries, c.Now)},
		Reuse: c.Reuse, ReuseEntries: c.ReuseEntries, UnwrapEntries: c.UnwrapEntries, UnwrapTTL: c.UnwrapTTL, Now: c.Now,
		MaxDataKeysPerVersion: c.MaxDataKeysPerVersion,
	})
	if err != nil {
		return nil, err
	}
	return &Service{Ops: ops, reg: c.Registry, roots: c.Roots, mat: c.Materials, defaults: maps.Clone(c.DefaultRoots), now: c.Now}, nil
}

// Get resolves a key id from the registry.
func (s *Service) Get(ctx context.Context, id string) (*managed.Key, error) {
	return s.reg.Get(ctx, id)
}

// Registry returns the key registry.
func (s *Service) Registry() *Registry { return s.reg }

// Roots returns the roots of trust.
func (s *Service) Roots() *Roots { return s.roots }

// CreateParams describes a new key.
type CreateParams struct {
	ID             string
	Type           managed.KeyType
	Mode           managed.Mode
	Derived        bool
	RootKey        string
	Labels         map[string]string
	RotationPeriod time.Duration
	Description    string
	Placement      string
}

// CreateKey creates a key and its first version.
func (s *Service) CreateKey(ctx context.Context, p CreateParams) (*managed.Key, error) {
	k := &managed.Key{ID: p.ID, Type: p.Type, Mode: p.Mode, Derived: p.Derived, State: managed.StateEnabled,
		Labels: maps.Clone(p.Labels), RotationPeriod: p.RotationPeriod, Description: p.Description, Placement: p.Placement, Primary: 1,
		Salt: managed.NewSalt()}
	// Validate everything that does not need the backend before asking it.
	if err := k.ValidateMeta(); err != nil {
		return nil, err
	}
	root, err := s.RootFor(p.Mode, p.Type, p.RootKey)
	if err != nil {
		return nil, err
	}
	if _, err := s.reg.Get(ctx, p.ID); err == nil {
		return nil, managed.Errorf(managed.ErrAlreadyExists, "key %q already exists", p.ID)
	}
	// alias/<id> names the key <id> unless a named alias has that name.
	if managed.ValidateAlias(p.ID) == nil {
		if target, err := s.AliasTarget(ctx, p.ID); err == nil {
			return nil, managed.Errorf(managed.ErrAlreadyExists, "%q is the name of an alias of key %q", p.ID, target)
		}
	}
	v, err := s.mat.NewVersion(ctx, k, root, 1)
	if err != nil {
		return nil, err
	}
	v.Created = s.now().UTC()
	k.Versions = []managed.Version{v}
	if k.RotationPeriod > 0 {
		k.NextRotation = s.now().Add(k.RotationPeriod).UTC()
	}
	return s.reg.Create(ctx, k)
}

// RootFor returns the root key a new key of mode m and type t would use:
// the requested one, else the configured default for m, as the root key
// declaration spells it. It refuses a root key that is not declared, or
// declared for another role or other types. The gRPC layer authorizes
// CreateKey with its result (Cedar resource.root), and CreateKey uses it.
func (s *Service) RootFor(m managed.Mode, t managed.KeyType, requested string) (string, error) {
	root := requested
	if root == "" {
		root = s.defaults[m]
	}
	if root == "" {
		return "", managed.Errorf(managed.ErrInvalidArgument, "no root key given and no default root key for %s mode", m)
	}
	return s.roots.Admit(root, m, t)
}

// RotateKey adds a version on the primary version's root key.
func (s *Service) RotateKey(ctx context.Context, id string) (*managed.Key, error) {
	return s.rotate(ctx, id, nil)
}

// rotate is RotateKey, done only while still (when not nil) holds of the
// key as it is: it returns nil and no error when it no longer does.
func (s *Service) rotate(ctx context.Context, id string, still func(*managed.Key) bool) (*managed.Key, error) {
	h := fnv.New32a()
	h.Write([]byte(id))
	mu := &s.rotating[h.Sum32()%uint32(len(s.rotating))]
	mu.Lock()
	defer mu.Unlock()
	get := s.reg.Get
	for range maxCASRetries {
		k, err := get(ctx, id)
		if err != nil {
			return nil, err
		}
		if still != nil && !still(k) {
			return nil, nil
		}
		if err := k.Usable(); err != nil {
			return nil, err
		}
		// A backend-mode signing or MAC key is the backend key itself: a new
		// version on the same root would be the same key, and retiring the
		// old version would retire nothing. (Backend-mode AES keys rotate:
		// each data key is bound to its version.)
		if !k.Mode.HoldsMaterial() && k.Type != managed.AES256GCM {
			return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q is a backend-mode %s key: its one backend key cannot be rotated; create a new key on a new root", id, k.Type)
		}
		next := uint32(len(k.Versions) + 1)
		v, err := s.mat.NewVersion(ctx, k, k.PrimaryVersion().RootKey, next)
		if err != nil {
			return nil, err
		}
		out, err := s.reg.Update(ctx, id, k.Revision, AddVersion(s.now(), v))
		if errors.Is(err, managed.ErrConflict) {
			// Another change landed; prepare against the new state, read
			// from the store: the cache learns another central's change
			// only when the feed brings it, and until then would give the
			// same stale revision to every retry.
			get = s.reg.load
			continue
		}
		if err == nil {
			s.forget(id)
		}
		return out, err
	}
	return nil, managed.Errorf(managed.ErrConflict, "key %q: too many concurrent changes", id)
}

// UpdateParams changes a key's metadata; nil fields stay as they are.
type UpdateParams struct {
	ID               string
	ExpectedRevision uint64
	Description      *string
	Labels           map[string]string
	ReplaceLabels    bool
	// RemoveLabels are removed after Labels are applied.
	RemoveLabels         []string
	RotationPeriod       *time.Duration
	MinDecryptionVersion *uint32
	Placement            *string
	// Authorize, when set, is asked inside the compare-and-swap about the
	// key as it is (before) and as the update would leave it (after); an
	// error aborts the update and is returned as it is. It is how the
	// caller's right to the key's new labels is checked against exactly
	// the record that is written.
	Authorize func(before, after *managed.Key) error
}

// UpdateKey changes metadata with a compare-and-swap.
func (s *Service) UpdateKey(ctx context.Context, p UpdateParams) (*managed.Key, error) {
	if err := managed.ValidateLabels(p.Labels); err != nil {
		return nil, err
	}
	k, err := s.reg.Update(ctx, p.ID, p.ExpectedRevision, func(k *managed.Key) error {
		if k.State == managed.StatePendingDeletion {
			return managed.Errorf(managed.ErrFailedPrecondition, "key %q is pending deletion", k.ID)
		}
		var before *managed.Key
		if p.Authorize != nil {
			before = k.Clone()
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
		for _, l := range p.RemoveLabels {
			delete(k.Labels, l)
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
		if p.Authorize != nil {
			return p.Authorize(before, k)
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
func (s *Service) SetState(ctx context.Context, id string, fn func(*managed.Key) error) (*managed.Key, error) {
	k, err := s.reg.Update(ctx, id, 0, fn)
	if err == nil {
		s.forget(id)
	}
	return k, err
}

// ScheduleDeletion puts a key in pending deletion for window (0: the
// default 30 days) from now on the service's clock.
func (s *Service) ScheduleDeletion(ctx context.Context, id string, window time.Duration) (*managed.Key, error) {
	return s.SetState(ctx, id, ScheduleDeletion(s.now(), window))
}

// forget drops everything cached for a key.
func (s *Service) forget(id string) {
	s.mat.Forget(id)
	s.Ops.Forget(id)
}

// Forget is called for changes that arrive from elsewhere (another central
// node, through the store's change feed).
func (s *Service) Forget(id string) { s.forget(id) }

// GenerateRandom draws n bytes from the RNG of the first configured root
// of trust (Roots.GenerateRandom), through the decorator like every other
// backend call: charged, counted and listed in the request's audit line.
func (s *Service) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "length %d out of 1..%d", n, MaxRandom)
	}
	return s.roots.GenerateRandom(ctx, n)
}

// ListKeys returns keys whose labels include every selector pair and that
// visible keeps (nil: all), a page at a time, with managed.Page's tokens
// and rules.
//
// It reads the registry from the token's id on (Registry.Page), a store
// page at a time, filtering each, until it has pageSize kept keys and has
// found one more (then the next token names the page's last key) or the
// registry ends (then the page may be short, and the token is ""). So a
// page costs the keys between its first and one past its last kept key,
// never a re-read of the keys before it; and memory holds one store page,
// whatever the number of keys. A page with a selective filter or few
// visible keys may read far; its token still names only a key the caller
// was shown. Pages are read at the store's latest revision each: a key
// created or deleted between pages is listed once or not at all, and no
// other key is repeated or skipped.
func (s *Service) ListKeys(ctx context.Context, selector map[string]string, pageSize int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	pageSize, err := managed.CheckPageSize(pageSize)
	if err != nil {
		return nil, "", err
	}
	after, err := managed.PageAfter(token, selector)
	if err != nil {
		return nil, "", err
	}
	var out []*managed.Key
	// The first read is enough when every key is kept; each further read
	// is larger, up to the store's page bound.
	for read := pageSize + 1; ; read = min(2*read, listRead) {
		p, err := s.reg.Page(ctx, after, read)
		if err != nil {
			return nil, "", err
		}
		for _, k := range p.Keys {
			if !k.Matches(selector) || (visible != nil && !visible(k)) {
				continue
			}
			if len(out) == pageSize {
				return out, managed.PageToken(selector, out[len(out)-1].ID), nil
			}
			out = append(out, k)
		}
		if !p.More {
			return out, "", nil
		}
		after = p.Keys[len(p.Keys)-1].ID
	}
}

// listRead bounds one read of the registry by ListKeys.
const listRead = 2000

// Sweep carries out due rotations and deletions.
func (s *Service) Sweep(ctx context.Context, record SweepRecorder) (rotated, deleted []string, err error) {
	if record == nil {
		record = func(string, string, error) error { return nil }
	}
	dueKeys, deleted, err := s.reg.Sweep(ctx, record)
	for _, id := range deleted {
		s.forget(id)
	}
	if err != nil {
		return nil, deleted, err
	}
	var errs []error
	due := func(k *managed.Key) bool { return rotationDue(k, s.now()) }
	for _, k := range dueKeys {
		// Judged on the store's record: the cache may not yet hold a
		// rotation another node made, and a key is rotated once per period.
		if fresh, err := s.reg.load(ctx, k.ID); err != nil {
			errs = append(errs, fmt.Errorf("rotating %q: %w", k.ID, err))
			continue
		} else if !due(fresh) {
			continue
		}
		if err := record("RotateKey", k.ID, nil); err != nil {
			errs = append(errs, fmt.Errorf("rotating %q: not audited, left for the next sweep: %w", k.ID, err))
			continue
		}
		out, err := s.rotate(ctx, k.ID, due)
		if err == nil && out == nil {
			err = managed.Errorf(managed.ErrFailedPrecondition, "key %q was rotated by another node meanwhile", k.ID)
		}
		if err != nil {
			_ = record("RotateKey", k.ID, err)
			errs = append(errs, fmt.Errorf("rotating %q: %w", k.ID, err))
			continue
		}
		rotated = append(rotated, k.ID)
	}
	return rotated, deleted, errors.Join(errs...)
}

// SweepRecorder audits the sweep's work. It is called with a nil err before
// a key is deleted or rotated — a non-nil return leaves the key alone until
// the next sweep, so nothing is destroyed without its audit line — and
// again with the error if the operation then fails.
type SweepRecorder func(op, key string, err error) error

// SealMaterial returns version v of key k's material sealed to a
// registered edge. The caller has authorized the edge (HoldMaterial).
// Backend-mode keys have no material to give.
func (s *Service) SealMaterial(ctx context.Context, edge *Node, k *managed.Key, v uint32) ([]byte, error) {
	if err := k.Usable(); err != nil {
		return nil, err
	}
	if err := k.CheckDecryptVersion(v); err != nil {
		return nil, err
	}
	if !k.Mode.HoldsMaterial() {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "key %q is a backend-mode key: its material never leaves the backend; forward the operation", k.ID)
	}
	m, err := s.mat.Get(ctx, k, v)
	if err != nil {
		return nil, err
	}
	return sealed.Seal(edge.SealingKey, edge.ID, k.ID, v, m)
}

// dekAAD binds a backend-wrapped data key to its key (and its salt) and
// version.
func dekAAD(k *managed.Key, v uint32) []byte {
	return k.Input(managed.DomainBackendDataKey, v)
}

// rootBackend performs backend-mode operations in the version's root of
// trust.
type rootBackend struct {
	roots *Roots
	// failed remembers data keys that did not unwrap, so that a forged
	// one sent again costs no backend call.
	failed *failedUnwraps
}

var _ managed.Backend = (*rootBackend)(nil)

// resolve finds the version's root key, and returns a context naming op,
// what the call about to be made to its backend is for (the decorator
// counts and audits it under that name). A root key declared for another
// role is refused: a backend-mode key on a derive root would MAC other
// keys' derive inputs.
func (rb *rootBackend) resolve(ctx context.Context, k *managed.Key, v uint32, op string) (context.Context, backends.Backend, string, error) {
	uri := k.Version(v).RootKey
	b, backendName, name, err := rb.roots.Resolve(uri)
	if err != nil {
		return nil, nil, "", err
	}
	if err := rb.roots.CheckRole(uri, backendName, name, k.Mode); err != nil {
		return nil, nil, "", err
	}
	return backends.WithOp(ctx, op), b, name, nil
}

func (rb *rootBackend) WrapDataKey(ctx context.Context, k *managed.Key, v uint32, dek []byte) ([]byte, error) {
	ctx, b, name, err := rb.resolve(ctx, k, v, "wrap-data-key")
	if err != nil {
		return nil, err
	}
	return b.Encrypt(ctx, name, dek, dekAAD(k, v))
}

func (rb *rootBackend) UnwrapDataKey(ctx context.Context, k *managed.Key, v uint32, wrapped []byte) (*secret.Bytes, error) {
	if rb.failed.failed(k.ID, v, wrapped) {
		return nil, errUnwrap(k, v)
	}
	ctx, b, name, err := rb.resolve(ctx, k, v, "unwrap-data-key")
	if err != nil {
		return nil, err
	}
	dek, err := b.Decrypt(ctx, name, wrapped, dekAAD(k, v))
	if errors.Is(err, backends.ErrDecryptionFailed) {
		rb.failed.remember(k.ID, v, wrapped)
		return nil, errUnwrap(k, v)
	}
	return dek, err
}

// errUnwrap is what a data key that does not open says, whether the
// backend just refused it or refused it moments ago.
func errUnwrap(k *managed.Key, v uint32) error {
	return managed.Errorf(managed.ErrInvalidArgument, "decryption failed: the ciphertext's data key does not open under key %q version %d", k.ID, v)
}

func (rb *rootBackend) Sign(ctx context.Context, k *managed.Key, v uint32, input []byte) ([]byte, error) {
	ctx, b, name, err := rb.resolve(ctx, k, v, "sign")
	if err != nil {
		return nil, err
	}
	signer, ok := b.(backends.Signer)
	if !ok {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "the backend of key %q cannot sign", k.ID)
	}
	return signer.Sign(ctx, name, input)
}

func (rb *rootBackend) MAC(ctx context.Context, k *managed.Key, v uint32, msg []byte) (*secret.Bytes, error) {
	ctx, b, name, err := rb.resolve(ctx, k, v, "mac")
	if err != nil {
		return nil, err
	}
	m, ok := b.(backends.MACer)
	if !ok {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "the backend of key %q has no HMAC", k.ID)
	}
	return m.MAC(ctx, name, k.BackendMACInput(v, msg))
}
