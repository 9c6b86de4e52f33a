package broker

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/byid"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// TestBackendMACOnDeriveRootRefused is finding 2 of issue 13 inside one
// node: a backend-mode hmac-sha256 key on the derive root would MAC any
// derive-mode key's derive input and so hand out its material. CreateKey
// refuses the root outside its role, and a key already made that way
// (before roots had roles) is refused at use.
func TestBackendMACOnDeriveRootRefused(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	victim := e.create(t, "victim", managed.HMACSHA256, managed.ModeDerive, "", false)

	_, err := e.svc.CreateKey(ctx, CreateParams{ID: "evil", Type: managed.HMACSHA256, Mode: managed.ModeBackend, RootKey: "softkms:prf-root"})
	wantErr(t, "backend hmac on the derive root", err, managed.ErrInvalidArgument)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(`"softkms:prf-root" is declared with role derive`)) {
		t.Errorf("CreateKey error %v does not name the root and its role", err)
	}
	for _, tc := range []struct {
		name string
		p    CreateParams
	}{
		{"derive on the wrap root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:aes-root"}},
		{"wrap on the derive root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeWrap, RootKey: "softkms:prf-root"}},
		{"derive on a backend root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:mac-root"}},
		{"backend root of other types", CreateParams{ID: "x", Type: managed.HMACSHA256, Mode: managed.ModeBackend, RootKey: "softkms:ec-root"}},
		{"undeclared root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:undeclared"}},
	} {
		_, err := e.svc.CreateKey(ctx, tc.p)
		wantErr(t, tc.name, err, managed.ErrInvalidArgument)
	}

	// A key made before roles, on the derive root, straight into the
	// registry: its operations are refused now.
	old := &managed.Key{ID: "old-evil", Type: managed.HMACSHA256, Mode: managed.ModeBackend, State: managed.StateEnabled, Primary: 1,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
	if _, err := e.svc.Registry().Create(ctx, old); err != nil {
		t.Fatal(err)
	}
	tag, _, err := e.byID().GenerateMac(ctx, "old-evil", DeriveInput(victim, 1))
	wantErr(t, "backend-mode MAC on the derive root", err, managed.ErrFailedPrecondition)
	if tag != nil {
		t.Errorf("GenerateMac on the derive root returned %x", tag)
	}
}

