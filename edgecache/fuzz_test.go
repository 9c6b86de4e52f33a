package edgecache

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// The edge FuzzReplica restores, its trust domain, and the policy and
// labels its stored keys carry (this file keeps its own, apart from the
// cluster harness).
const (
	fuzzEdgeID = "edge-fuzz-1"
	fuzzTD     = "kb.test"
	fuzzPolicy = `
@id("app-keys")
permit (principal == Client::"app", action, resource is Key)
when { resource.hasTag("owner") && resource.getTag("owner") == "app" };

@id("edges-hold")
permit (principal is Edge, action == Action::"HoldMaterial", resource);
`
)

var fuzzLabels = map[string]string{"owner": "app"}

// fuzzSealingKey is the edge's sealing.key, fixed so that the material
// sealed to it in testdata/fuzz opens in every run: the KEM id of
// MLKEM768-X25519 and a 32-byte seed.
var fuzzSealingKey = append([]byte{0x64, 0x7a}, bytes.Repeat([]byte{0x11}, 32)...)

// fuzzUnreachable is a central tier that never answers: a restored edge
// must serve, or refuse, from its replica alone.
type fuzzUnreachable struct{}

func (fuzzUnreachable) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	return status.Error(codes.Unavailable, "central tier unreachable (fuzz)")
}

func (fuzzUnreachable) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unavailable, "central tier unreachable (fuzz)")
}

// fuzzReplicaSeed is one replica.db: a stored key under its bucket key,
// and the stored policy and inventory (each left out when empty).
type fuzzReplicaSeed struct {
	keyID, key, policy, nodes []byte
}

// fuzzReplicaSeeds are replicas as an edge writes them — keys of each
// type with material sealed to the edge, a policy, an inventory — and
// damaged ones.
func fuzzReplicaSeeds(tb testing.TB) []fuzzReplicaSeed {
	tb.Helper()
	sk, err := sealed.ParsePrivateKey(fuzzSealingKey)
	if err != nil {
		tb.Fatal(err)
	}
	mustMarshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	policyDoc := mustMarshal(&kbv1.EdgePolicy{Files: []*kbv1.PolicyFile{{Name: "edge.cedar", Content: []byte(fuzzPolicy)}}})
	nodes := mustMarshal(&kbv1.ListNodesResponse{Nodes: []*kbv1.Node{
		{NodeId: "central-1", Kind: "central", Address: "central.example:7443"},
		{NodeId: fuzzEdgeID, Kind: "edge", Address: fuzzEdgeID + ".example:7443", Region: "eu", Connected: true},
		{NodeId: "edge-us-1", Kind: "edge", Address: "edge-us-1.example:7443", Region: "us", Labels: map[string]string{"pci": "yes"}},
	}})
	now := time.Unix(1_700_000_000, 0).UTC()
	var out []fuzzReplicaSeed
	for i, k := range []*managed.Key{
		{ID: "shared", Type: managed.AES256GCM, Mode: managed.ModeDerive, Labels: fuzzLabels, Placement: "true"},
		{ID: "tenants", Type: managed.AES256GCM, Mode: managed.ModeWrap, Derived: true, Labels: fuzzLabels},
		{ID: "tags", Type: managed.HMACSHA256, Mode: managed.ModeDerive, Placement: `principal.region == "eu"`},
		{ID: "signer", Type: managed.Ed25519, Mode: managed.ModeWrap, MinDecryptionVersion: 2},
		{ID: "hsm", Type: managed.AES256GCM, Mode: managed.ModeBackend, State: managed.StateDisabled},
	} {
		if k.State == "" {
			k.State = managed.StateEnabled
		}
		k.Primary, k.Created, k.Updated, k.Revision = 2, now, now, uint64(i+1)
		ek := &kbv1.EdgeKey{}
		for v := uint32(1); v <= 2; v++ {
			material := secret.Copy(bytes.Repeat([]byte{byte(i), byte(v)}, 16))
			ver := managed.Version{Version: v, Created: now, RootKey: "softkms:root"}
			if k.Type.Asymmetric() {
				signer, err := managed.SigningKey(k.Type, material)
				if err != nil {
					tb.Fatal(err)
				}
				if ver.PublicKey, err = x509.MarshalPKIXPublicKey(signer.Public()); err != nil {
					tb.Fatal(err)
				}
			}
			k.Versions = append(k.Versions, ver)
			blob, err := sealed.Seal(sk.PublicKey(), fuzzEdgeID, k.ID, v, material)
			if err != nil {
				tb.Fatal(err)
			}
			ek.Versions = append(ek.Versions, &kbv1.EdgeKeyVersion{Version: v, PublicKey: ver.PublicKey, SealedMaterial: blob})
		}
		ek.Metadata = wire.KeyToProto(k)
		out = append(out, fuzzReplicaSeed{[]byte(k.ID), mustMarshal(ek), policyDoc, nodes})
	}
	good := out[0]
	out = append(out,
		fuzzReplicaSeed{good.keyID, good.key, nil, nil},
		fuzzReplicaSeed{good.keyID, good.key[:len(good.key)-3], good.policy, good.nodes},
		fuzzReplicaSeed{[]byte("other"), good.key, good.policy, good.nodes},
		fuzzReplicaSeed{good.keyID, good.key, mustMarshal(&kbv1.EdgePolicy{Files: []*kbv1.PolicyFile{{Name: "x.cedar", Content: []byte("permit (")}}}), good.nodes},
		fuzzReplicaSeed{good.keyID, good.key, good.policy, []byte{0x0a, 0xff}},
		fuzzReplicaSeed{nil, nil, nil, nil},
	)
	return out
}

