package wire_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
)

var (
	allTypes  = []managed.KeyType{managed.AES256GCM, managed.HMACSHA256, managed.ECDSAP256, managed.Ed25519}
	allModes  = []managed.Mode{managed.ModeDerive, managed.ModeWrap, managed.ModeBackend}
	allStates = []managed.State{managed.StateEnabled, managed.StateDisabled, managed.StatePendingDeletion}
)

func publicKeyDER(t *testing.T, typ managed.KeyType) []byte {
	t.Helper()
	var pub any
	switch typ {
	case managed.ECDSAP256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = k.Public()
	case managed.Ed25519:
		p, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = p
	default:
		return nil
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// richKey is a key with every field set: nversions versions (all with the
// same root key, since only the primary's travels), the primary below the
// newest, a minimum decryption version, labels, placement, rotation and,
// when pending deletion, a deletion time. Times are in a non-UTC zone and
// carry nanoseconds.
func richKey(t *testing.T, typ managed.KeyType, mode managed.Mode, state managed.State, nversions int) *managed.Key {
	t.Helper()
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	created := time.Date(2025, 3, 14, 15, 9, 26, 535897932, zone)
	k := &managed.Key{
		ID: fmt.Sprintf("team/%s-%s.%s:1", typ, mode, state), Type: typ, Mode: mode, State: state,
		Derived:     typ == managed.AES256GCM && mode != managed.ModeBackend,
		Labels:      map[string]string{"team": "payments", "env": "prod", "tier": ""},
		Description: "Payments key — ünïcode survives",
		Placement:   `principal.region == "eu" && principal.hasTag("pci")`,
		Aliases:     []string{"payments", "team/payments-prod"},
		Created:     created, Updated: created.Add(36 * time.Hour), Revision: 4711,
	}
	if state == managed.StateEnabled {
		k.RotationPeriod = 90 * 24 * time.Hour
		k.NextRotation = created.Add(k.RotationPeriod)
	}
	if state == managed.StatePendingDeletion {
		k.DeletionTime = created.Add(30*24*time.Hour + time.Nanosecond)
	}
	for i := range nversions {
		v := managed.Version{Version: uint32(i + 1), Created: created.Add(time.Duration(i) * time.Hour), RootKey: "pkcs11:token=kb;object=root-1",
			PublicKey: publicKeyDER(t, typ)}
		k.Versions = append(k.Versions, v)
	}
	k.Primary = uint32(max(1, nversions-1))
	k.MinDecryptionVersion = uint32(max(0, nversions-3))
	if err := k.Validate(); err != nil {
		t.Fatalf("richKey: %v", err)
	}
	return k
}

// minimalKey has only what Validate requires.
func minimalKey(typ managed.KeyType, mode managed.Mode) *managed.Key {
	return &managed.Key{ID: "k", Type: typ, Mode: mode, State: managed.StateEnabled, Primary: 1,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:root"}}}
}

// edgeVersions is what Watch sends with a key's metadata.
func edgeVersions(k *managed.Key) []*kbv1.EdgeKeyVersion {
	var out []*kbv1.EdgeKeyVersion
	for _, v := range k.Versions {
		out = append(out, &kbv1.EdgeKeyVersion{Version: v.Version, PublicKey: v.PublicKey})
	}
	return out
}

// overWire marshals and unmarshals m, as between the central tier and an
// edge.
func overWire[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// keyOpts compare keys as the wire keeps them: times by instant, empty and
// nil maps and slices alike.
var keyOpts = cmp.Options{cmpopts.EquateEmpty()}

func TestKeyRoundTrip(t *testing.T) {
	type keyCase struct {
		name string
		key  *managed.Key
	}
	var cases []keyCase
	for _, typ := range allTypes {
		for _, mode := range allModes {
			for _, state := range allStates {
				for _, n := range []int{1, 2, 5} {
					cases = append(cases, keyCase{fmt.Sprintf("%s/%s/%s/%d-versions", typ, mode, state, n), richKey(t, typ, mode, state, n)})
				}
			}
			cases = append(cases, keyCase{fmt.Sprintf("%s/%s/minimal", typ, mode), minimalKey(typ, mode)})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.key.Clone()
			m := overWire(t, wire.KeyToProto(tc.key))
			got, err := wire.KeyFromProto(m, overWire(t, &kbv1.EdgeKey{Versions: edgeVersions(tc.key)}).GetVersions())
			if err != nil {
				t.Fatalf("KeyFromProto(KeyToProto(k)) = %v", err)
			}
			if diff := cmp.Diff(want, got, keyOpts); diff != "" {
				t.Errorf("KeyFromProto(KeyToProto(k)) mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, tc.key, keyOpts); diff != "" {
				t.Errorf("KeyToProto changed its input (-before +after):\n%s", diff)
			}
		})
	}
}

// TestKeyToProto pins the wire form of one key field by field.
func TestKeyToProto(t *testing.T) {
	k := richKey(t, managed.ECDSAP256, managed.ModeWrap, managed.StatePendingDeletion, 4)
	k.Versions[k.Primary-1].RootKey = "pkcs11:token=kb;object=root-2"
	k.Versions[0].Wrapped = []byte("wrapped material must not travel")
	k.RotationPeriod = 30 * 24 * time.Hour
	k.NextRotation = k.Created.Add(k.RotationPeriod)
	want := &kbv1.KeyMetadata{
		KeyId: k.ID, Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: kbv1.KeyMode_KEY_MODE_WRAP, State: kbv1.KeyState_KEY_STATE_PENDING_DELETION,
		PrimaryVersion: 3, MinDecryptionVersion: 1, Labels: k.Labels, RootKey: "pkcs11:token=kb;object=root-2",
		RotationPeriod: durationpb.New(30 * 24 * time.Hour), NextRotation: timestamppb.New(k.NextRotation),
		DeletionTime: timestamppb.New(k.DeletionTime), CreatedAt: timestamppb.New(k.Created), UpdatedAt: timestamppb.New(k.Updated),
		Revision: 4711, Description: k.Description, Placement: k.Placement, Aliases: k.Aliases,
	}
	for _, v := range k.Versions {
		want.Versions = append(want.Versions, &kbv1.KeyVersion{Version: v.Version, CreatedAt: timestamppb.New(v.Created)})
	}
	if diff := cmp.Diff(want, wire.KeyToProto(k), protocmp.Transform()); diff != "" {
		t.Errorf("KeyToProto mismatch (-want +got):\n%s", diff)
	}

	// Unset optional fields stay unset.
	m := wire.KeyToProto(minimalKey(managed.AES256GCM, managed.ModeDerive))
	if m.RotationPeriod != nil || m.NextRotation != nil || m.DeletionTime != nil {
		t.Errorf("KeyToProto(minimal) = rotation %v, next %v, deletion %v, want all nil", m.RotationPeriod, m.NextRotation, m.DeletionTime)
	}
}

// TestKeyFromProtoVersions checks what an edge's replica keeps of each
// version: the primary's root key for all, and each version's own public
// key.
func TestKeyFromProtoVersions(t *testing.T) {
	k := richKey(t, managed.Ed25519, managed.ModeDerive, managed.StateEnabled, 3)
	k.Versions[0].RootKey = "pkcs11:token=kb;object=old-root"
	m := wire.KeyToProto(k)
	evs := edgeVersions(k)
	// Versions arrive in any order; unknown ones are ignored; one missing
	// leaves that version without a public key.
	evs = []*kbv1.EdgeKeyVersion{evs[2], {Version: 9, PublicKey: []byte("no such version")}, evs[0]}
	got, err := wire.KeyFromProto(m, evs)
	if err != nil {
		t.Fatalf("KeyFromProto = %v", err)
	}
	if len(got.Versions) != 3 {
		t.Fatalf("KeyFromProto: %d versions, want 3", len(got.Versions))
	}
	for i, v := range got.Versions {
		if v.RootKey != k.PrimaryVersion().RootKey {
			t.Errorf("version %d root key = %q, want the primary's %q", v.Version, v.RootKey, k.PrimaryVersion().RootKey)
		}
		want := k.Versions[i].PublicKey
		if i == 1 {
			want = nil
		}
		if !cmp.Equal(v.PublicKey, want) {
			t.Errorf("version %d public key = %x, want %x", v.Version, v.PublicKey, want)
		}
		if len(v.Wrapped) != 0 {
			t.Errorf("version %d carries wrapped material", v.Version)
		}
	}
}

func TestKeyFromProtoRejects(t *testing.T) {
	valid := func() *kbv1.KeyMetadata {
		return wire.KeyToProto(richKey(t, managed.AES256GCM, managed.ModeWrap, managed.StateEnabled, 3))
	}
	for _, tc := range []struct {
		name   string
		mutate func(m *kbv1.KeyMetadata)
	}{
		{"unspecified type", func(m *kbv1.KeyMetadata) { m.Type = kbv1.KeyType_KEY_TYPE_UNSPECIFIED }},
		{"unknown type", func(m *kbv1.KeyMetadata) { m.Type = 99 }},
		{"unspecified mode", func(m *kbv1.KeyMetadata) { m.Mode = kbv1.KeyMode_KEY_MODE_UNSPECIFIED }},
		{"unknown mode", func(m *kbv1.KeyMetadata) { m.Mode = 99 }},
		{"unspecified state", func(m *kbv1.KeyMetadata) { m.State = kbv1.KeyState_KEY_STATE_UNSPECIFIED }},
		{"unknown state", func(m *kbv1.KeyMetadata) { m.State = -1 }},
		{"bad key id", func(m *kbv1.KeyMetadata) { m.KeyId = "-starts-with-dash" }},
		{"empty key id", func(m *kbv1.KeyMetadata) { m.KeyId = "" }},
		{"no versions", func(m *kbv1.KeyMetadata) { m.Versions = nil }},
		{"primary does not exist", func(m *kbv1.KeyMetadata) { m.PrimaryVersion = 4 }},
		{"primary zero", func(m *kbv1.KeyMetadata) { m.PrimaryVersion = 0 }},
		{"min decryption above primary", func(m *kbv1.KeyMetadata) { m.MinDecryptionVersion = m.PrimaryVersion + 1 }},
		{"versions out of order", func(m *kbv1.KeyMetadata) { m.Versions[0], m.Versions[1] = m.Versions[1], m.Versions[0] }},
		{"no root key", func(m *kbv1.KeyMetadata) { m.RootKey = "" }},
		{"derived hmac", func(m *kbv1.KeyMetadata) { m.Type, m.Derived = kbv1.KeyType_KEY_TYPE_HMAC_SHA256, true }},
		{"derived backend", func(m *kbv1.KeyMetadata) { m.Mode, m.Derived = kbv1.KeyMode_KEY_MODE_BACKEND, true }},
		{"rotation period too short", func(m *kbv1.KeyMetadata) { m.RotationPeriod = durationpb.New(time.Hour) }},
		{"invalid placement", func(m *kbv1.KeyMetadata) { m.Placement = `principal.regoin == "eu"` }},
		{"bad label key", func(m *kbv1.KeyMetadata) { m.Labels = map[string]string{"": "x"} }},
		{"bad alias", func(m *kbv1.KeyMetadata) { m.Aliases = []string{"no spaces"} }},
		{"reserved alias", func(m *kbv1.KeyMetadata) { m.Aliases = []string{"aws/s3"} }},
		{"alias twice", func(m *kbv1.KeyMetadata) { m.Aliases = []string{"a", "a"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.mutate(m)
			k, err := wire.KeyFromProto(m, nil)
			if !errors.Is(err, managed.ErrInvalidArgument) {
				t.Errorf("KeyFromProto = %v, %v; want an ErrInvalidArgument error", k, err)
			}
		})
	}
	if _, err := wire.KeyFromProto(valid(), nil); err != nil {
		t.Errorf("KeyFromProto(valid) = %v, want nil", err)
	}
	// An EdgeKey without metadata is refused, not a panic.
	if k, err := wire.KeyFromProto(nil, nil); !errors.Is(err, managed.ErrInvalidArgument) {
		t.Errorf("KeyFromProto(nil) = %v, %v; want an ErrInvalidArgument error", k, err)
	}
}

func TestTypeFromProto(t *testing.T) {
	want := map[kbv1.KeyType]managed.KeyType{
		kbv1.KeyType_KEY_TYPE_AES_256_GCM: managed.AES256GCM,
		kbv1.KeyType_KEY_TYPE_HMAC_SHA256: managed.HMACSHA256,
		kbv1.KeyType_KEY_TYPE_ECDSA_P256:  managed.ECDSAP256,
		kbv1.KeyType_KEY_TYPE_ED25519:     managed.Ed25519,
	}
	// Every value the API defines, plus ones it does not.
	values := []kbv1.KeyType{-1, 99}
	for v := range kbv1.KeyType_name {
		values = append(values, kbv1.KeyType(v))
	}
	for _, v := range values {
		got, ok := wire.TypeFromProto(v)
		w, wantOK := want[v]
		if got != w || ok != wantOK {
			t.Errorf("TypeFromProto(%v) = %q, %v; want %q, %v", v, got, ok, w, wantOK)
		}
	}
	// Each managed type has a wire form that converts back to it.
	for _, typ := range allTypes {
		m := wire.KeyToProto(minimalKey(typ, managed.ModeWrap))
		if got, ok := wire.TypeFromProto(m.GetType()); !ok || got != typ {
			t.Errorf("TypeFromProto(KeyToProto(%q).Type = %v) = %q, %v; want %q, true", typ, m.GetType(), got, ok, typ)
		}
	}
}

func TestModeFromProto(t *testing.T) {
	want := map[kbv1.KeyMode]managed.Mode{
		kbv1.KeyMode_KEY_MODE_DERIVE:  managed.ModeDerive,
		kbv1.KeyMode_KEY_MODE_WRAP:    managed.ModeWrap,
		kbv1.KeyMode_KEY_MODE_BACKEND: managed.ModeBackend,
	}
	values := []kbv1.KeyMode{-1, 99}
	for v := range kbv1.KeyMode_name {
		values = append(values, kbv1.KeyMode(v))
	}
	for _, v := range values {
		got, ok := wire.ModeFromProto(v)
		w, wantOK := want[v]
		if got != w || ok != wantOK {
			t.Errorf("ModeFromProto(%v) = %q, %v; want %q, %v", v, got, ok, w, wantOK)
		}
	}
	for _, mode := range allModes {
		m := wire.KeyToProto(minimalKey(managed.AES256GCM, mode))
		if got, ok := wire.ModeFromProto(m.GetMode()); !ok || got != mode {
			t.Errorf("ModeFromProto(KeyToProto(%q).Mode = %v) = %q, %v; want %q, true", mode, m.GetMode(), got, ok, mode)
		}
	}
}

// TestKeyStatesOnTheWire checks that every state reaches the wire as a
// distinct, specified value and comes back.
func TestKeyStatesOnTheWire(t *testing.T) {
	seen := map[kbv1.KeyState]managed.State{}
	for _, s := range allStates {
		k := minimalKey(managed.AES256GCM, managed.ModeDerive)
		k.State = s
		m := wire.KeyToProto(k)
		if m.GetState() == kbv1.KeyState_KEY_STATE_UNSPECIFIED {
			t.Errorf("KeyToProto(state %q).State = UNSPECIFIED", s)
		}
		if prev, dup := seen[m.GetState()]; dup {
			t.Errorf("states %q and %q both map to %v", prev, s, m.GetState())
		}
		seen[m.GetState()] = s
		got, err := wire.KeyFromProto(m, nil)
		if err != nil || got.State != s {
			t.Errorf("KeyFromProto(state %v) = %v, %v; want state %q", m.GetState(), got, err, s)
		}
	}
	if len(seen) != len(kbv1.KeyState_name)-1 {
		t.Errorf("%d managed states map to %d wire states; the API defines %d besides UNSPECIFIED", len(allStates), len(seen), len(kbv1.KeyState_name)-1)
	}
}

// TestNodeFromProto: every field placement reads comes from the wire
// inventory.
func TestNodeFromProto(t *testing.T) {
	in := &kbv1.Node{NodeId: "edge-1", Kind: "edge", Address: "edge-1.example:7443", Region: "eu", Labels: map[string]string{"pci": "yes"},
		Prefetch: true, Connected: true, Enrolled: true, Revision: 7, AppliedRevision: 6}
	want := placement.Node{ID: "edge-1", Kind: "edge", Address: "edge-1.example:7443", Region: "eu", Labels: map[string]string{"pci": "yes"},
		Prefetch: true, Connected: true, Enrolled: true}
	if diff := cmp.Diff(want, wire.NodesFromProto([]*kbv1.Node{in})[0]); diff != "" {
		t.Errorf("nodeFromProto mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]placement.Node{{}, want}, wire.NodesFromProto([]*kbv1.Node{nil, in})); diff != "" {
		t.Errorf("NodesFromProto mismatch (-want +got):\n%s", diff)
	}
}
