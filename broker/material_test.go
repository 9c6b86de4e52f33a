package broker

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// softRoots opens a softkms keystore with an AES and an HMAC root (and an
// ECDSA one for backend mode) and returns Roots over it.
func softRoots(t *testing.T) (*Roots, *softkms.Backend) {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("11", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "softkms.json")
	b, err := softkms.New(t.Context(), softkms.Config{Path: path, KEKFile: kek})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for name, alg := range map[string]backends.Algorithm{"aes-root": backends.AES256, "prf-root": backends.HMAC256, "ec-root": backends.ECDSAP256} {
		if _, err := b.CreateKey(t.Context(), name, alg); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewRoots(map[string]backends.Backend{"soft": b}, map[string]string{"soft": "softkms:path=" + path + ";kek-source=" + kek})
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

func TestResolve(t *testing.T) {
	r, _ := softRoots(t)
	for _, tc := range []struct{ uri, key, err string }{
		{"softkms:prf-root", "prf-root", ""},
		{"softkms:", "", "names no key"},
		{"pkcs11:token=kb;object=x", "", "no configured backend"},
		{"softkms:x;path=/elsewhere.json;kek-source=/k", "", "no configured backend"},
		{"nonsense", "", "root key"},
	} {
		_, name, key, err := r.Resolve(tc.uri)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, managed.ErrInvalidArgument) {
				t.Errorf("Resolve(%q) err = %v, want invalid argument containing %q", tc.uri, err, tc.err)
			}
			continue
		}
		if err != nil || key != tc.key || name != "soft" {
			t.Errorf("Resolve(%q) = %q, %q, %v", tc.uri, name, key, err)
		}
	}
}

func TestDeriveIsDeterministicAndSeparated(t *testing.T) {
	ctx := t.Context()
	r, _ := softRoots(t)
	k := &managed.Key{ID: "payments", Type: managed.AES256GCM, Mode: managed.ModeDerive, Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}, {Version: 2, RootKey: "softkms:prf-root"}}}
	m1, err := NewMaterials(r, 10, time.Hour, nil).Get(ctx, k, 1)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh material service (another central node) derives the same.
	m1b, _ := NewMaterials(r, 10, time.Hour, nil).Get(ctx, k, 1)
	if !m1.Equal(m1b) {
		t.Error("derived material differs between two derivations")
	}
	m2, _ := NewMaterials(r, 10, time.Hour, nil).Get(ctx, k, 2)
	if m1.Equal(m2) {
		t.Error("versions 1 and 2 derived the same material")
	}
	other := &managed.Key{ID: "refunds", Type: managed.AES256GCM, Mode: managed.ModeDerive, Versions: k.Versions}
	m3, _ := NewMaterials(r, 10, time.Hour, nil).Get(ctx, other, 1)
	if m1.Equal(m3) {
		t.Error("two keys derived the same material")
	}
	if _, err := NewMaterials(r, 10, time.Hour, nil).Get(ctx, k, 3); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("Get(missing version) = %v", err)
	}
	bad := &managed.Key{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, Versions: []managed.Version{{Version: 1, RootKey: "softkms:aes-root"}}}
	if _, err := NewMaterials(r, 10, time.Hour, nil).Get(ctx, bad, 1); !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("derive with an AES root: err = %v, want the backend's invalid argument", err)
	}
}

func TestWrapModeRoundTrip(t *testing.T) {
	ctx := t.Context()
	r, _ := softRoots(t)
	ms := NewMaterials(r, 10, time.Hour, nil)
	k := &managed.Key{ID: "vault", Type: managed.AES256GCM, Mode: managed.ModeWrap}
	v, err := ms.NewVersion(ctx, k, "softkms:aes-root", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Wrapped) == 0 || v.RootKey != "softkms:aes-root" {
		t.Fatalf("NewVersion = %+v", v)
	}
	k.Versions = []managed.Version{v}
	m, err := NewMaterials(r, 10, time.Hour, nil).Get(ctx, k, 1)
	if err != nil || m.Len() != 32 {
		t.Fatalf("Get = %v, %v", m, err)
	}
	// The wrapped material is bound to its key and version.
	moved := &managed.Key{ID: "other", Type: managed.AES256GCM, Mode: managed.ModeWrap, Versions: []managed.Version{v}}
	if _, err := NewMaterials(r, 10, time.Hour, nil).Get(ctx, moved, 1); !errors.Is(err, backends.ErrDecryptionFailed) {
		t.Errorf("wrapped material moved to another key: err = %v, want decryption failure", err)
	}
	if _, err := ms.NewVersion(ctx, k, "softkms:prf-root", 2); err == nil {
		t.Error("wrap mode accepted an HMAC root key")
	}
}

