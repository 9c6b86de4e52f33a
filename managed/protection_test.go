package managed

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/secret"
)

// rootOfTrust is a Backend that really encrypts, signs and MACs with one
// secret of its own, never the key's material, and counts its calls.
type rootOfTrust struct {
	root  *secret.Bytes
	calls map[string]int
}

func newRootOfTrust() *rootOfTrust {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	return &rootOfTrust{root: secret.New(raw), calls: map[string]int{}}
}

func (b *rootOfTrust) WrapDataKey(_ context.Context, k *Key, v uint32, dek []byte) ([]byte, error) {
	b.calls["wrap"]++
	return envelope.WrapDataKeyWithSalt(b.root, k.ID, v, k.Salt, dek)
}

func (b *rootOfTrust) UnwrapDataKey(_ context.Context, k *Key, v uint32, wrapped []byte) (*secret.Bytes, error) {
	b.calls["unwrap"]++
	dk, err := envelope.UnwrapDataKeyWithSalt(b.root, k.ID, v, k.Salt, wrapped)
	if err != nil {
		return nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	return dk.Key().Clone(), nil
}

func (b *rootOfTrust) Sign(context.Context, *Key, uint32, []byte) ([]byte, error) {
	b.calls["sign"]++
	return nil, errors.ErrUnsupported
}

func (b *rootOfTrust) MAC(_ context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error) {
	b.calls["mac"]++
	h := hmac.New(sha256.New, b.root.Reveal())
	h.Write(k.Input(DomainBackendMAC, v))
	h.Write(msg)
	return secret.New(h.Sum(nil)), nil
}

// addBackendKeys adds a backend-mode MAC and signing key to src.
func addBackendKeys(src *keys, template *Key) {
	for _, k := range []*Key{
		{ID: "hsm-mac", Type: HMACSHA256, Mode: ModeBackend},
		{ID: "hsm-ed", Type: Ed25519, Mode: ModeBackend},
	} {
		k.State, k.Primary, k.Versions = StateEnabled, 1, template.Versions
		src.m[k.ID] = k
		src.mat[k.ID] = src.mat[template.ID]
	}
}

// TestProtectionBackendKeysNeverUseMaterial: every operation on a
// backend-mode key goes to the root of trust, and none asks the material
// source, which a node must not hold for such keys; material-mode keys
// never reach the backend.
func TestProtectionBackendKeysNeverUseMaterial(t *testing.T) {
	ctx := t.Context()
	_, src := newOps(t)
	addBackendKeys(src, src.m["hsm"])
	b := newRootOfTrust()
	ops, err := New(Config{Material: src, Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	o := byID{ops, src}
	before := src.calls
	ct, _, err := o.Encrypt(ctx, "hsm", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	o.ForgetAll() // Decrypt must unwrap, not hit the cache
	if pt, _, _, err := o.Decrypt(ctx, ct, nil, "hsm"); err != nil || string(pt) != "hello" {
		t.Errorf("Decrypt(backend-mode ciphertext) = %q, %v; want hello", pt, err)
	}
	dk, err := o.GenerateDataKey(ctx, "hsm", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	o.ForgetAll()
	got, _, err := o.DecryptDataKey(ctx, "hsm", 1, dk.Wrapped, nil)
	if err != nil || !got.Equal(dk.Plaintext) {
		t.Errorf("DecryptDataKey(backend-mode) = %v; want the generated data key", err)
	}
	tag, _, err := o.GenerateMac(ctx, "hsm-mac", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := o.VerifyMac(ctx, "hsm-mac", 0, []byte("m"), tag); !ok || err != nil {
		t.Errorf("VerifyMac(backend-mode) = %v, %v; want true", ok, err)
	}
	if _, _, err := o.Sign(ctx, "hsm-ed", []byte("m"), false); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Sign(backend-mode) = %v, want the backend's error", err)
	}
	if src.calls != before {
		t.Errorf("backend-mode operations asked for material %d times, want 0", src.calls-before)
	}
	if b.calls["wrap"] == 0 || b.calls["unwrap"] == 0 || b.calls["mac"] != 2 || b.calls["sign"] != 1 {
		t.Errorf("backend calls = %v, want wraps, unwraps, 2 MACs and 1 signature", b.calls)
	}

	// A material-mode key never reaches the backend.
	calls := len(b.calls)
	n := b.calls["wrap"] + b.calls["unwrap"] + b.calls["mac"] + b.calls["sign"]
	if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.GenerateMac(ctx, "mac", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Sign(ctx, "ed", []byte("x"), false); err != nil {
		t.Fatal(err)
	}
	if len(b.calls) != calls || b.calls["wrap"]+b.calls["unwrap"]+b.calls["mac"]+b.calls["sign"] != n {
		t.Errorf("material-mode operations called the backend: %v", b.calls)
	}
}

// TestProtectionWithoutBackendRefusesEveryOperation: a node without a
// root of trust (an edge) refuses every operation of a backend-mode key
// with ErrFailedPrecondition, asks for no material, and counts no data key
// against the version for a wrap it could not make.
func TestProtectionWithoutBackendRefusesEveryOperation(t *testing.T) {
	ctx := t.Context()
	o, src := newOps(t)
	addBackendKeys(src, src.m["hsm"])
	wrapped, err := envelope.WrapDataKeyWithSalt(src.mat["hsm"], "hsm", 1, nil, make([]byte, envelope.DEKSize))
	if err != nil {
		t.Fatal(err)
	}
	before := src.calls
	for name, op := range map[string]func() error{
		"Encrypt": func() error { _, _, err := o.Encrypt(ctx, "hsm", []byte("x"), nil); return err },
		"GenerateDataKey": func() error {
			_, err := o.GenerateDataKey(ctx, "hsm", nil, true)
			return err
		},
		"DecryptDataKey": func() error {
			_, _, err := o.DecryptDataKey(ctx, "hsm", 1, wrapped, nil)
			return err
		},
		"GenerateMac": func() error { _, _, err := o.GenerateMac(ctx, "hsm-mac", []byte("x")); return err },
		"VerifyMac": func() error {
			_, _, err := o.VerifyMac(ctx, "hsm-mac", 0, []byte("x"), make([]byte, 32))
			return err
		},
		"Sign": func() error { _, _, err := o.Sign(ctx, "hsm-ed", []byte("x"), false); return err },
	} {
		if err := op(); !errors.Is(err, ErrFailedPrecondition) {
			t.Errorf("%s(backend-mode key) without a backend = %v, want ErrFailedPrecondition", name, err)
		}
	}
	if src.calls != before {
		t.Errorf("refused backend-mode operations asked for material %d times, want 0", src.calls-before)
	}
	if n := o.DataKeysWrapped(src.m["hsm"], 1); n != 0 {
		t.Errorf("DataKeysWrapped after refused wraps = %d, want 0", n)
	}
}
