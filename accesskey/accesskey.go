// Package accesskey is keybroker's AWS access keys: what lets an unmodified
// AWS client (an SDK, the CLI, the Encryption SDK) call keybroker's
// AWS-compatible front-ends as a keybroker principal.
//
// An access key is an id ("KBAK" and 16 base32 characters, the shape of
// AWS's) and a record — the principal it acts as (a client or an admin of
// the trust domain), whether it is active, who made it and when, and a
// random salt — kept in the registry's store. Its secret is never stored
// or replicated: it is derived inside a root of trust, as derive-mode key
// material is, by HMAC of the declared root over the id and the salt
// (Derive). The central tier hands it out once, when the key is made; to
// verify a request anywhere, a node needs only the day-, region- and
// service-scoped signing key SigV4 derives from it (sigv4.DeriveSigningKey),
// which the central tier computes and an edge is given sealed. Deleting a
// key's record (revocation) makes its secret useless: the record's salt is
// gone with it, and a key made again never has the same secret.
//
// # Edge-scoped keys
//
// A node that verifies SigV4 holds the day-scoped signing key, and with it
// can sign any request as the key's principal. The central tier is trusted
// with that; an edge is not (it must never act as a client at the central
// tier). So a key an edge verifies names the edges it is scoped to
// (Record.Edges, `keybroker access-key create --edge NAME`): only those
// edges are given its signing keys (sealed, per day, region and service),
// and the central tier's own listeners refuse it as an unknown key, so an
// edge that holds its signing keys can act as its principal only through
// itself — where it could serve, or refuse, that principal's requests
// anyway. Only client keys may be scoped: an admin acts through the
// central tier, and an edge holding an admin's signing key would be an
// admin. A key with no edges is verified by the central tier alone; edges
// relay requests signed with it unverified, holding nothing to forge them.
package accesskey

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/identity"
)

// IDPrefix starts every access key id keybroker makes.
const IDPrefix = "KBAK"

// SaltSize is the size of a record's random salt.
const SaltSize = 16

// MaxEdges bounds the edges one key is scoped to.
const MaxEdges = 16

// SecretSize is the length of a secret access key (base64, as AWS's).
const SecretSize = 40

var idRe = regexp.MustCompile(`^` + IDPrefix + `[A-Z2-7]{16}$`)

// ValidID reports whether id has the shape of a keybroker access key id.
func ValidID(id string) bool { return idRe.MatchString(id) }

// NewID returns a fresh random access key id (80 random bits).
func NewID() (string, error) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("accesskey: %w", err)
	}
	return IDPrefix + base32.StdEncoding.EncodeToString(b), nil
}

// State is whether a key is usable.
type State string

// States. A revoked key is kept (not found is not the same answer as
// revoked, and its id is never made again) until it is deleted.
const (
	Active  State = "active"
	Revoked State = "revoked"
)