// TestBackendMACDomainSeparated shows that even a backend-mode MAC on the
// very root a derive-mode key uses never computes that key's material:
// the backend MACs a domain prefix with the message. (Roles keep such a
// key from existing; this is the second wall.) A key without a salt is
// the legacy behaviour the roles must stop: its MAC is the root's HMAC of
// the message, material included.
func TestBackendMACDomainSeparated(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	victim := e.create(t, "victim", managed.HMACSHA256, managed.ModeDerive, "", false)
	material, err := e.backend.MAC(ctx, "prf-root", DeriveInput(victim, 1))
	if err != nil {
		t.Fatal(err)
	}
	// The material is the key's: its MACs are HMAC(material, msg).
	tag, _, err := e.byID().GenerateMac(ctx, "victim", []byte("msg"))
	if err != nil || !hmac.Equal(tag, hmacOf(material, []byte("msg"))) {
		t.Fatalf("derive-mode MAC = %x, %v; not HMAC(material, msg)", tag, err)
	}
	// Undeclared roots: what rootBackend computes when roles do not stop it.
	undeclared, err := NewRoots(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	undeclared.roots = e.roots.roots
	rb := &rootBackend{roots: undeclared}
	inputs := [][]byte{DeriveInput(victim, 1), managed.VersionInput("keybroker/v1/material", "victim", 1)}
	for _, salt := range [][]byte{managed.NewSalt(), victim.Salt} {
		evil := &managed.Key{ID: "evil", Type: managed.HMACSHA256, Mode: managed.ModeBackend, Salt: salt, Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
		for _, in := range inputs {
			got, err := rb.MAC(ctx, evil, 1, in)
			if err != nil {
				t.Fatal(err)
			}
			if got.Equal(material) {
				t.Errorf("a salted backend-mode MAC of %q on the derive root is the victim's material", in)
			}
		}
	}
	legacy := &managed.Key{ID: "evil", Type: managed.HMACSHA256, Mode: managed.ModeBackend, Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
	got, err := rb.MAC(ctx, legacy, 1, DeriveInput(victim, 1))
	if err != nil || !got.Equal(material) {
		t.Errorf("a legacy backend-mode MAC is no longer the root's HMAC of the message (%v)", err)
	}
}

func hmacOf(key *secret.Bytes, msg []byte) []byte {
	h := hmac.New(sha256.New, key.Reveal())
	h.Write(msg)
	return h.Sum(nil)
}

// sweepAway schedules the deletion of id and lets the sweep destroy it on
// the injected clock.
func (e *env) sweepAway(t *testing.T, id string) {
	t.Helper()
	if _, err := e.svc.ScheduleDeletion(t.Context(), id, managed.MinPendingWindow); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(managed.MinPendingWindow + time.Hour)
	if _, deleted, err := e.svc.Sweep(t.Context(), nil); err != nil || len(deleted) != 1 || deleted[0] != id {
		t.Fatalf("Sweep deleted %v, %v; want [%s]", deleted, err, id)
	}
}

// TestRecreatedKeyStaysDead is finding 4 of issue 13: a key deleted and
// created again under the same id, by any admin, must not bring back the
// old material — its ciphertexts stay unreadable, its MACs and public key
// change, and no data key of the old key is used again.
func TestRecreatedKeyStaysDead(t *testing.T) {
	ctx := t.Context()
	ectx := map[string]string{"tenant": "7"}
	for _, tc := range []struct {
		mode    managed.Mode
		root    string
		derived bool
	}{
		{managed.ModeDerive, "", false}, {managed.ModeDerive, "", true}, {managed.ModeWrap, "", false}, {managed.ModeBackend, "softkms:hsm-aes-root", false},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := newEnv(t)
			e.create(t, "k", managed.AES256GCM, tc.mode, tc.root, tc.derived)
			ct, _, err := e.byID().Encrypt(ctx, "k", []byte("old secret"), ectx)
			if err != nil {
				t.Fatal(err)
			}
			dk, err := e.byID().GenerateDataKey(ctx, "k", ectx, true)
			if err != nil {
				t.Fatal(err)
			}
			oldHeader, _, _ := envelope.ParseHeader(ct)
			e.sweepAway(t, "k")

			e.create(t, "k", managed.AES256GCM, tc.mode, tc.root, tc.derived)
			if pt, _, _, err := e.byID().Decrypt(ctx, ct, ectx, ""); err == nil {
				t.Errorf("the re-created key opened the old ciphertext: %q", pt)
			}
			if got, _, err := e.byID().DecryptDataKey(ctx, "k", 1, dk.Wrapped, ectx); err == nil {
				t.Errorf("the re-created key unwrapped the old data key: %x", got.Reveal())
			}
			if pt, _, _, err := e.byID().Decrypt(ctx, dk.Encrypted, ectx, ""); err == nil {
				t.Errorf("the re-created key opened the old encrypted data key: %x", pt)
			}
			ct2, _, err := e.byID().Encrypt(ctx, "k", []byte("new secret"), ectx)
			if err != nil {
				t.Fatal(err)
			}
			newHeader, _, _ := envelope.ParseHeader(ct2)
			if bytes.Equal(newHeader.WrappedDEK, oldHeader.WrappedDEK) {
				t.Error("the re-created key reused the old key's data key")
			}
			if pt, _, _, err := e.byID().Decrypt(ctx, ct2, ectx, ""); err != nil || string(pt) != "new secret" {
				t.Errorf("Decrypt(new) = %q, %v", pt, err)
			}
		})
	}
	t.Run("signing and MAC", func(t *testing.T) {
		e := newEnv(t)
		e.create(t, "sig", managed.ECDSAP256, managed.ModeDerive, "", false)
		e.create(t, "mac", managed.HMACSHA256, managed.ModeDerive, "", false)
		pub, _, _, _ := e.byID().PublicKey(ctx, "sig", 0)
		tag, _, _ := e.byID().GenerateMac(ctx, "mac", []byte("m"))
		e.sweepAway(t, "sig")
		e.sweepAway(t, "mac")
		e.create(t, "sig", managed.ECDSAP256, managed.ModeDerive, "", false)
		e.create(t, "mac", managed.HMACSHA256, managed.ModeDerive, "", false)
		pub2, _, _, _ := e.byID().PublicKey(ctx, "sig", 0)
		tag2, _, _ := e.byID().GenerateMac(ctx, "mac", []byte("m"))
		if bytes.Equal(pub, pub2) {
			t.Error("the re-created signing key has the old public key")
		}
		if bytes.Equal(tag, tag2) {
			t.Error("the re-created MAC key computes the old MACs")
		}
		if ok, _, err := e.byID().VerifyMac(ctx, "mac", 0, []byte("m"), tag); ok || err != nil {
			t.Errorf("the re-created MAC key verified the old tag (%v)", err)
		}
	})
}

// TestRecreatedKeyMissesWarmCaches re-creates a key behind the service's
// back (as another central node sharing the store would, without this
// node's caches hearing of it): nothing cached for the old key — material,
// reused data keys, unwrapped data keys — serves the new one.
func TestRecreatedKeyMissesWarmCaches(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	old := e.create(t, "k", managed.AES256GCM, managed.ModeDerive, "", false)
	ct, _, err := e.byID().Encrypt(ctx, "k", []byte("old"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := e.byID().Decrypt(ctx, ct, nil, ""); err != nil { // warms the unwrap cache
		t.Fatal(err)
	}
	oldMaterial, err := e.svc.mat.Get(ctx, old, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Straight through the registry: the service forgets nothing.
	if err := e.svc.Registry().Delete(ctx, old); err != nil {
		t.Fatal(err)
	}
	created := e.create(t, "k", managed.AES256GCM, managed.ModeDerive, "", false)
	m, err := e.svc.mat.Get(ctx, created, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Equal(oldMaterial) {
		t.Error("the material cache served the deleted key's material")
	}
	if pt, _, _, err := e.byID().Decrypt(ctx, ct, nil, ""); err == nil {
		t.Errorf("the unwrap cache opened the deleted key's ciphertext: %q", pt)
	}
	before := e.svc.DataKeysCreated()
	ct2, _, err := e.byID().Encrypt(ctx, "k", []byte("new"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.svc.DataKeysCreated() != before+1 {
		t.Error("Encrypt reused the deleted key's data key")
	}
	e.svc.ForgetAll()
	if pt, _, _, err := e.byID().Decrypt(ctx, ct2, nil, ""); err != nil || string(pt) != "new" {
		t.Errorf("Decrypt(new) with cold caches = %q, %v", pt, err)
	}
}

// TestSharedRootDistinctMaterial: two deployments whose registries share a
// PRF root derive unrelated material for equal key ids.
func TestSharedRootDistinctMaterial(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	st, err := store.Open(filepath.Join(t.TempDir(), "registry.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	other, err := NewService(ServiceConfig{Registry: NewRegistry(st, e.clock.Now), Roots: e.roots,
		Materials: NewMaterials(e.roots, 100, time.Hour, e.clock.Now), DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root"}, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Service{e.svc, other} {
		if _, err := s.CreateKey(ctx, CreateParams{ID: "same", Type: managed.ECDSAP256, Mode: managed.ModeDerive}); err != nil {
			t.Fatal(err)
		}
	}
	a, _, _, _ := e.byID().PublicKey(ctx, "same", 0)
	b, _, _, _ := byid.Ops{P: other}.PublicKey(ctx, "same", 0)
	if bytes.Equal(a, b) {
		t.Error("two registries on one PRF root derived the same key for one id")
	}
}

// TestLegacyKeysKeepTheirInputs: a key recorded before salts (none in its
// record) keeps the inputs it always had, so every existing ciphertext,
// data key and MAC still opens and verifies.
func TestLegacyKeysKeepTheirInputs(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	put := func(id string, typ managed.KeyType, mode managed.Mode, root string, wrapped []byte) *managed.Key {
		k := &managed.Key{ID: id, Type: typ, Mode: mode, State: managed.StateEnabled, Primary: 1,
			Versions: []managed.Version{{Version: 1, RootKey: root, Wrapped: wrapped}}}
		k, err := e.svc.Registry().Create(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	seal := func(dk *envelope.DataKey, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		ct, err := dk.Seal([]byte("from before salts"), nil)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}

	// Derive mode: material = HMAC(root, "keybroker/v1/material" ‖ 0 ‖ id ‖ 0 ‖ v).
	put("legacy-derive", managed.AES256GCM, managed.ModeDerive, "softkms:prf-root", nil)
	m, err := e.backend.MAC(ctx, "prf-root", managed.VersionInput("keybroker/v1/material", "legacy-derive", 1))
	if err != nil {
		t.Fatal(err)
	}
	cts := [][]byte{seal(envelope.GenerateDataKey(m, "legacy-derive", 1))}

	// Wrap mode: material wrapped with AAD "keybroker/v1/wrap" ‖ 0 ‖ id ‖ 0 ‖ v.
	raw := bytes.Repeat([]byte{5}, 32)
	w, err := e.backend.Encrypt(ctx, "aes-root", raw, managed.VersionInput("keybroker/v1/wrap", "legacy-wrap", 1))
	if err != nil {
		t.Fatal(err)
	}
	put("legacy-wrap", managed.AES256GCM, managed.ModeWrap, "softkms:aes-root", w)
	cts = append(cts, seal(envelope.GenerateDataKey(secret.New(raw), "legacy-wrap", 1)))

	// Backend mode: the data key wrapped with AAD "keybroker/v1/backend-dek" ‖ 0 ‖ id ‖ 0 ‖ v.
	put("legacy-backend", managed.AES256GCM, managed.ModeBackend, "softkms:hsm-aes-root", nil)
	dek := bytes.Repeat([]byte{6}, 32)
	wd, err := e.backend.Encrypt(ctx, "hsm-aes-root", dek, managed.VersionInput("keybroker/v1/backend-dek", "legacy-backend", 1))
	if err != nil {
		t.Fatal(err)
	}
	cts = append(cts, seal(envelope.NewDataKey("legacy-backend", 1, secret.New(dek), wd)))

	for _, ct := range cts {
		if pt, k, _, err := e.byID().Decrypt(ctx, ct, nil, ""); err != nil || string(pt) != "from before salts" {
			t.Errorf("legacy key %s: Decrypt = %q, %v", k.ID, pt, err)
		}
	}
	// And new ciphertexts of a legacy key open after the caches are cold.
	ct, _, err := e.byID().Encrypt(ctx, "legacy-derive", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.svc.ForgetAll()
	if _, _, _, err := e.byID().Decrypt(ctx, ct, nil, ""); err != nil {
		t.Errorf("a legacy key's new ciphertext: %v", err)
	}

	// Backend-mode MAC: the root's HMAC of the message itself.
	put("legacy-mac", managed.HMACSHA256, managed.ModeBackend, "softkms:mac-root", nil)
	tag, _, err := e.byID().GenerateMac(ctx, "legacy-mac", []byte("msg"))
	want, err2 := e.backend.MAC(ctx, "mac-root", []byte("msg"))
	if err != nil || err2 != nil || !hmac.Equal(tag, want.Reveal()) {
		t.Errorf("legacy backend-mode MAC = %x, %v; want the root's HMAC of the message (%v)", tag, err, err2)
	}
	if errors.Is(err, managed.ErrFailedPrecondition) {
		t.Error("a legacy key on a declared backend root was refused")
	}
}

// TestDeclareRootKeys: a root key has one role — declared twice, in two
// roles or under two spellings, it is refused, as are unknown roles and
// types and keys no backend holds.
func TestDeclareRootKeys(t *testing.T) {
	e := newEnv(t)
	full := "softkms:prf-root;" + e.roots.roots[0].uri.BackendURI()[len("softkms:"):]
	for _, tc := range []struct {
		name string
		keys []RootKey
		want string
	}{
		{"two roles", []RootKey{{URI: "softkms:prf-root", Role: managed.RoleDerive}, {URI: "softkms:prf-root", Role: managed.RoleBackend}}, "declared twice"},
		{"two spellings", []RootKey{{URI: "softkms:prf-root", Role: managed.RoleDerive}, {URI: full, Role: managed.RoleDerive}}, "declared twice"},
		{"unknown role", []RootKey{{URI: "softkms:prf-root", Role: "prf"}}, `role "prf"`},
		{"unknown type", []RootKey{{URI: "softkms:ec-root", Role: managed.RoleBackend, Types: []managed.KeyType{"rsa"}}}, `type "rsa"`},
		{"no backend holds it", []RootKey{{URI: "pkcs11:token=t;object=o", Role: managed.RoleDerive}}, "no configured backend"},
	} {
		err := e.roots.Declare(tc.keys)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: Declare = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
