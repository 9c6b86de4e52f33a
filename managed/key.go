// Package managed is the model of a managed key — type, mode, state,
// versions, labels, placement — and the operations every keybroker node
// performs with a key version's material: envelope encryption with
// data-key reuse and an unwrap cache, signing, MACs and verification.
//
// It is shared by the central tier (package broker, which produces
// material from roots of trust) and the edge tier (package edgecache, which
// receives material sealed to it), so that both serve the same API with the
// same checks and the same ciphertexts. It never imports a root of trust:
// material comes from a MaterialSource, and backend-mode operations from an
// optional Backend that only the central tier has.
//
// # Keys and versions
//
// A managed key has a type (aes-256-gcm, hmac-sha256, ecdsa-p256, ed25519),
// a mode (derive, wrap, backend), a state (enabled, disabled,
// pending-deletion) and versions, one of them primary. Rotation adds a
// version and makes it primary; old versions keep decrypting and verifying
// until the minimum decryption version passes them.
//
// # Salts and domains
//
// Each key made now has a random 32-byte salt (Key.Salt). Every byte
// string that binds material or a data key to a key version — the derive
// input, the wrap-mode material AAD, the data-key AADs, the prefix of
// backend-mode MACs — is Key.Input of a Domain: a label of its own, the
// salt, the key id and the version. A key deleted and created again under
// its id therefore has unrelated material, and no domain's input equals
// another's. Keys made before salts keep the legacy inputs (no salt, the
// "keybroker/v1/..." labels).
//
// # Protection
//
// What differs between the modes is where the material lives
// (Mode.HoldsMaterial). Ops chooses a key's protection once per operation
// — material-backed (derive, wrap: material from the MaterialSource, local
// crypto) or backend-backed (the Backend, which keeps the material) — and
// wraps and unwraps data keys, signs and MACs through it, so no operation
// branches on the mode. Everything around the protection (reuse and unwrap
// caches, the data-key bound per version, input checks, Verify against the
// stored public key) is the same code for every mode, which is why a
// backend-mode ciphertext has the same format as any other.
//
// # Operations and errors
//
// Ops operates on a key its caller resolved, authorized and checked
// (package pipeline: CheckUsable, Key.CheckDecryptVersion, once), and on a
// ciphertext header parsed once (ParseCiphertext); each operation returns a
// result struct (Encrypted, Decrypted, DataKey, UnwrappedDataKey,
// Signature, PublicKey, Verification, MAC) naming the key and version it
// used. Errors are *Error values: a kind (ErrNotFound, ErrInvalidArgument,
// …; errors.Is matches it), the operation and key, and the cause, kept
// for errors.Is and errors.As.
package managed

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/policy"
)

// Errors returned by key operations, mapped to gRPC codes at the API edge.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrConflict           = errors.New("revision conflict")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnavailable        = errors.New("unavailable")
	// ErrResourceExhausted: the caller has spent its share of something
	// (its budget of calls to the roots of trust); retry later.
	ErrResourceExhausted = errors.New("resource exhausted")
)

// KeyType is what a managed key does.
type KeyType string

// Key types.
const (
	AES256GCM  KeyType = "aes-256-gcm"
	HMACSHA256 KeyType = "hmac-sha256"
	ECDSAP256  KeyType = "ecdsa-p256"
	Ed25519    KeyType = "ed25519"
)

// Valid reports whether t is a known type.
func (t KeyType) Valid() bool {
	return t == AES256GCM || t == HMACSHA256 || t == ECDSAP256 || t == Ed25519
}

// Asymmetric reports whether t signs.
func (t KeyType) Asymmetric() bool { return t == ECDSAP256 || t == Ed25519 }

// Mode says where a version's material comes from.
type Mode string

// Modes.
const (
	ModeDerive  Mode = "derive"
	ModeWrap    Mode = "wrap"
	ModeBackend Mode = "backend"
)

// Role is what a root key is for: derive (the HMAC PRF of derive-mode
// keys), wrap (the encryption key that wraps wrap-mode material) or backend
// (performs the operations of backend-mode keys). A key of mode m needs a
// root key of the role of the same name.
type Role string

// Roles.
const (
	RoleDerive  Role = "derive"
	RoleWrap    Role = "wrap"
	RoleBackend Role = "backend"
)

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool { return m == ModeDerive || m == ModeWrap || m == ModeBackend }

// HoldsMaterial reports whether keys of mode m have material outside the
// root of trust (derive and wrap): material that the central tier can
// seal to an edge and that operations use locally. Backend-mode keys have
// none: their root of trust performs every operation, so only the central
// tier serves them. It is the one place the modes split on where the
// material lives (Ops.protect, placement, edge forwarding and prefetch all
// ask it); an unknown mode never gets this far, Key.Validate refuses it.
func (m Mode) HoldsMaterial() bool { return m != ModeBackend }

