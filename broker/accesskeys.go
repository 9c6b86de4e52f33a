package broker

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/accesskey"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
)

// KindAccessKeys holds the AWS access keys' records (package accesskey).
const KindAccessKeys store.Kind = "accesskeys"

// MaxAccessKeys bounds the access keys one principal may hold at once:
// two suffice to rotate (make the new, move the clients, revoke the old).
const MaxAccessKeys = 2

// CreateAccessKey makes an access key acting as principal, scoped to
// edges (none: the central tier verifies it), its secret derived by the
// default derive root, and returns the record and the secret — the only
// time the secret leaves the root of trust. by is the admin who asked.
func (s *Service) CreateAccessKey(ctx context.Context, principal identity.Identity, edges []string, by string) (*accesskey.Record, string, error) {
	root := s.defaults[managed.ModeDerive]
	if root == "" {
		return nil, "", managed.Errorf(managed.ErrFailedPrecondition, "access keys need a default derive root (default_root_keys.derive): their secrets are derived there")
	}
	mac, name, err := s.accessKeyRoot(root)
	if err != nil {
		return nil, "", err
	}
	held, err := s.AccessKeys(ctx)
	if err != nil {
		return nil, "", err
	}
	active := 0
	for _, r := range held {
		if r.Principal == principal.String() && r.State == accesskey.Active {
			active++
		}
	}
	if active >= MaxAccessKeys {
		return nil, "", managed.Errorf(managed.ErrFailedPrecondition, "%s already has %d active access keys: revoke one first (two are enough to rotate)", principal, active)
	}
	r, err := accesskey.New(principal, edges, root, by, s.now())
	if err != nil {
		return nil, "", managed.Errorf(managed.ErrInvalidArgument, "%v", err)
	}
	secret, err := accesskey.Secret(ctx, mac, name, r)
	if err != nil {
		return nil, "", err
	}
	data, err := r.Encode()
	if err != nil {
		return nil, "", err
	}
	if _, err := s.reg.Store().Put(ctx, KindAccessKeys, r.ID, data, 0); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, "", managed.Errorf(managed.ErrAlreadyExists, "access key %s already exists", r.ID)
		}
		return nil, "", err
	}
	return r, secret, nil
}

// accessKeyRoot is the HMAC of root, which must be declared (or
// defaulted) for derive mode: a root that also serves backend-mode MAC
// keys could be asked for an access key's secret.
func (s *Service) accessKeyRoot(root string) (backends.MACer, string, error) {
	b, backendName, name, err := s.roots.Resolve(root)
	if err != nil {
		return nil, "", err
	}
	if err := s.roots.CheckRole(root, backendName, name, managed.ModeDerive); err != nil {
		return nil, "", err
	}
	mac, ok := b.(backends.MACer)
	if !ok {
		return nil, "", managed.Errorf(managed.ErrFailedPrecondition, "root key %q has no HMAC: access keys are derived with one", root)
	}
	return mac, name, nil
}

// AccessKey reads one access key's record.
func (s *Service) AccessKey(ctx context.Context, id string) (*accesskey.Record, error) {
	if !accesskey.ValidID(id) {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "%s is not an access key id (%s and 16 base32 characters)", clip.Quote(id), accesskey.IDPrefix)
	}
	o, err := s.reg.Store().Get(ctx, KindAccessKeys, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, managed.Errorf(managed.ErrNotFound, "access key %s does not exist", id)
	}
	if err != nil {
		return nil, err
	}
	return accesskey.Decode(o.Value)
}

