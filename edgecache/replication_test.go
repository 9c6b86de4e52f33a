package edgecache

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
)

var (
	aes256    = kbv1.KeyType_KEY_TYPE_AES_256_GCM
	hmac256   = kbv1.KeyType_KEY_TYPE_HMAC_SHA256
	ecdsaP256 = kbv1.KeyType_KEY_TYPE_ECDSA_P256
	derive    = kbv1.KeyMode_KEY_MODE_DERIVE
	wrap      = kbv1.KeyMode_KEY_MODE_WRAP
	backend   = kbv1.KeyMode_KEY_MODE_BACKEND
)

// describe is DescribeKey at the central tier.
func describe(t *testing.T, c *central, id string) *kbv1.KeyMetadata {
	t.Helper()
	resp, err := c.kb.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: id})
	must(t, "DescribeKey "+id+" at central", err)
	return resp.GetKey()
}

// sameAsCentral fails unless the edge's replica of id describes the key as
// the central tier does.
func sameAsCentral(t *testing.T, c *central, ec *Cache, id string) {
	t.Helper()
	k, err := ec.Performer().Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get(%q) at the edge: %v", id, err)
	}
	// The client describing the key at central is not told its root key.
	if diff := cmp.Diff(describe(t, c, id), wire.KeyToProto(k), protocmp.Transform(), protocmp.IgnoreFields(&kbv1.KeyMetadata{}, "root_key")); diff != "" {
		t.Errorf("key %q at the edge differs from central (-central +edge):\n%s", id, diff)
	}
}

func TestReplication(t *testing.T) {
	c := startCentral(t)
	ctx := t.Context()
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "signer", Type: ecdsaP256, Mode: wrap, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "hsm", Type: aes256, Mode: backend, RootKey: "softkms:hsm-aes", Labels: appLabels},
	)
	cfg := edgeConfig(t, c, "edge-eu-1", t.TempDir())
	cfg.Prefetch = true
	ec := open(t, cfg)

	// Before the first synchronisation nothing is served.
	if err := ec.Serving(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not yet synchronised") {
		t.Errorf("Serving() before Run = %v, want Unavailable: not yet synchronised", err)
	}
	if _, err := ec.Performer().Get(ctx, "shared"); status.Code(err) != codes.Unavailable {
		t.Errorf("Get before Run = %v, want Unavailable", err)
	}
	if ec.Revision() != 0 || !ec.LeaseExpires().IsZero() || ec.Connected() {
		t.Errorf("before Run: revision %d, lease %v, connected %v; want 0, zero, false", ec.Revision(), ec.LeaseExpires(), ec.Connected())
	}

	startRun(t, ec)
	rev := synced(t, c, ec)
	if got := ec.Revision(); got < rev {
		t.Errorf("Revision() = %d, want at least central's %d", got, rev)
	}
	if err := ec.Serving(); err != nil {
		t.Fatalf("Serving() after synchronising = %v", err)
	}
	for _, id := range []string{"shared", "signer", "hsm"} {
		sameAsCentral(t, c, ec, id)
	}
	keys, next, err := ec.Performer().ListKeys(ctx, nil, 0, "", nil)
	if err != nil || next != "" {
		t.Fatalf("ListKeys = %v, %q, %v", keys, next, err)
	}
	var ids []string
	for _, k := range keys {
		ids = append(ids, k.ID)
	}
	if want := []string{"hsm", "shared", "signer"}; !cmp.Equal(ids, want) {
		t.Errorf("ListKeys at the edge = %v, want %v", ids, want)
	}
	if _, err := ec.Performer().Get(ctx, "nope"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	// The prefetching edge received v1 of the keys it may hold, sealed.
	if blob := ec.sealedBlob(replicaKeyOf(ec, "shared"), 1); len(blob) == 0 {
		t.Error("the prefetching edge holds no sealed material for shared v1")
	}
	if blob := ec.sealedBlob(replicaKeyOf(ec, "hsm"), 1); len(blob) != 0 {
		t.Error("the edge holds material for a backend-mode key")
	}

	// Every kind of change reaches the edge, which acknowledges it.
	steps := []struct {
		name   string
		change func() error
		check  func(k *managed.Key) bool
		key    string
	}{
		{"rotate", func() error {
			_, err := c.admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "shared"})
			return err
		}, func(k *managed.Key) bool { return k.Primary == 2 && len(k.Versions) == 2 }, "shared"},
		{"relabel", func() error {
			desc := "the shared key"
			_, err := c.admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "shared", Labels: map[string]string{"tier": "gold"}, Description: &desc})
			return err
		}, func(k *managed.Key) bool { return k.Labels["tier"] == "gold" && k.Description == "the shared key" }, "shared"},
		{"disable", func() error {
			_, err := c.admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "signer"})
			return err
		}, func(k *managed.Key) bool { return k.State == managed.StateDisabled }, "signer"},
	}
	for _, s := range steps {
		must(t, s.name, s.change())
		rev := synced(t, c, ec)
		k, err := ec.Performer().Get(ctx, s.key)
		if err != nil || !s.check(k) {
			t.Errorf("after %s (revision %d) the edge has %+v, %v", s.name, rev, k, err)
		}
		sameAsCentral(t, c, ec, s.key)
	}
	if n := c.node(t, "edge-eu-1"); n.GetAppliedRevision() != ec.Revision() {
		t.Errorf("central lists applied_revision %d, the edge is at %d", n.GetAppliedRevision(), ec.Revision())
	}
	if blob := ec.sealedBlob(replicaKeyOf(ec, "shared"), 2); len(blob) == 0 {
		t.Error("the rotation brought no sealed material for shared v2")
	}
	if blob := ec.sealedBlob(replicaKeyOf(ec, "signer"), 1); len(blob) != 0 {
		t.Error("the disabled key's material is still held")
	}
	if _, _, err := opsByID(ec).Sign(ctx, "signer", []byte("m"), false); !errors.Is(err, managed.ErrFailedPrecondition) {
		t.Errorf("Sign with a disabled key at the edge = %v, want ErrFailedPrecondition", err)
	}
	if s := ec.Stats(); s.Events == 0 || s.Fetches != 0 {
		t.Errorf("Stats() = %+v, want events applied and no fetches at a prefetching edge", s)
	}
}