// State is a key's lifecycle state.
type State string

// States.
const (
	StateEnabled         State = "enabled"
	StateDisabled        State = "disabled"
	StatePendingDeletion State = "pending-deletion"
)

// Lifecycle bounds.
const (
	DefaultPendingWindow = 30 * 24 * time.Hour
	MinPendingWindow     = 7 * 24 * time.Hour
	MaxPendingWindow     = 30 * 24 * time.Hour
	MinRotationPeriod    = 24 * time.Hour
	MaxVersions          = 10_000
	MaxLabels            = 64
)

// Version is one key version.
type Version struct {
	Version uint32    `json:"version"`
	Created time.Time `json:"created"`
	// RootKey is the backend key URI of the root that produces this
	// version's material (or performs its operations, in backend mode).
	RootKey string `json:"root_key"`
	// Wrapped is the material encrypted by the root key (wrap mode).
	Wrapped []byte `json:"wrapped,omitempty"`
	// PublicKey is the DER SubjectPublicKeyInfo of asymmetric versions.
	PublicKey []byte `json:"public_key,omitempty"`
}

// Key is a managed key. Revision is the store revision it was read at.
type Key struct {
	ID          string            `json:"id"`
	Type        KeyType           `json:"type"`
	Mode        Mode              `json:"mode"`
	Derived     bool              `json:"derived,omitempty"`
	State       State             `json:"state"`
	Labels      map[string]string `json:"labels,omitempty"`
	Description string            `json:"description,omitempty"`
	// Aliases are the key's named aliases (ValidateAlias), in the order
	// they were given. The central tier's alias records decide which key
	// an alias names; this list carries them to edges.
	Aliases []string `json:"aliases,omitempty"`
	// Salt is 32 random bytes made when the key is created
	// (crypto/rand). It enters the derive input, the wrap-mode material
	// AAD, every data-key AAD and the input of backend-mode MACs (see
	// Input), so a key created again under a deleted id, or under the
	// same id in another deployment sharing a root, has unrelated
	// material and opens none of the old key's ciphertexts. Keys made
	// before salts have none and keep their legacy inputs.
	Salt []byte `json:"salt,omitempty"`
	// Placement is a Cedar condition over the edge that may hold the key's
	// material (policy.ValidatePlacement); empty means the global policies
	// alone decide.
	Placement            string        `json:"placement,omitempty"`
	RotationPeriod       time.Duration `json:"rotation_period,omitempty"`
	NextRotation         time.Time     `json:"next_rotation,omitzero"`
	MinDecryptionVersion uint32        `json:"min_decryption_version,omitempty"`
	Primary              uint32        `json:"primary"`
	Versions             []Version     `json:"versions"`
	DeletionTime         time.Time     `json:"deletion_time,omitzero"`
	Created              time.Time     `json:"created"`
	Updated              time.Time     `json:"updated"`

	Revision uint64 `json:"-"`
}

// Clone returns a deep copy.
func (k *Key) Clone() *Key {
	c := *k
	c.Labels = maps.Clone(k.Labels)
	c.Aliases = slices.Clone(k.Aliases)
	c.Salt = slices.Clone(k.Salt)
	c.Versions = slices.Clone(k.Versions)
	return &c
}

// Version returns version v, or nil.
func (k *Key) Version(v uint32) *Version {
	if v == 0 || int(v) > len(k.Versions) {
		return nil
	}
	return &k.Versions[v-1]
}

// PrimaryVersion returns the primary version.
func (k *Key) PrimaryVersion() *Version { return k.Version(k.Primary) }

// PolicyKey is k as Cedar sees it.
//
// Root is the primary version's root key, as the central tier stored it
// (edges receive it with the key's metadata), so the same policy decides
// alike at every tier.
func (k *Key) PolicyKey() policy.Key {
	pk := policy.Key{Name: k.ID, Type: string(k.Type), Mode: string(k.Mode), Labels: k.Labels}
	if pv := k.PrimaryVersion(); pv != nil {
		pk.Root = pv.RootKey
	}
	return pk
}

// Usable says whether the key accepts operations now, and why not: a
// FailedPrecondition whose cause is a *StateError naming the state.
func (k *Key) Usable() error {
	var msg string
	switch k.State {
	case StateEnabled:
		return nil
	case StateDisabled:
		msg = fmt.Sprintf("key %q is disabled", k.ID)
	case StatePendingDeletion:
		msg = fmt.Sprintf("key %q is pending deletion on %s", k.ID, k.DeletionTime.Format(time.RFC3339))
	default:
		msg = fmt.Sprintf("key %q is in state %q", k.ID, k.State)
	}
	return &Error{Kind: ErrFailedPrecondition, Key: k.ID, Err: &StateError{State: k.State, msg: msg}}
}