// AccessKeys lists every access key's record, by id.
func (s *Service) AccessKeys(ctx context.Context) ([]*accesskey.Record, error) {
	objs, _, err := s.reg.Store().List(ctx, KindAccessKeys)
	if err != nil {
		return nil, err
	}
	out := make([]*accesskey.Record, 0, len(objs))
	for _, o := range objs {
		r, err := accesskey.Decode(o.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *accesskey.Record) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// RevokeAccessKey revokes an access key for good: requests signed with it
// are refused from then on (at edges once they hear of it). by is the
// admin who asked.
func (s *Service) RevokeAccessKey(ctx context.Context, id, by string) (*accesskey.Record, error) {
	for range maxCASRetries {
		if !accesskey.ValidID(id) {
			return nil, managed.Errorf(managed.ErrInvalidArgument, "%s is not an access key id", clip.Quote(id))
		}
		o, err := s.reg.Store().Get(ctx, KindAccessKeys, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, managed.Errorf(managed.ErrNotFound, "access key %s does not exist", id)
		}
		if err != nil {
			return nil, err
		}
		r, err := accesskey.Decode(o.Value)
		if err != nil {
			return nil, err
		}
		if r.State == accesskey.Revoked {
			return r, nil
		}
		r.State, r.Revoked, r.RevokedBy = accesskey.Revoked, s.now().UTC(), by
		data, err := r.Encode()
		if err != nil {
			return nil, err
		}
		if _, err := s.reg.Store().Put(ctx, KindAccessKeys, id, data, o.Revision); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, managed.Errorf(managed.ErrConflict, "access key %s kept changing; try again", id)
}

// SigningKey is what verifies a SigV4 request signed with access key id
// at the central tier's own listeners: the signing key for the scope
// (date, region, service) and the principal it acts as. An unknown id is
// sigv4.ErrUnknownKey; a revoked one too, so a revoked key is answered as
// AWS answers an unknown one; and so is a key scoped to edges, which is
// valid only through them (package accesskey, Edge-scoped keys).
func (s *Service) SigningKey(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
	return s.signingKey(ctx, id, date, region, service, func(r *accesskey.Record) bool { return !r.EdgeScoped() })
}

// SigningKeyVia is SigningKey for a request edge relayed (EdgeSync's
// ForwardAWS): a key with no edges, or one scoped to edge, verifies; a key
// scoped to other edges only is sigv4.ErrUnknownKey.
func (s *Service) SigningKeyVia(ctx context.Context, edge, id, date, region, service string) ([]byte, identity.Identity, error) {
	return s.signingKey(ctx, id, date, region, service, func(r *accesskey.Record) bool { return !r.EdgeScoped() || r.ScopedTo(edge) })
}

// ErrNotScoped is an access key an edge asked for that is not scoped to it.
var ErrNotScoped = errors.New("the access key is not scoped to this edge")

// EdgeSigningKey is the signing key edge is given (EdgeSync's SigningKey)
// to verify requests itself: only for an active key scoped to edge —
// ErrNotScoped for one that is not, managed.ErrNotFound for one unknown or
// revoked.
func (s *Service) EdgeSigningKey(ctx context.Context, edge, id, date, region, service string) ([]byte, identity.Identity, error) {
	scoped := true
	key, who, err := s.signingKey(ctx, id, date, region, service, func(r *accesskey.Record) bool {
		scoped = r.ScopedTo(edge)
		return scoped
	})
	switch {
	case !scoped:
		return nil, identity.Identity{}, managed.Errorf(managed.ErrPermissionDenied, "access key %s: %w", id, ErrNotScoped)
	case errors.Is(err, sigv4.ErrUnknownKey):
		return nil, identity.Identity{}, managed.Errorf(managed.ErrNotFound, "access key %s is unknown or revoked", clip.Quote(id))
	}
	return key, who, err
}

// signingKey derives the signing key of active key id when accept takes
// its record; sigv4.ErrUnknownKey otherwise.
func (s *Service) signingKey(ctx context.Context, id, date, region, service string, accept func(*accesskey.Record) bool) ([]byte, identity.Identity, error) {
	if !accesskey.ValidID(id) {
		return nil, identity.Identity{}, sigv4.ErrUnknownKey
	}
	r, err := s.AccessKey(ctx, id)
	switch {
	case errors.Is(err, managed.ErrNotFound):
		return nil, identity.Identity{}, sigv4.ErrUnknownKey
	case err != nil:
		return nil, identity.Identity{}, err
	case r.State != accesskey.Active:
		return nil, identity.Identity{}, sigv4.ErrUnknownKey
	case !accept(r):
		return nil, identity.Identity{}, sigv4.ErrUnknownKey
	}
	who, err := r.Identity()
	if err != nil {
		return nil, identity.Identity{}, err
	}
	mac, name, err := s.accessKeyRoot(r.Root)
	if err != nil {
		return nil, identity.Identity{}, err
	}
	secret, err := accesskey.Secret(ctx, mac, name, r)
	if err != nil {
		return nil, identity.Identity{}, err
	}
	return sigv4.DeriveSigningKey([]byte(secret), date, region, service), who, nil
}