// TestPlacementChangeDropsMaterial moves a key away from the edge: its
// material leaves memory and disk, and operations are forwarded.
func TestPlacementChangeDropsMaterial(t *testing.T) {
	c := startCentral(t)
	ctx := asApp(t.Context())
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "moving", Type: aes256, Mode: derive, Labels: appLabels, Placement: `principal.region == "eu"`})
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir())) // fetches on first use
	startRun(t, ec)
	synced(t, c, ec)

	ct, _, err := opsByID(ec).Encrypt(ctx, "moving", []byte("before"), nil)
	must(t, "Encrypt at the edge", err)
	if s := ec.Stats(); s.Fetches != 1 || s.Forwards != 0 || s.MaterialEntries != 1 {
		t.Fatalf("after a local Encrypt: %+v, want one fetch, no forward, one entry", s)
	}
	if ec.disk.getMaterial(replicaKeyOf(ec, "moving"), 1) == nil {
		t.Fatal("the fetched material was not kept on disk")
	}

	us := `principal.region == "us"`
	_, err = c.admin.UpdateKey(t.Context(), &kbv1.UpdateKeyRequest{KeyId: "moving", Placement: &us})
	must(t, "UpdateKey placement", err)
	synced(t, c, ec)
	if s := ec.Stats(); s.MaterialEntries != 0 {
		t.Errorf("material entries after placement moved away = %d, want 0", s.MaterialEntries)
	}
	if ec.disk.getMaterial(replicaKeyOf(ec, "moving"), 1) != nil {
		t.Error("the material is still on disk after placement moved away")
	}
	// Both directions still work: now by forwarding the client's signed
	// calls.
	kb := serveEdge(t, c, ec).kb(t, identity.Client, "app")
	pt, err := kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: ct})
	if err != nil || string(pt.GetPlaintext()) != "before" {
		t.Errorf("Decrypt after the move = %q, %v", pt.GetPlaintext(), err)
	}
	enc, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "moving", Plaintext: []byte("after")})
	if err != nil || enc.GetKeyId() != "moving" {
		t.Fatalf("Encrypt after the move = %v, %v", enc, err)
	}
	dec, err := c.kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "after" {
		t.Errorf("central Decrypt of the forwarded Encrypt = %q, %v", dec.GetPlaintext(), err)
	}
	if s := ec.Stats(); s.Forwards != 2 || s.Fetches != 1 {
		t.Errorf("after the move: %+v, want two forwards and still one fetch", s)
	}
	var via int
	for _, r := range c.auditLines(t) {
		if r.Via == "edge-eu-1" && r.Key == "moving" && r.Principal == app.String() && r.Outcome == "ok" {
			via++
		}
	}
	if via != 2 {
		t.Errorf("central audited %d calls forwarded by edge-eu-1 as %s, want 2", via, app)
	}
}

// replicaKeyOf returns the replica's key id (its salt names its material),
// or a key with only that id when the replica has none.
func replicaKeyOf(c *Cache, id string) *managed.Key {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if rk, ok := c.keys[id]; ok {
		return rk.key
	}
	return &managed.Key{ID: id}
}
