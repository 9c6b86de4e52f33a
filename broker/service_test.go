package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/byid"
	"github.com/keybroker/keybroker/managed"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/secret"
)

// counting wraps a softkms backend and counts the calls that reach it.
type counting struct {
	*softkms.Backend
	calls atomic.Int64
}

func (c *counting) Encrypt(ctx context.Context, k string, p, a []byte) ([]byte, error) {
	c.calls.Add(1)
	return c.Backend.Encrypt(ctx, k, p, a)
}
func (c *counting) Decrypt(ctx context.Context, k string, ct, a []byte) (*secret.Bytes, error) {
	c.calls.Add(1)
	return c.Backend.Decrypt(ctx, k, ct, a)
}
func (c *counting) MAC(ctx context.Context, k string, d []byte) (*secret.Bytes, error) {
	c.calls.Add(1)
	return c.Backend.MAC(ctx, k, d)
}
func (c *counting) Sign(ctx context.Context, k string, d []byte) ([]byte, error) {
	c.calls.Add(1)
	return c.Backend.Sign(ctx, k, d)
}

var _ interface {
	backends.Backend
	backends.MACer
	backends.Signer
} = (*counting)(nil)

type env struct {
	svc     *Service
	backend *counting
	clock   *clock
	roots   *Roots
}

// testRootKeys declares the test backend's root keys, each in one role.
// softkms:missing-root is declared but never created.
var testRootKeys = []RootKey{
	{URI: "softkms:prf-root", Role: managed.RoleDerive},
	{URI: "softkms:aes-root", Role: managed.RoleWrap},
	{URI: "softkms:hsm-aes-root", Role: managed.RoleBackend, Types: []managed.KeyType{managed.AES256GCM}},
	{URI: "softkms:ec-root", Role: managed.RoleBackend, Types: []managed.KeyType{managed.ECDSAP256}},
	{URI: "softkms:ed-root", Role: managed.RoleBackend, Types: []managed.KeyType{managed.Ed25519}},
	{URI: "softkms:mac-root", Role: managed.RoleBackend, Types: []managed.KeyType{managed.HMACSHA256}},
	{URI: "softkms:missing-root", Role: managed.RoleDerive},
}

func newEnv(t testing.TB) *env {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	os.WriteFile(kek, []byte(strings.Repeat("22", 32)), 0o600)
	ksPath := filepath.Join(dir, "softkms.json")
	sb, err := softkms.New(t.Context(), softkms.Config{Path: ksPath, KEKFile: kek})
	if err != nil {
		t.Fatal(err)
	}
	for name, alg := range map[string]backends.Algorithm{"aes-root": backends.AES256, "prf-root": backends.HMAC256,
		"ec-root": backends.ECDSAP256, "ed-root": backends.Ed25519, "mac-root": backends.HMAC256, "hsm-aes-root": backends.AES256} {
		if _, err := sb.CreateKey(t.Context(), name, alg); err != nil {
			t.Fatal(err)
		}
	}
	cb := &counting{Backend: sb}
	roots, err := NewRoots(map[string]backends.Backend{"soft": cb}, map[string]string{"soft": "softkms:path=" + ksPath + ";kek-source=" + kek})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { roots.Close() })
	if err := roots.Declare(testRootKeys); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &clock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	svc, err := NewService(ServiceConfig{
		Registry: NewRegistry(st, c.Now), Roots: roots, Materials: NewMaterials(roots, 100, time.Hour, c.Now),
		DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root", managed.ModeWrap: "softkms:aes-root"}, Now: c.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &env{svc: svc, backend: cb, clock: c, roots: roots}
}

func (e *env) create(t testing.TB, id string, typ managed.KeyType, mode managed.Mode, root string, derived bool) *managed.Key {
	t.Helper()
	k, err := e.svc.CreateKey(t.Context(), CreateParams{ID: id, Type: typ, Mode: mode, RootKey: root, Derived: derived, Labels: map[string]string{"app": "test"}})
	if err != nil {
		t.Fatalf("CreateKey(%s %s %s): %v", id, typ, mode, err)
	}
	return k
}

func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: err = %v, want %v", what, err, kind)
	}
}