// Record is an access key as the store keeps it.
type Record struct {
	ID        string    `json:"id"`
	Principal string    `json:"principal"` // a client or admin SPIFFE id
	State     State     `json:"state"`
	Root      string    `json:"root"` // the root key URI its secret is derived with
	Salt      []byte    `json:"salt"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
	Revoked   time.Time `json:"revoked,omitzero"`
	RevokedBy string    `json:"revoked_by,omitempty"`
	// Edges are the node ids of the edges the key is scoped to (see
	// Edge-scoped keys in the package doc); empty for a key the central
	// tier verifies.
	Edges []string `json:"edges,omitempty"`
}

// Errors.
var (
	ErrInvalid = errors.New("accesskey: invalid")
)

// New is a fresh active record acting as principal, scoped to edges (none:
// verified by the central tier), whose secret the root key at root
// derives; by is who asked for it.
func New(principal identity.Identity, edges []string, root, by string, now time.Time) (*Record, error) {
	if principal.Kind != identity.Client && principal.Kind != identity.Admin {
		return nil, fmt.Errorf("%w: an access key acts as a client or an admin, not %s %s", ErrInvalid, principal.Kind, principal.Name)
	}
	if err := checkEdges(principal, edges); err != nil {
		return nil, err
	}
	id, err := NewID()
	if err != nil {
		return nil, err
	}
	salt := make([]byte, SaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("accesskey: %w", err)
	}
	r := &Record{ID: id, Principal: principal.String(), State: Active, Root: root, Salt: salt, Created: now.UTC(), CreatedBy: by,
		Edges: slices.Clone(edges)}
	slices.Sort(r.Edges)
	return r, r.Validate()
}

// checkEdges refuses a scope that is not a list of distinct edge names,
// and any scope on a principal other than a client.
func checkEdges(principal identity.Identity, edges []string) error {
	if len(edges) == 0 {
		return nil
	}
	if principal.Kind != identity.Client {
		return fmt.Errorf("%w: only a client's access key may be scoped to edges, not %s's: an edge holding its signing key could act as it", ErrInvalid, principal)
	}
	if len(edges) > MaxEdges {
		return fmt.Errorf("%w: scoped to %d edges, more than %d", ErrInvalid, len(edges), MaxEdges)
	}
	seen := map[string]bool{}
	for _, e := range edges {
		if !identity.ValidName(e) {
			return fmt.Errorf("%w: edge %q is not a node id", ErrInvalid, clipName(e))
		}
		if seen[e] {
			return fmt.Errorf("%w: edge %s is named twice", ErrInvalid, e)
		}
		seen[e] = true
	}
	return nil
}

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// EdgeScoped reports whether r is scoped to edges: verified by them, and
// refused by the central tier's own listeners.
func (r *Record) EdgeScoped() bool { return len(r.Edges) > 0 }

// ScopedTo reports whether edge (a node id) is one of r's edges.
func (r *Record) ScopedTo(edge string) bool { return slices.Contains(r.Edges, edge) }

// Identity is the principal the key acts as.
func (r *Record) Identity() (identity.Identity, error) { return identity.Parse(r.Principal) }

// Validate checks a record read from the store or about to be written.
func (r *Record) Validate() error {
	switch {
	case !ValidID(r.ID):
		return fmt.Errorf("%w: id %q is not %s and 16 base32 characters", ErrInvalid, r.ID, IDPrefix)
	case r.State != Active && r.State != Revoked:
		return fmt.Errorf("%w: %s: state %q", ErrInvalid, r.ID, r.State)
	case len(r.Salt) != SaltSize:
		return fmt.Errorf("%w: %s: salt of %d bytes, want %d", ErrInvalid, r.ID, len(r.Salt), SaltSize)
	case r.Root == "":
		return fmt.Errorf("%w: %s: no root key", ErrInvalid, r.ID)
	}
	id, err := r.Identity()
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, r.ID, err)
	}
	if id.Kind != identity.Client && id.Kind != identity.Admin {
		return fmt.Errorf("%w: %s acts as %s, which is neither a client nor an admin", ErrInvalid, r.ID, r.Principal)
	}
	if err := checkEdges(id, r.Edges); err != nil {
		return fmt.Errorf("%s: %w", r.ID, err)
	}
	return nil
}

// Encode is the record's stored form.
func (r *Record) Encode() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(r)
}

// Decode reads a stored record and validates it.
func Decode(data []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: corrupt record: %v", ErrInvalid, err)
	}
	return &r, r.Validate()
}

// DeriveLabel starts the HMAC input of every access key's secret. It is
// a domain of its own beside package managed's (material, wrap, backend
// data keys, backend MACs — all "keybroker/vN/…" labels ended by a zero
// byte), so no key's material and no backend-mode MAC a caller may ask for
// is an access key's secret. The root must be declared for derive mode
// (broker.Roots.CheckRole): a legacy backend-mode HMAC key on an undeclared
// root computes raw HMACs of what it is given.
const DeriveLabel = "keybroker/v1/access-key"

// DeriveInput is the HMAC input of r's secret: DeriveLabel ‖ 0 ‖ salt ‖
// id — injective, as the salt is of fixed size.
func DeriveInput(r *Record) []byte {
	in := make([]byte, 0, len(DeriveLabel)+1+len(r.Salt)+len(r.ID))
	in = append(in, DeriveLabel...)
	in = append(in, 0)
	in = append(in, r.Salt...)
	return append(in, r.ID...)
}

// Secret derives r's secret access key with the HMAC of root key name in
// mac — inside the root of trust — as AWS clients use it: 40 characters of
// base64. It is handed out once and otherwise only used to derive SigV4
// signing keys.
func Secret(ctx context.Context, mac backends.MACer, name string, r *Record) (string, error) {
	tag, err := mac.MAC(backends.WithOp(ctx, "access-key"), name, DeriveInput(r))
	if err != nil {
		return "", err
	}
	defer tag.Destroy()
	raw := tag.Reveal()
	if len(raw) < 30 {
		return "", fmt.Errorf("accesskey: %s: the root's HMAC gave %d bytes", r.ID, len(raw))
	}
	return base64.StdEncoding.EncodeToString(raw[:30]), nil
}