func TestSigningKeysFromMaterial(t *testing.T) {
	ctx := t.Context()
	r, _ := softRoots(t)
	ms := NewMaterials(r, 10, time.Hour, nil)
	for _, typ := range []managed.KeyType{managed.ECDSAP256, managed.Ed25519} {
		k := &managed.Key{ID: "signer-" + string(typ), Type: typ, Mode: managed.ModeDerive}
		v, err := ms.NewVersion(ctx, k, "softkms:prf-root", 1)
		if err != nil {
			t.Fatal(err)
		}
		k.Versions = []managed.Version{v}
		m, err := ms.Get(ctx, k, 1)
		if err != nil {
			t.Fatal(err)
		}
		sk, err := managed.SigningKey(typ, m)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.ParsePKIXPublicKey(v.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("hello")
		d := sha256.Sum256(msg)
		switch p := pub.(type) {
		case *ecdsa.PublicKey:
			sig, _ := ecdsa.SignASN1(nil, sk.(*ecdsa.PrivateKey), d[:])
			if !ecdsa.VerifyASN1(p, d[:], sig) {
				t.Error("ECDSA key from material does not match the recorded public key")
			}
		case ed25519.PublicKey:
			if !ed25519.Verify(p, msg, ed25519.Sign(sk.(ed25519.PrivateKey), msg)) {
				t.Error("Ed25519 key from material does not match the recorded public key")
			}
		}
	}
	// Any 32 bytes make a valid ECDSA key, including all-zero and all-one.
	for _, b := range []byte{0x00, 0xff} {
		raw := make([]byte, 32)
		for i := range raw {
			raw[i] = b
		}
		if _, err := managed.SigningKey(managed.ECDSAP256, secret.New(raw)); err != nil {
			t.Errorf("managed.SigningKey(%02x…) = %v", b, err)
		}
	}
}

func TestBackendModeChecksRoot(t *testing.T) {
	ctx := t.Context()
	r, _ := softRoots(t)
	ms := NewMaterials(r, 10, time.Hour, nil)
	if _, err := ms.NewVersion(ctx, &managed.Key{ID: "s", Type: managed.ECDSAP256, Mode: managed.ModeBackend}, "softkms:aes-root", 1); !errors.Is(err, managed.ErrInvalidArgument) {
		t.Errorf("backend ECDSA key on an AES root: err = %v", err)
	}
	v, err := ms.NewVersion(ctx, &managed.Key{ID: "s", Type: managed.ECDSAP256, Mode: managed.ModeBackend}, "softkms:ec-root", 1)
	if err != nil || len(v.PublicKey) == 0 {
		t.Errorf("backend ECDSA key on an EC root = %+v, %v", v, err)
	}
	k := &managed.Key{ID: "s", Type: managed.ECDSAP256, Mode: managed.ModeBackend, Versions: []managed.Version{v}}
	if _, err := ms.Get(ctx, k, 1); !errors.Is(err, managed.ErrFailedPrecondition) {
		t.Errorf("material of a backend-mode key: err = %v", err)
	}
}

// TestMaterialChecksRole: a version whose root key is declared for
// another role gets no material from it, while an undeclared root key
// (keys from before roots had roles) still serves.
func TestMaterialChecksRole(t *testing.T) {
	r, _ := softRoots(t)
	if err := r.Declare([]RootKey{{URI: "softkms:prf-root", Role: managed.RoleBackend}}); err != nil {
		t.Fatal(err)
	}
	ms := NewMaterials(r, 100, time.Hour, nil)
	k := &managed.Key{ID: "k", Type: managed.AES256GCM, Mode: managed.ModeDerive, Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
	if _, err := ms.Get(t.Context(), k, 1); !errors.Is(err, managed.ErrFailedPrecondition) || !strings.Contains(err.Error(), "role backend") {
		t.Errorf("Get on a root declared for backend keys = %v, want ErrFailedPrecondition naming its role", err)
	}
	wrap := &managed.Key{ID: "w", Type: managed.AES256GCM, Mode: managed.ModeWrap}
	if _, err := ms.NewVersion(t.Context(), wrap, "softkms:aes-root", 1); err != nil {
		t.Errorf("NewVersion on an undeclared root = %v, want it served", err)
	}
}
