package edgecache

import (
	"bytes"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/wire"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
)

// TestRecreatedKeyStaysDeadAtTheEdge is finding 4 of issue 13 across the
// tiers: a key deleted by the lifecycle sweep and created again under its
// id opens none of the old key's ciphertexts, at the edge (whose memory and
// disk hold the old key's material) or at central, while ciphertexts of
// the new key cross between the tiers as before: both compute the data-key
// AAD with the key's salt.
func TestRecreatedKeyStaysDeadAtTheEdge(t *testing.T) {
	c := startCentral(t)
	ctx := t.Context()
	keys := []*kbv1.CreateKeyRequest{
		{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		{KeyId: "wrapped", Type: aes256, Mode: wrap, Labels: appLabels, Placement: "true"},
	}
	c.createKeys(t, keys...)
	for _, prefetch := range []bool{true, false} {
		t.Run(map[bool]string{true: "prefetch", false: "fetch on use"}[prefetch], func(t *testing.T) {
			cfg := edgeConfig(t, c, map[bool]string{true: "edge-eu-1", false: "edge-eu-2"}[prefetch], t.TempDir())
			cfg.Prefetch = prefetch
			ec := open(t, cfg)
			startRun(t, ec)
			synced(t, c, ec)
			edge := serveEdge(t, c, ec).kb(t, identity.Client, "app")

			old := map[string][]byte{}
			for _, k := range keys {
				enc, err := edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: k.KeyId, Plaintext: []byte("old secret")})
				must(t, "Encrypt at the edge", err)
				old[k.KeyId] = enc.GetCiphertext()
				cenc, err := c.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: k.KeyId, Plaintext: []byte("old secret")})
				must(t, "Encrypt at central", err)
				old[k.KeyId+"@central"] = cenc.GetCiphertext()
				if _, err := edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: cenc.GetCiphertext()}); err != nil {
					t.Fatalf("the edge does not open central's ciphertext before deletion: %v", err)
				}

				_, err = c.svc.ScheduleDeletion(ctx, k.KeyId, managed.MinPendingWindow)
				must(t, "ScheduleDeletion", err)
			}
			c.clock.Add(managed.MinPendingWindow + time.Hour)
			_, deleted, err := c.svc.Sweep(ctx, nil)
			if err != nil || len(deleted) != len(keys) {
				t.Fatalf("Sweep deleted %v, %v", deleted, err)
			}
			c.createKeys(t, keys...)
			synced(t, c, ec)

			for _, k := range keys {
				ck, err := c.svc.Registry().Get(ctx, k.KeyId)
				must(t, "Get", err)
				ek := replicaKeyOf(ec, k.KeyId)
				if len(ck.Salt) != 32 || !bytes.Equal(ek.Salt, ck.Salt) {
					t.Errorf("%s: the edge's salt %x is not central's %x", k.KeyId, ek.Salt, ck.Salt)
				}
				for _, name := range []string{k.KeyId, k.KeyId + "@central"} {
					if dec, err := edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: old[name]}); err == nil {
						t.Errorf("%s: the edge opened the deleted key's ciphertext: %q", name, dec.GetPlaintext())
					}
					if dec, err := c.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: old[name]}); err == nil {
						t.Errorf("%s: central opened the deleted key's ciphertext: %q", name, dec.GetPlaintext())
					}
				}
				enc, err := edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: k.KeyId, Plaintext: []byte("new")})
				must(t, "Encrypt at the edge after re-creation", err)
				if dec, err := c.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()}); err != nil || string(dec.GetPlaintext()) != "new" {
					t.Errorf("%s: central Decrypt of the edge's new ciphertext = %q, %v", k.KeyId, dec.GetPlaintext(), err)
				}
				cenc, err := c.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: k.KeyId, Plaintext: []byte("new")})
				must(t, "Encrypt at central after re-creation", err)
				if dec, err := edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: cenc.GetCiphertext()}); err != nil || string(dec.GetPlaintext()) != "new" {
					t.Errorf("%s: edge Decrypt of central's new ciphertext = %q, %v", k.KeyId, dec.GetPlaintext(), err)
				}
			}
			// The next subtest starts from a fresh edge and these keys.
		})
	}
}

// TestBadSaltRefused: a key whose salt is not 32 bytes (or none) is
// refused by the replica, not used with an AAD central would not compute.
func TestBadSaltRefused(t *testing.T) {
	k := &managed.Key{ID: "k", Type: managed.AES256GCM, Mode: managed.ModeDerive, State: managed.StateEnabled, Primary: 1,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf"}}}
	for _, salt := range [][]byte{nil, bytes.Repeat([]byte{1}, 32), {1, 2, 3}, bytes.Repeat([]byte{1}, 33)} {
		ek := &kbv1.EdgeKey{Metadata: wire.KeyToProto(k), Salt: salt}
		_, err := (&Cache{}).fromProto(ek)
		if ok := len(salt) == 0 || len(salt) == 32; (err == nil) != ok {
			t.Errorf("fromProto with a %d-byte salt: %v", len(salt), err)
		}
	}
}