func TestEncryptDecryptEveryMode(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for _, tc := range []struct {
		mode    managed.Mode
		root    string
		derived bool
	}{
		{managed.ModeDerive, "", false}, {managed.ModeDerive, "", true}, {managed.ModeWrap, "", false}, {managed.ModeWrap, "", true}, {managed.ModeBackend, "softkms:hsm-aes-root", false},
	} {
		t.Run(fmt.Sprintf("%s derived=%v", tc.mode, tc.derived), func(t *testing.T) {
			id := fmt.Sprintf("aes-%s-%v", tc.mode, tc.derived)
			e.create(t, id, managed.AES256GCM, tc.mode, tc.root, tc.derived)
			ectx := map[string]string{"tenant": "42"}
			for _, pt := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{7}, 100_000)} {
				ct, k, err := e.byID().Encrypt(ctx, id, pt, ectx)
				if err != nil || k.Primary != 1 {
					t.Fatalf("Encrypt: %v", err)
				}
				got, _, v, err := e.byID().Decrypt(ctx, ct, ectx, "")
				if err != nil || !bytes.Equal(got, pt) || v != 1 {
					t.Fatalf("Decrypt = %d bytes v%d, %v", len(got), v, err)
				}
				_, _, _, err = e.byID().Decrypt(ctx, ct, map[string]string{"tenant": "43"}, "")
				wantErr(t, "wrong context", err, managed.ErrInvalidArgument)
				_, _, _, err = e.byID().Decrypt(ctx, ct, nil, "")
				wantErr(t, "missing context", err, managed.ErrInvalidArgument)
				bad := bytes.Clone(ct)
				bad[len(bad)-1] ^= 1
				_, _, _, err = e.byID().Decrypt(ctx, bad, ectx, "")
				wantErr(t, "tampered", err, managed.ErrInvalidArgument)
				_, _, _, err = e.byID().Decrypt(ctx, ct, ectx, "other-key")
				wantErr(t, "expected another key", err, managed.ErrInvalidArgument)
			}
		})
	}
}

func TestForeignAndMalformedCiphertexts(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "a", managed.AES256GCM, managed.ModeDerive, "", false)
	e.create(t, "b", managed.AES256GCM, managed.ModeDerive, "", false)
	ct, _, _ := e.byID().Encrypt(ctx, "a", []byte("secret"), nil)
	// Relabel a's ciphertext as b's: b's material does not open a's DEK.
	foreign := append([]byte{ct[0], ct[1]}, 'b')
	foreign = append(foreign, ct[3:]...)
	_, _, _, err := e.byID().Decrypt(ctx, foreign, nil, "")
	wantErr(t, "relabelled ciphertext", err, managed.ErrInvalidArgument)
	for _, in := range [][]byte{nil, {1}, ct[:20], append([]byte{9}, ct[1:]...)} {
		_, _, _, err := e.byID().Decrypt(ctx, in, nil, "")
		wantErr(t, fmt.Sprintf("malformed %x", in[:min(len(in), 4)]), err, managed.ErrInvalidArgument)
	}
	// Unknown key in a well-formed ciphertext.
	e.create(t, "gone", managed.AES256GCM, managed.ModeDerive, "", false)
	ct2, _, _ := e.byID().Encrypt(ctx, "gone", []byte("x"), nil)
	e.svc.SetState(ctx, "gone", ScheduleDeletion(e.clock.Now(), 0))
	e.clock.Advance(31 * 24 * time.Hour)
	if _, _, err := e.svc.Sweep(ctx, nil); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = e.byID().Decrypt(ctx, ct2, nil, "")
	wantErr(t, "deleted key", err, managed.ErrNotFound)
	_, _, err = e.byID().Encrypt(ctx, "never", []byte("x"), nil)
	wantErr(t, "unknown key", err, managed.ErrNotFound)
	_, _, err = e.byID().Encrypt(ctx, "a", make([]byte, managed.MaxPlaintext+1), nil)
	wantErr(t, "oversized", err, managed.ErrInvalidArgument)
}

func TestRotationAndLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "k", managed.AES256GCM, managed.ModeWrap, "", false)
	ct1, _, _ := e.byID().Encrypt(ctx, "k", []byte("v1 data"), nil)
	k, err := e.svc.RotateKey(ctx, "k")
	if err != nil || k.Primary != 2 {
		t.Fatalf("RotateKey = %v, %v", k, err)
	}
	ct2, k2, _ := e.byID().Encrypt(ctx, "k", []byte("v2 data"), nil)
	if k2.Primary != 2 {
		t.Errorf("encrypt after rotate used version %d", k2.Primary)
	}
	if pt, _, v, err := e.byID().Decrypt(ctx, ct1, nil, ""); err != nil || string(pt) != "v1 data" || v != 1 {
		t.Errorf("old ciphertext after rotation: %q v%d %v", pt, v, err)
	}
	two := uint32(2)
	if _, err := e.svc.UpdateKey(ctx, UpdateParams{ID: "k", MinDecryptionVersion: &two}); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = e.byID().Decrypt(ctx, ct1, nil, "")
	wantErr(t, "below minimum version", err, managed.ErrFailedPrecondition)
	if _, _, _, err := e.byID().Decrypt(ctx, ct2, nil, ""); err != nil {
		t.Errorf("v2 after raising the minimum: %v", err)
	}
	e.svc.SetState(ctx, "k", Disable)
	_, _, err = e.byID().Encrypt(ctx, "k", []byte("x"), nil)
	wantErr(t, "encrypt disabled", err, managed.ErrFailedPrecondition)
	_, _, _, err = e.byID().Decrypt(ctx, ct2, nil, "")
	wantErr(t, "decrypt disabled", err, managed.ErrFailedPrecondition)
	e.svc.SetState(ctx, "k", Enable)
	e.svc.SetState(ctx, "k", ScheduleDeletion(e.clock.Now(), 7*24*time.Hour))
	_, _, _, err = e.byID().Decrypt(ctx, ct2, nil, "")
	wantErr(t, "decrypt pending deletion", err, managed.ErrFailedPrecondition)
	e.svc.SetState(ctx, "k", CancelDeletion)
	e.svc.SetState(ctx, "k", Enable)
	if _, _, _, err := e.byID().Decrypt(ctx, ct2, nil, ""); err != nil {
		t.Errorf("decrypt after cancel and enable: %v", err)
	}
}

func TestSignVerifyEveryMode(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for _, tc := range []struct {
		typ  managed.KeyType
		mode managed.Mode
		root string
	}{
		{managed.ECDSAP256, managed.ModeDerive, ""}, {managed.ECDSAP256, managed.ModeWrap, ""}, {managed.ECDSAP256, managed.ModeBackend, "softkms:ec-root"},
		{managed.Ed25519, managed.ModeDerive, ""}, {managed.Ed25519, managed.ModeWrap, ""}, {managed.Ed25519, managed.ModeBackend, "softkms:ed-root"},
	} {
		t.Run(string(tc.typ)+" "+string(tc.mode), func(t *testing.T) {
			id := "sig-" + string(tc.typ) + "-" + string(tc.mode)
			e.create(t, id, tc.typ, tc.mode, tc.root, false)
			msg := []byte("sign me")
			sig, _, err := e.byID().Sign(ctx, id, msg, false)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			ok, v, err := e.byID().Verify(ctx, id, 0, msg, false, sig)
			if err != nil || !ok || v != 1 {
				t.Errorf("Verify = %v v%d, %v", ok, v, err)
			}
			if ok, _, _ := e.byID().Verify(ctx, id, 0, []byte("other"), false, sig); ok {
				t.Error("signature verifies for another message")
			}
			der, _, _, err := e.byID().PublicKey(ctx, id, 0)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := x509.ParsePKIXPublicKey(der)
			switch p := pub.(type) {
			case *ecdsa.PublicKey:
				d := sha256.Sum256(msg)
				if !ecdsa.VerifyASN1(p, d[:], sig) {
					t.Error("stdlib ECDSA verify fails")
				}
				dsig, _, err := e.byID().Sign(ctx, id, d[:], true)
				if err != nil || !ecdsa.VerifyASN1(p, d[:], dsig) {
					t.Errorf("Sign(digest) = %v", err)
				}
				_, _, err = e.byID().Sign(ctx, id, d[:31], true)
				wantErr(t, "short digest", err, managed.ErrInvalidArgument)
			case ed25519.PublicKey:
				if !ed25519.Verify(p, msg, sig) {
					t.Error("stdlib Ed25519 verify fails")
				}
				_, _, err = e.byID().Sign(ctx, id, msg, true)
				wantErr(t, "ed25519 digest", err, managed.ErrInvalidArgument)
			default:
				t.Fatalf("public key %T", pub)
			}
			if tc.mode != managed.ModeBackend {
				if _, err := e.svc.RotateKey(ctx, id); err != nil {
					t.Fatal(err)
				}
				// The old version still verifies the old signature.
				if ok, _, err := e.byID().Verify(ctx, id, 1, msg, false, sig); err != nil || !ok {
					t.Errorf("Verify(v1) after rotation = %v, %v", ok, err)
				}
				sig2, _, _ := e.byID().Sign(ctx, id, msg, false)
				if ok, _, _ := e.byID().Verify(ctx, id, 1, msg, false, sig2); ok {
					t.Error("v2 signature verifies under v1")
				}
			} else {
				_, err := e.svc.RotateKey(ctx, id)
				wantErr(t, "rotate backend signing key", err, managed.ErrFailedPrecondition)
			}
		})
	}
	_, _, err := e.byID().Sign(ctx, "aes-none", []byte("x"), false)
	wantErr(t, "sign unknown", err, managed.ErrNotFound)
	e.create(t, "aes-k", managed.AES256GCM, managed.ModeDerive, "", false)
	_, _, err = e.byID().Sign(ctx, "aes-k", []byte("x"), false)
	wantErr(t, "sign with aes", err, managed.ErrInvalidArgument)
}