// writeReplica writes a replica.db and sealing.key into dir as an edge
// left them: revision 7 and a lease far in the future, so the restored
// edge serves.
func writeReplica(tb testing.TB, dir string, s fuzzReplicaSeed) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, "sealing.key"), fuzzSealingKey, 0o600); err != nil {
		tb.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		st, err := tx.CreateBucket(bucketState)
		if err != nil {
			return err
		}
		kb, err := tx.CreateBucket(bucketKeys)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketMaterial); err != nil {
			return err
		}
		lease := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := st.Put(stateRevision, binary.BigEndian.AppendUint64(nil, 7)); err != nil {
			return err
		}
		if err := st.Put(stateLease, binary.BigEndian.AppendUint64(nil, uint64(lease.UnixNano()))); err != nil {
			return err
		}
		for _, kv := range []struct{ k, v []byte }{{statePolicy, s.policy}, {stateNodes, s.nodes}} {
			if len(kv.v) > 0 {
				if err := st.Put(kv.k, kv.v); err != nil {
					return err
				}
			}
		}
		if len(s.keyID) > 0 && len(s.keyID) <= bolt.MaxKeySize {
			return kb.Put(s.keyID, s.key)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// FuzzReplica writes fuzzer-built values where an edge keeps its replica
// on disk — a stored key (an EdgeKey, material sealed to the edge
// included), the policy (an EdgePolicy) and the inventory (a
// ListNodesResponse) in replica.db — and starts the edge on it with the
// central tier unreachable. It checks that nothing panics; that a replica
// the edge refuses is refused with an edgecache error and leaves
// replica.db unlocked; and that a replica it accepts holds only valid keys,
// listed in order, and answers from them — placement, public keys, key
// lookups, local or forwarded operations on stored sealed material —
// with errors a caller can be given (or, for stored material that does
// not open, the edge's own fault).
func FuzzReplica(f *testing.F) {
	for _, s := range fuzzReplicaSeeds(f) {
		f.Add(s.keyID, s.key, s.policy, s.nodes)
	}
	f.Fuzz(func(t *testing.T, keyID, key, policyDoc, nodes []byte) {
		dir := t.TempDir()
		writeReplica(t, dir, fuzzReplicaSeed{keyID, key, policyDoc, nodes})
		ec, err := Open(Config{NodeID: fuzzEdgeID, TrustDomain: fuzzTD, Address: fuzzEdgeID + ".example:7443",
			MaxStaleness: time.Hour, DataDir: dir, Central: fuzzUnreachable{}})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "edgecache: ") {
				t.Fatalf("Open error %q does not name the package", err)
			}
			db, lerr := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
			if errors.Is(lerr, bolterrors.ErrTimeout) {
				t.Fatal("replica.db is still locked after the refused Open")
			}
			if lerr == nil {
				db.Close()
			}
			return
		}
		defer func() {
			if err := ec.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		ctx := identity.NewContext(t.Context(), identity.Identity{TrustDomain: fuzzTD, Kind: identity.Client, Name: "app"})
		node := opsByID(ec)
		keys, _, err := node.ListKeys(ctx, nil, managed.MaxListPageSize, "", nil)
		if err != nil {
			t.Fatalf("a restored edge does not list its keys: %v", err)
		}
		if !slices.IsSortedFunc(keys, func(a, b *managed.Key) int { return strings.Compare(a.ID, b.ID) }) {
			t.Fatal("restored keys are not in id order")
		}
		for _, k := range keys {
			if err := k.Validate(); err != nil {
				t.Fatalf("restored key %q does not validate: %v", k.ID, err)
			}
			node.Served(k, "Encrypt")
			_, _ = node.LookupKey(ctx, k, policy.Decrypt, map[string]string{"region": "us"})
			_, _, _, err := node.PublicKey(ctx, k.ID, 0)
			checkFuzzError(t, "PublicKey", err)
			switch k.Type {
			case managed.AES256GCM:
				_, _, err = node.Encrypt(ctx, k.ID, []byte("x"), map[string]string{"tenant": "1"})
			case managed.HMACSHA256:
				_, _, err = node.GenerateMac(ctx, k.ID, []byte("x"))
			default:
				_, _, err = node.Sign(ctx, k.ID, []byte("x"), false)
			}
			checkFuzzError(t, "operation on "+k.ID, err)
		}
	})
}

// checkFuzzError fails on an error the edge should not give: anything
// but a managed error kind or a gRPC status other than Internal or
// Unknown — except stored sealed material that does not open, which is
// damage on the edge's side and reaches the caller as Internal by design.
func checkFuzzError(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, kind := range []error{managed.ErrInvalidArgument, managed.ErrNotFound, managed.ErrFailedPrecondition, managed.ErrUnavailable,
		managed.ErrPermissionDenied, sealed.ErrOpen, sealed.ErrMalformed} {
		if errors.Is(err, kind) {
			return
		}
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Internal && st.Code() != codes.Unknown {
		return
	}
	t.Fatalf("%s: error %v (%T) would reach the caller as Internal", what, err, err)
}