// StateError is why a key in a state other than enabled refused an
// operation, for front-ends that name the state (AWS's DisabledException
// and KMSInvalidStateException).
type StateError struct {
	State State
	msg   string
}

func (e *StateError) Error() string { return e.msg }

// At is version v, or the primary when v is 0: how an operation that
// takes an optional version names the one it uses.
func (k *Key) At(v uint32) uint32 {
	if v == 0 {
		return k.Primary
	}
	return v
}

// CheckDecryptVersion refuses versions that do not exist or are below the
// minimum decryption version.
func (k *Key) CheckDecryptVersion(v uint32) error {
	if k.Version(v) == nil {
		return Errorf(ErrNotFound, "key %q has no version %d", k.ID, v)
	}
	if v < k.MinDecryptionVersion {
		return Errorf(ErrFailedPrecondition, "key %q version %d is below the minimum decryption version %d", k.ID, v, k.MinDecryptionVersion)
	}
	return nil
}

var (
	labelKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
)

// ValidateLabels checks label keys and values.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return Errorf(ErrInvalidArgument, "%d labels, limit %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if !labelKeyRe.MatchString(k) {
			return Errorf(ErrInvalidArgument, "label key %q must be 1-63 of [A-Za-z0-9._/-]", k)
		}
		if len(v) > 256 {
			return Errorf(ErrInvalidArgument, "label %q value is longer than 256 bytes", k)
		}
	}
	return nil
}

// Validate checks a key's invariants; the registry refuses to store a key
// that breaks one, and an edge one that arrives broken. (Wrapped material
// is the registry's to check: it never reaches an edge.)
func (k *Key) Validate() error {
	if err := k.ValidateMeta(); err != nil {
		return err
	}
	switch {
	case len(k.Versions) == 0 || len(k.Versions) > MaxVersions:
		return Errorf(ErrInvalidArgument, "key has %d versions", len(k.Versions))
	case k.Version(k.Primary) == nil:
		return Errorf(ErrInvalidArgument, "primary version %d does not exist", k.Primary)
	case k.MinDecryptionVersion > k.Primary:
		return Errorf(ErrInvalidArgument, "minimum decryption version %d is above the primary version %d", k.MinDecryptionVersion, k.Primary)
	}
	for i, v := range k.Versions {
		if v.Version != uint32(i+1) {
			return Errorf(ErrInvalidArgument, "version %d stored at position %d", v.Version, i+1)
		}
		if v.RootKey == "" {
			return Errorf(ErrInvalidArgument, "version %d has no root key", v.Version)
		}
	}
	return nil
}

// ValidateMeta checks everything but the versions.
func (k *Key) ValidateMeta() error {
	switch {
	case !envelope.ValidKeyID(k.ID):
		return Errorf(ErrInvalidArgument, "key id %s must be 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", clip.Quote(k.ID))
	case !k.Type.Valid():
		return Errorf(ErrInvalidArgument, "key type %q is not aes-256-gcm, hmac-sha256, ecdsa-p256 or ed25519", k.Type)
	case !k.Mode.Valid():
		return Errorf(ErrInvalidArgument, "key mode %q is not derive, wrap or backend", k.Mode)
	case k.Derived && k.Type != AES256GCM:
		return Errorf(ErrInvalidArgument, "derived per-context keys are aes-256-gcm only")
	case k.Derived && !k.Mode.HoldsMaterial():
		return Errorf(ErrInvalidArgument, "backend-mode keys have no material to derive per-context keys from")
	case k.RotationPeriod != 0 && k.RotationPeriod < MinRotationPeriod:
		return Errorf(ErrInvalidArgument, "rotation period %s is shorter than %s", k.RotationPeriod, MinRotationPeriod)
	case len(k.Description) > 1024:
		return Errorf(ErrInvalidArgument, "description longer than 1024 bytes")
	case len(k.Salt) != 0 && len(k.Salt) != SaltSize:
		return Errorf(ErrInvalidArgument, "salt is %d bytes, want %d (or none, for a key made before salts)", len(k.Salt), SaltSize)
	}
	if k.Placement != "" {
		if err := policy.ValidatePlacement(k.ID, k.Placement); err != nil {
			return Errorf(ErrInvalidArgument, "%w", err)
		}
	}
	if err := validateAliases(k.Aliases); err != nil {
		return err
	}
	return ValidateLabels(k.Labels)
}
