package server

import (
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
)

var (
	typeToProto = map[broker.KeyType]kbv1.KeyType{
		broker.AES256GCM: kbv1.KeyType_KEY_TYPE_AES_256_GCM, broker.HMACSHA256: kbv1.KeyType_KEY_TYPE_HMAC_SHA256,
		broker.ECDSAP256: kbv1.KeyType_KEY_TYPE_ECDSA_P256, broker.Ed25519: kbv1.KeyType_KEY_TYPE_ED25519,
	}
	modeToProto = map[broker.Mode]kbv1.KeyMode{
		broker.ModeDerive: kbv1.KeyMode_KEY_MODE_DERIVE, broker.ModeWrap: kbv1.KeyMode_KEY_MODE_WRAP, broker.ModeBackend: kbv1.KeyMode_KEY_MODE_BACKEND,
	}
	stateToProto = map[broker.State]kbv1.KeyState{
		broker.StateEnabled: kbv1.KeyState_KEY_STATE_ENABLED, broker.StateDisabled: kbv1.KeyState_KEY_STATE_DISABLED,
		broker.StatePendingDeletion: kbv1.KeyState_KEY_STATE_PENDING_DELETION,
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
	typeFromProto = invert(typeToProto)
	modeFromProto = invert(modeToProto)
)

func ts(t interface{ IsZero() bool }) bool { return !t.IsZero() }

func keyToProto(k *broker.Key) *kbv1.KeyMetadata {
	m := &kbv1.KeyMetadata{
		KeyId: k.ID, Type: typeToProto[k.Type], Mode: modeToProto[k.Mode], Derived: k.Derived, State: stateToProto[k.State],
		PrimaryVersion: k.Primary, MinDecryptionVersion: k.MinDecryptionVersion, Labels: k.Labels,
		CreatedAt: timestamppb.New(k.Created), UpdatedAt: timestamppb.New(k.Updated), Revision: k.Revision,
		Description: k.Description, Placement: k.Placement,
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