func TestMACEveryMode(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for _, tc := range []struct {
		mode managed.Mode
		root string
	}{{managed.ModeDerive, ""}, {managed.ModeWrap, ""}, {managed.ModeBackend, "softkms:mac-root"}} {
		id := "mac-" + string(tc.mode)
		e.create(t, id, managed.HMACSHA256, tc.mode, tc.root, false)
		tag, _, err := e.byID().GenerateMac(ctx, id, []byte("msg"))
		if err != nil || len(tag) != 32 {
			t.Fatalf("%s GenerateMac = %x, %v", tc.mode, tag, err)
		}
		tag2, _, _ := e.byID().GenerateMac(ctx, id, []byte("msg"))
		if !bytes.Equal(tag, tag2) {
			t.Errorf("%s: MAC not deterministic", tc.mode)
		}
		if ok, _, err := e.byID().VerifyMac(ctx, id, 0, []byte("msg"), tag); !ok || err != nil {
			t.Errorf("%s VerifyMac = %v, %v", tc.mode, ok, err)
		}
		bad := bytes.Clone(tag)
		bad[0] ^= 1
		if ok, _, _ := e.byID().VerifyMac(ctx, id, 0, []byte("msg"), bad); ok {
			t.Errorf("%s: a flipped tag verifies", tc.mode)
		}
		_, _, err = e.byID().GenerateMac(ctx, id, nil)
		wantErr(t, "empty MAC message", err, managed.ErrInvalidArgument)
	}
	_, err := e.svc.RotateKey(ctx, "mac-backend")
	wantErr(t, "rotate a backend-mode MAC key", err, managed.ErrFailedPrecondition)
	_, _, err = e.byID().GenerateMac(ctx, "mac-backend", make([]byte, 5000))
	wantErr(t, "backend MAC over 4 KiB", err, managed.ErrInvalidArgument)
	if _, _, err := e.byID().GenerateMac(ctx, "mac-derive", make([]byte, 5000)); err != nil {
		t.Errorf("derive MAC of 5000 bytes: %v", err)
	}
}

