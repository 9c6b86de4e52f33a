// Package wire converts between the domain types (managed keys, placement
// nodes) and their protobuf forms, and holds the statuses the central tier
// and its edges both recognise (NotEnrolled). The gRPC front-end (package
// rpc), the central tier's services and an edge's cache all use it, so an
// edge's cache reads the wire without importing the front-end.
package wire

import (
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
)

var (
	typeToProto = map[managed.KeyType]kbv1.KeyType{
		managed.AES256GCM: kbv1.KeyType_KEY_TYPE_AES_256_GCM, managed.HMACSHA256: kbv1.KeyType_KEY_TYPE_HMAC_SHA256,
		managed.ECDSAP256: kbv1.KeyType_KEY_TYPE_ECDSA_P256, managed.Ed25519: kbv1.KeyType_KEY_TYPE_ED25519,
	}
	modeToProto = map[managed.Mode]kbv1.KeyMode{
		managed.ModeDerive: kbv1.KeyMode_KEY_MODE_DERIVE, managed.ModeWrap: kbv1.KeyMode_KEY_MODE_WRAP, managed.ModeBackend: kbv1.KeyMode_KEY_MODE_BACKEND,
	}
	stateToProto = map[managed.State]kbv1.KeyState{
		managed.StateEnabled: kbv1.KeyState_KEY_STATE_ENABLED, managed.StateDisabled: kbv1.KeyState_KEY_STATE_DISABLED,
		managed.StatePendingDeletion: kbv1.KeyState_KEY_STATE_PENDING_DELETION,
	}
)

func invert[K, V comparable](m map[K]V) map[V]K {
	out := make(map[V]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

var (
	typeFromProto  = invert(typeToProto)
	modeFromProto  = invert(modeToProto)
	stateFromProto = invert(stateToProto)
)

// TypeFromProto converts a key type; ok is false for an unknown one.
func TypeFromProto(t kbv1.KeyType) (managed.KeyType, bool) {
	v, ok := typeFromProto[t]
	return v, ok
}

// ModeFromProto converts a key mode; ok is false for an unknown one.
func ModeFromProto(m kbv1.KeyMode) (managed.Mode, bool) {
	v, ok := modeFromProto[m]
	return v, ok
}

// TypeToProto is a key type on the wire.
func TypeToProto(t managed.KeyType) kbv1.KeyType { return typeToProto[t] }

func ts(t interface{ IsZero() bool }) bool { return !t.IsZero() }

// KeyToProto is a key's metadata on the wire.
func KeyToProto(k *managed.Key) *kbv1.KeyMetadata {
	m := &kbv1.KeyMetadata{
		KeyId: k.ID, Type: typeToProto[k.Type], Mode: modeToProto[k.Mode], Derived: k.Derived, State: stateToProto[k.State],
		PrimaryVersion: k.Primary, MinDecryptionVersion: k.MinDecryptionVersion, Labels: k.Labels,
		CreatedAt: timestamppb.New(k.Created), UpdatedAt: timestamppb.New(k.Updated), Revision: k.Revision,
		Description: k.Description, Placement: k.Placement, Aliases: k.Aliases,
	}
	if pv := k.PrimaryVersion(); pv != nil {
		m.RootKey = pv.RootKey
	}
	for _, v := range k.Versions {
		m.Versions = append(m.Versions, &kbv1.KeyVersion{Version: v.Version, CreatedAt: timestamppb.New(v.Created)})
	}
	if k.RotationPeriod > 0 {
		m.RotationPeriod = durationpb.New(k.RotationPeriod)
	}
	if ts(k.NextRotation) {
		m.NextRotation = timestamppb.New(k.NextRotation)
	}
	if ts(k.DeletionTime) {
		m.DeletionTime = timestamppb.New(k.DeletionTime)
	}
	return m
}

// KeyFromProto rebuilds a key from its metadata and its versions' public
// keys (an edge's replica: versions carry no material). The result is
// validated like a registry record.
func KeyFromProto(m *kbv1.KeyMetadata, versions []*kbv1.EdgeKeyVersion) (*managed.Key, error) {
	typ, okT := typeFromProto[m.GetType()]
	mode, okM := modeFromProto[m.GetMode()]
	state, okS := stateFromProto[m.GetState()]
	if !okT || !okM || !okS {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "key %s: unknown type, mode or state (%s, %s, %s)", clip.Quote(m.GetKeyId()), m.GetType(), m.GetMode(), m.GetState())
	}
	k := &managed.Key{
		ID: m.GetKeyId(), Type: typ, Mode: mode, Derived: m.GetDerived(), State: state, Labels: m.GetLabels(),
		Description: m.GetDescription(), Placement: m.GetPlacement(), Aliases: m.GetAliases(), RotationPeriod: m.GetRotationPeriod().AsDuration(),
		MinDecryptionVersion: m.GetMinDecryptionVersion(), Primary: m.GetPrimaryVersion(),
		Created: m.GetCreatedAt().AsTime(), Updated: m.GetUpdatedAt().AsTime(), Revision: m.GetRevision(),
	}
	if m.NextRotation != nil {
		k.NextRotation = m.GetNextRotation().AsTime()
	}
	if m.DeletionTime != nil {
		k.DeletionTime = m.GetDeletionTime().AsTime()
	}
	pub := map[uint32][]byte{}
	for _, v := range versions {
		pub[v.GetVersion()] = v.GetPublicKey()
	}
	for _, v := range m.GetVersions() {
		// The root key URI is the central tier's business; the edge keeps
		// the primary's for DescribeKey.
		k.Versions = append(k.Versions, managed.Version{Version: v.GetVersion(), Created: v.GetCreatedAt().AsTime(),
			RootKey: m.GetRootKey(), PublicKey: pub[v.GetVersion()]})
	}
	if err := k.Validate(); err != nil {
		return nil, err
	}
	return k, nil
}

// nodeFromProto is an inventory node as placement sees it.
func nodeFromProto(n *kbv1.Node) placement.Node {
	return placement.Node{ID: n.GetNodeId(), Kind: n.GetKind(), Address: n.GetAddress(), Region: n.GetRegion(),
		Labels: n.GetLabels(), Prefetch: n.GetPrefetch(), Connected: n.GetConnected(), Enrolled: n.GetEnrolled()}
}

// NodesFromProto converts an inventory.
func NodesFromProto(ns []*kbv1.Node) []placement.Node {
	out := make([]placement.Node, len(ns))
	for i, n := range ns {
		out[i] = nodeFromProto(n)
	}
	return out
}