func TestReuseAndCachesBoundBackendCalls(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "hot", managed.AES256GCM, managed.ModeDerive, "", false)
	before := e.backend.calls.Load()
	var cts [][]byte
	for i := range 1000 {
		ct, _, err := e.byID().Encrypt(ctx, "hot", fmt.Appendf(nil, "message %d", i), map[string]string{"i": fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	var wg sync.WaitGroup
	for i, ct := range cts {
		wg.Go(func() {
			if _, _, _, err := e.byID().Decrypt(ctx, ct, map[string]string{"i": fmt.Sprint(i)}, ""); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := e.backend.calls.Load() - before; got != 1 {
		t.Errorf("1000 encrypts and 1000 concurrent decrypts made %d backend calls, want 1 (one material derivation)", got)
	}
	// A backend-mode key costs one backend call per data key, not per message.
	e.create(t, "hsm-only", managed.AES256GCM, managed.ModeBackend, "softkms:hsm-aes-root", false)
	before = e.backend.calls.Load()
	for i := range 500 {
		if _, _, err := e.byID().Encrypt(ctx, "hsm-only", fmt.Appendf(nil, "m%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.backend.calls.Load() - before; got != 1 {
		t.Errorf("500 backend-mode encrypts made %d backend calls, want 1 (one wrapped data key)", got)
	}
	// The broker's own count (keybroker_backend_calls_total) sees every
	// call the wrapper saw: Encrypt, Decrypt, MAC and Sign, plus the
	// Describe with which CreateKey checks a backend-mode root key.
	calls := e.svc.Roots().Calls()
	var wrapperOps uint64
	for k, n := range calls {
		if k.Backend != "soft" {
			t.Errorf("calls counted for backend %q", k.Backend)
		}
		if k.Op != "describe" && k.Op != "random" && k.Op != "public-key" {
			wrapperOps += n
		}
	}
	if got := e.backend.calls.Load(); int64(wrapperOps) != got {
		t.Errorf("Roots.Calls counted %d calls (%v); the backend saw %d", wrapperOps, calls, got)
	}
	if calls[CallKey{"soft", "describe"}] != 1 || calls[CallKey{"soft", "wrap-data-key"}] != 1 || calls[CallKey{"soft", "derive"}] == 0 {
		t.Errorf("Roots.Calls = %v, want one describe, one wrap-data-key and the derivations", calls)
	}
}

// TestGenerateDataKey checks both forms of a generated data key in every
// mode: the encrypted form opens with Decrypt, and a message sealed locally
// under the wrapped form (as the SDK does) opens with Decrypt, while
// DecryptDataKey gives the data key back only under the right context.
func TestGenerateDataKey(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	ectx := map[string]string{"bucket": "photos"}
	for i, tc := range []struct {
		mode    managed.Mode
		root    string
		derived bool
	}{{managed.ModeDerive, "", false}, {managed.ModeDerive, "", true}, {managed.ModeWrap, "", true}, {managed.ModeBackend, "softkms:hsm-aes-root", false}} {
		id := fmt.Sprintf("dk-%d", i)
		t.Run(fmt.Sprintf("%s derived=%v", tc.mode, tc.derived), func(t *testing.T) {
			e.create(t, id, managed.AES256GCM, tc.mode, tc.root, tc.derived)
			dk, err := e.byID().GenerateDataKey(ctx, id, ectx, true)
			if err != nil || dk.Plaintext.Len() != 32 || len(dk.Wrapped) < envelope.WrappedDEKLen {
				t.Fatalf("GenerateDataKey = %+v, %v", dk, err)
			}
			got, _, _, err := e.byID().Decrypt(ctx, dk.Encrypted, ectx, id)
			if err != nil || !bytes.Equal(got, dk.Plaintext.Reveal()) {
				t.Errorf("Decrypt(encrypted data key) = %v", err)
			}
			local, err := envelope.NewDataKey(id, dk.Key.Primary, dk.Plaintext.Clone(), dk.Wrapped)
			if err != nil {
				t.Fatal(err)
			}
			ct, err := local.Seal([]byte("sealed by a client"), ectx)
			if err != nil {
				t.Fatal(err)
			}
			if pt, _, _, err := e.byID().Decrypt(ctx, ct, ectx, ""); err != nil || string(pt) != "sealed by a client" {
				t.Errorf("Decrypt(client-sealed) = %q, %v", pt, err)
			}
			back, _, err := e.byID().DecryptDataKey(ctx, id, dk.Key.Primary, dk.Wrapped, ectx)
			if err != nil || !back.Equal(dk.Plaintext) {
				t.Errorf("DecryptDataKey = %v, want the generated data key", err)
			}
			if tc.derived {
				_, _, err := e.byID().DecryptDataKey(ctx, id, dk.Key.Primary, dk.Wrapped, map[string]string{"bucket": "other"})
				wantErr(t, "DecryptDataKey with another context", err, managed.ErrInvalidArgument)
			}
			_, _, err = e.byID().DecryptDataKey(ctx, id, 9, dk.Wrapped, ectx)
			wantErr(t, "DecryptDataKey of a version that does not exist", err, managed.ErrNotFound)
			_, _, err = e.byID().DecryptDataKey(ctx, id, dk.Key.Primary, dk.Wrapped[:10], ectx)
			wantErr(t, "DecryptDataKey of a short wrapped key", err, managed.ErrInvalidArgument)
			without, err := e.byID().GenerateDataKey(ctx, id, ectx, false)
			if err != nil || without.Wrapped != nil {
				t.Errorf("GenerateDataKey(wrapped=false) = %v, wrapped %x", err, without.Wrapped)
			}
		})
	}
}

func TestCreateKeyErrors(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "dup", managed.AES256GCM, managed.ModeDerive, "", false)
	for _, tc := range []struct {
		name string
		p    CreateParams
		want error
	}{
		{"duplicate", CreateParams{ID: "dup", Type: managed.AES256GCM, Mode: managed.ModeDerive}, managed.ErrAlreadyExists},
		{"bad id", CreateParams{ID: "bad id", Type: managed.AES256GCM, Mode: managed.ModeDerive}, managed.ErrInvalidArgument},
		{"no default root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeBackend}, managed.ErrInvalidArgument},
		{"unconfigured root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "pkcs11:token=t;object=o"}, managed.ErrInvalidArgument},
		{"backend ecdsa on aes root", CreateParams{ID: "x", Type: managed.ECDSAP256, Mode: managed.ModeBackend, RootKey: "softkms:hsm-aes-root"}, managed.ErrInvalidArgument},
		{"derive on wrap root", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:aes-root"}, managed.ErrInvalidArgument},
		{"undeclared root key", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:nope"}, managed.ErrInvalidArgument},
		{"missing root key", CreateParams{ID: "x", Type: managed.AES256GCM, Mode: managed.ModeDerive, RootKey: "softkms:missing-root"}, backends.ErrNotFound},
	} {
		_, err := e.svc.CreateKey(ctx, tc.p)
		wantErr(t, tc.name, err, tc.want)
	}
	if _, err := e.svc.Registry().Get(ctx, "x"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("a failed CreateKey left a key behind: %v", err)
	}
}

func TestListKeysAndSweep(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	for i := range 25 {
		k, err := e.svc.CreateKey(ctx, CreateParams{ID: fmt.Sprintf("k%02d", i), Type: managed.AES256GCM, Mode: managed.ModeDerive,
			Labels: map[string]string{"team": []string{"a", "b"}[i%2]}, RotationPeriod: 48 * time.Hour})
		if err != nil || k.NextRotation.IsZero() {
			t.Fatal(err)
		}
	}
	var all []string
	token := ""
	for {
		page, next, err := e.svc.ListKeys(ctx, map[string]string{"team": "a"}, 5, token, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page {
			all = append(all, k.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(all) != 13 || all[0] != "k00" || all[12] != "k24" {
		t.Errorf("paged list of team a = %v", all)
	}
	e.clock.Advance(49 * time.Hour)
	rotated, _, err := e.svc.Sweep(ctx, nil)
	if err != nil || len(rotated) != 25 {
		t.Errorf("Sweep rotated %d keys, %v; want 25", len(rotated), err)
	}
	k, _ := e.svc.Registry().Get(ctx, "k00")
	if k.Primary != 2 {
		t.Errorf("primary after scheduled rotation = %d", k.Primary)
	}
}

func TestGenerateRandom(t *testing.T) {
	e := newEnv(t)
	b, err := e.svc.GenerateRandom(t.Context(), 32)
	if err != nil || len(b) != 32 {
		t.Errorf("GenerateRandom = %d bytes, %v", len(b), err)
	}
	_, err = e.svc.GenerateRandom(t.Context(), 0)
	wantErr(t, "zero length", err, managed.ErrInvalidArgument)
}

func TestPlacement(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	k, err := e.svc.CreateKey(ctx, CreateParams{ID: "eu-only", Type: managed.AES256GCM, Mode: managed.ModeDerive, Placement: `principal.region == "eu"`})
	if err != nil || k.Placement != `principal.region == "eu"` {
		t.Fatalf("CreateKey with placement = %+v, %v", k, err)
	}
	_, err = e.svc.CreateKey(ctx, CreateParams{ID: "bad", Type: managed.AES256GCM, Mode: managed.ModeDerive, Placement: `principal.regoin == "eu"`})
	wantErr(t, "misspelt placement", err, managed.ErrInvalidArgument)
	_, err = e.svc.CreateKey(ctx, CreateParams{ID: "evil", Type: managed.AES256GCM, Mode: managed.ModeDerive, Placement: `true }; permit (principal, action, resource) when { true`})
	wantErr(t, "placement that injects a policy", err, managed.ErrInvalidArgument)
	bad := `principal.nope`
	_, err = e.svc.UpdateKey(ctx, UpdateParams{ID: "eu-only", Placement: &bad})
	wantErr(t, "update to a bad placement", err, managed.ErrInvalidArgument)
	none := ""
	k, err = e.svc.UpdateKey(ctx, UpdateParams{ID: "eu-only", Placement: &none})
	if err != nil || k.Placement != "" {
		t.Errorf("removing the placement = %+v, %v", k, err)
	}
}

// TestSweepAuditsFirst: the sweep audits each deletion and rotation before
// it happens; when the audit line cannot be written the key is left as it
// is for the next sweep.
func TestSweepAuditsFirst(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "doomed", managed.AES256GCM, managed.ModeDerive, "", false)
	if _, err := e.svc.SetState(ctx, "doomed", ScheduleDeletion(e.clock.Now(), 0)); err != nil {
		t.Fatal(err)
	}
	p := 24 * time.Hour
	e.create(t, "turning", managed.AES256GCM, managed.ModeDerive, "", false)
	if _, err := e.svc.UpdateKey(ctx, UpdateParams{ID: "turning", RotationPeriod: &p}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(31 * 24 * time.Hour)

	auditDown := errors.New("audit log unavailable")
	var calls []string
	rotated, deleted, err := e.svc.Sweep(ctx, func(op, key string, err error) error {
		calls = append(calls, op+" "+key)
		return auditDown
	})
	if !errors.Is(err, auditDown) || len(rotated) != 0 || len(deleted) != 0 {
		t.Errorf("Sweep with the audit down = %v, %v, %v; want nothing done and the audit error", rotated, deleted, err)
	}
	if k, err := e.svc.Registry().Get(ctx, "doomed"); err != nil || k.State != managed.StatePendingDeletion {
		t.Fatalf("after an unaudited sweep the key is %v, %v; want it still pending deletion", k, err)
	}
	if k, _ := e.svc.Registry().Get(ctx, "turning"); k.Primary != 1 {
		t.Errorf("after an unaudited sweep the key is at version %d, want 1", k.Primary)
	}
	if len(calls) == 0 {
		t.Error("the recorder was never asked")
	}

	// With the audit back, the next sweep does the work, each step
	// recorded while the key is still as it was.
	calls = nil
	rotated, deleted, err = e.svc.Sweep(ctx, func(op, key string, err error) error {
		k, gerr := e.svc.Registry().Get(ctx, key)
		switch {
		case err != nil:
			t.Errorf("%s %s recorded as failed: %v", op, key, err)
		case gerr != nil:
			t.Errorf("%s %s audited after the key was gone", op, key)
		case op == "RotateKey" && k.Primary != 1:
			t.Errorf("RotateKey %s audited after the rotation", key)
		}
		calls = append(calls, op+" "+key)
		return nil
	})
	if err != nil || !slices.Equal(rotated, []string{"turning"}) || !slices.Equal(deleted, []string{"doomed"}) {
		t.Errorf("Sweep = %v, %v, %v; want turning rotated and doomed deleted", rotated, deleted, err)
	}
	if want := []string{"DeleteKey doomed", "RotateKey turning"}; !slices.Equal(calls, want) {
		t.Errorf("recorded %v, want %v", calls, want)
	}
	if _, err := e.svc.Registry().Get(ctx, "doomed"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("doomed after the audited sweep: %v, want not found", err)
	}
}

// byID drives the service by key id, as package pipeline would without
// the policy and the audit.
func (e *env) byID() byid.Ops { return byid.Ops{P: e.svc} }
