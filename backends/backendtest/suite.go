package backendtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/backends"
)

func run(t *testing.T, open func(t *testing.T) *Fixture) {
	f := open(t)
	if f == nil || f.Backend == nil {
		t.Fatal("open returned no backend")
	}
	t.Cleanup(func() { _ = f.Backend.Close() })

	t.Run("Capabilities", func(t *testing.T) { testCapabilities(t, f) })
	t.Run("EncryptDecrypt", func(t *testing.T) { testEncryptDecrypt(t, f) })
	t.Run("DecryptFailures", func(t *testing.T) { testDecryptFailures(t, f) })
	t.Run("UnknownKey", func(t *testing.T) { testUnknownKey(t, f) })
	t.Run("DisabledKey", func(t *testing.T) { testDisabledKey(t, f) })
	t.Run("WrongKeyType", func(t *testing.T) { testWrongKeyType(t, f) })
	t.Run("InvalidArguments", func(t *testing.T) { testInvalidArguments(t, f) })
	t.Run("Describe", func(t *testing.T) { testDescribe(t, f) })
	t.Run("Random", func(t *testing.T) { testRandom(t, f) })
	t.Run("MAC", func(t *testing.T) { testMAC(t, f) })
	t.Run("Sign", func(t *testing.T) { testSign(t, f) })
	t.Run("DataKey", func(t *testing.T) { testDataKey(t, f) })
	t.Run("CreateKey", func(t *testing.T) { testCreateKey(t, f) })
	t.Run("Health", func(t *testing.T) { testHealth(t, f) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, f) })
	t.Run("CanceledContext", func(t *testing.T) { testCanceled(t, f) })
	t.Run("Close", func(t *testing.T) { testClose(t, open) })
}

// wantKind fails unless err is a *backends.Error classified as kind.
func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: err = nil, want %v", what, kind)
		return
	}
	var be *backends.Error
	if !errors.As(err, &be) {
		t.Errorf("%s: err = %v (%T), want a *backends.Error", what, err, err)
	}
	if !errors.Is(err, kind) {
		t.Errorf("%s: err = %v (code %s), want %v", what, err, backends.CodeOf(err), kind)
	}
}

func testCapabilities(t *testing.T, f *Fixture) {
	got := backends.CapabilitiesOf(f.Backend)
	want := f.Caps
	slices.Sort(got.Creates)
	slices.Sort(want.Creates)
	if got.MAC != want.MAC || got.Sign != want.Sign || got.Create != want.Create ||
		got.Health != want.Health || got.DataKey != want.DataKey || !slices.Equal(got.Creates, want.Creates) {
		t.Errorf("CapabilitiesOf = %+v, want %+v", got, want)
	}
	// The fixture must exercise what the backend claims.
	if got.MAC && (f.HMAC == "" || f.HMAC2 == "") {
		t.Error("backend is a MACer but the fixture names no HMAC keys")
	}
	if got.Sign && f.ECDSA == "" && f.Ed25519 == "" {
		t.Error("backend is a Signer but the fixture names no signing key")
	}
	if got.Create && f.NewName == nil {
		t.Error("backend is a KeyCreator but the fixture has no NewName")
	}
	if f.AES == "" || f.AES2 == "" || f.Unknown == "" {
		t.Error("fixture must name AES, AES2 and Unknown keys")
	}
}

func testEncryptDecrypt(t *testing.T, f *Fixture) {
	ctx := t.Context()
	for _, tc := range []struct {
		name      string
		plaintext []byte
		aad       []byte
	}{
		{"32 bytes no aad", bytes.Repeat([]byte{7}, 32), nil},
		{"32 bytes with aad", bytes.Repeat([]byte{9}, 32), []byte("keybroker/v1 key=payments version=3")},
		{"max plaintext", bytes.Repeat([]byte{0xa5}, backends.MaxEncryptInput), []byte{0, 1, 2}},
		{"binary aad", []byte("hello"), []byte{0, 0xff, 0, 0xfe}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct, err := f.Backend.Encrypt(ctx, f.AES, tc.plaintext, tc.aad)
			if err != nil {
				t.Fatalf("Encrypt(%q) error: %v", f.AES, err)
			}
			if len(tc.plaintext) >= 8 && bytes.Contains(ct, tc.plaintext) {
				t.Errorf("ciphertext contains the plaintext")
			}
			pt, err := f.Backend.Decrypt(ctx, f.AES, ct, tc.aad)
			if err != nil {
				t.Fatalf("Decrypt(%q) error: %v", f.AES, err)
			}
			if !bytes.Equal(pt.Reveal(), tc.plaintext) {
				t.Errorf("Decrypt(Encrypt(p)) = %d bytes, want %d bytes equal to p", pt.Len(), len(tc.plaintext))
			}
			ct2, err := f.Backend.Encrypt(ctx, f.AES, tc.plaintext, tc.aad)
			if err != nil {
				t.Fatalf("second Encrypt error: %v", err)
			}
			if bytes.Equal(ct, ct2) {
				t.Errorf("two encryptions of the same plaintext are identical: nonces are reused")
			}
		})
	}
}

func testDecryptFailures(t *testing.T, f *Fixture) {
	ctx := t.Context()
	pt := bytes.Repeat([]byte{1}, 32)
	aad := []byte("context-a")
	ct, err := f.Backend.Encrypt(ctx, f.AES, pt, aad)
	if err != nil {
		t.Fatalf("Encrypt error: %v", err)
	}
	_, err = f.Backend.Decrypt(ctx, f.AES, ct, []byte("context-b"))
	wantKind(t, "Decrypt with the wrong aad", err, backends.ErrDecryptionFailed)
	_, err = f.Backend.Decrypt(ctx, f.AES, ct, nil)
	wantKind(t, "Decrypt with the aad missing", err, backends.ErrDecryptionFailed)
	_, err = f.Backend.Decrypt(ctx, f.AES2, ct, aad)
	wantKind(t, "Decrypt under another key", err, backends.ErrDecryptionFailed)

	for _, pos := range []int{0, len(ct) / 2, len(ct) - 1} {
		bad := bytes.Clone(ct)
		bad[pos] ^= 0x01
		_, err = f.Backend.Decrypt(ctx, f.AES, bad, aad)
		if !errors.Is(err, backends.ErrDecryptionFailed) && !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("Decrypt with byte %d flipped: err = %v, want decryption failure or invalid argument", pos, err)
		}
	}
	for _, n := range []int{1, 11, len(ct) - 1} {
		_, err = f.Backend.Decrypt(ctx, f.AES, ct[:n], aad)
		if !errors.Is(err, backends.ErrDecryptionFailed) && !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("Decrypt of ciphertext truncated to %d bytes: err = %v, want decryption failure or invalid argument", n, err)
		}
	}
	garbage := bytes.Repeat([]byte{0x42}, 64)
	_, err = f.Backend.Decrypt(ctx, f.AES, garbage, aad)
	if !errors.Is(err, backends.ErrDecryptionFailed) && !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("Decrypt of garbage: err = %v, want decryption failure or invalid argument", err)
	}
}

func testUnknownKey(t *testing.T, f *Fixture) {
	ctx := t.Context()
	_, err := f.Backend.Encrypt(ctx, f.Unknown, []byte("x"), nil)
	wantKind(t, "Encrypt with an unknown key", err, backends.ErrNotFound)
	ct, err := f.Backend.Encrypt(ctx, f.AES, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Backend.Decrypt(ctx, f.Unknown, ct, nil)
	wantKind(t, "Decrypt with an unknown key", err, backends.ErrNotFound)
	_, err = f.Backend.Describe(ctx, f.Unknown)
	wantKind(t, "Describe of an unknown key", err, backends.ErrNotFound)
	if m, ok := f.Backend.(backends.MACer); ok {
		_, err = m.MAC(ctx, f.Unknown, []byte("x"))
		wantKind(t, "MAC with an unknown key", err, backends.ErrNotFound)
	}
	if s, ok := f.Backend.(backends.Signer); ok {
		_, err = s.Sign(ctx, f.Unknown, make([]byte, 32))
		wantKind(t, "Sign with an unknown key", err, backends.ErrNotFound)
		_, err = s.PublicKey(ctx, f.Unknown)
		wantKind(t, "PublicKey of an unknown key", err, backends.ErrNotFound)
	}
	var be *backends.Error
	if errors.As(err, &be) && be.Key == "" {
		t.Errorf("error %v does not name its key", err)
	}
}

func testDisabledKey(t *testing.T, f *Fixture) {
	if f.Disabled == "" {
		t.Skip("backend has no disabled keys")
	}
	ctx := t.Context()
	_, err := f.Backend.Encrypt(ctx, f.Disabled, []byte("x"), nil)
	wantKind(t, "Encrypt with a disabled key", err, backends.ErrDisabled)
	info, err := f.Backend.Describe(ctx, f.Disabled)
	if err != nil {
		t.Fatalf("Describe(disabled) error: %v", err)
	}
	if info.Enabled {
		t.Errorf("Describe(disabled).Enabled = true, want false")
	}
}

func testWrongKeyType(t *testing.T, f *Fixture) {
	ctx := t.Context()
	if f.HMAC != "" {
		_, err := f.Backend.Encrypt(ctx, f.HMAC, []byte("x"), nil)
		wantKind(t, "Encrypt with an HMAC key", err, backends.ErrInvalidArgument)
	}
	if m, ok := f.Backend.(backends.MACer); ok {
		_, err := m.MAC(ctx, f.AES, []byte("x"))
		wantKind(t, "MAC with an AES key", err, backends.ErrInvalidArgument)
	}
	if s, ok := f.Backend.(backends.Signer); ok {
		_, err := s.Sign(ctx, f.AES, make([]byte, 32))
		wantKind(t, "Sign with an AES key", err, backends.ErrInvalidArgument)
	}
}

func testInvalidArguments(t *testing.T, f *Fixture) {
	ctx := t.Context()
	_, err := f.Backend.Encrypt(ctx, f.AES, make([]byte, backends.MaxEncryptInput+1), nil)
	wantKind(t, "Encrypt of an oversized plaintext", err, backends.ErrInvalidArgument)
	_, err = f.Backend.Encrypt(ctx, f.AES, nil, []byte("aad"))
	wantKind(t, "Encrypt of an empty plaintext", err, backends.ErrInvalidArgument)
	_, err = f.Backend.Encrypt(ctx, f.AES, []byte("x"), make([]byte, backends.MaxAAD+1))
	wantKind(t, "Encrypt with oversized aad", err, backends.ErrInvalidArgument)
	_, err = f.Backend.Encrypt(ctx, "", []byte("x"), nil)
	wantKind(t, "Encrypt with an empty key name", err, backends.ErrInvalidArgument)
	_, err = f.Backend.Decrypt(ctx, f.AES, nil, nil)
	wantKind(t, "Decrypt of an empty ciphertext", err, backends.ErrInvalidArgument)
	_, err = f.Backend.Decrypt(ctx, f.AES, make([]byte, backends.MaxCiphertext+1), nil)
	wantKind(t, "Decrypt of an oversized ciphertext", err, backends.ErrInvalidArgument)
	if s, ok := f.Backend.(backends.Signer); ok && f.ECDSA != "" {
		_, err = s.Sign(ctx, f.ECDSA, make([]byte, 31))
		wantKind(t, "ECDSA Sign of a 31-byte digest", err, backends.ErrInvalidArgument)
	}
}

func testDescribe(t *testing.T, f *Fixture) {
	ctx := t.Context()
	for _, tc := range []struct {
		key string
		alg backends.Algorithm
	}{
		{f.AES, backends.AES256}, {f.AES2, backends.AES256},
		{f.HMAC, backends.HMAC256}, {f.ECDSA, backends.ECDSAP256}, {f.Ed25519, backends.Ed25519},
	} {
		if tc.key == "" {
			continue
		}
		info, err := f.Backend.Describe(ctx, tc.key)
		if err != nil {
			t.Errorf("Describe(%q) error: %v", tc.key, err)
			continue
		}
		if info.Algorithm != tc.alg || !info.Enabled || info.Key == "" {
			t.Errorf("Describe(%q) = %+v, want algorithm %s, enabled, named", tc.key, info, tc.alg)
		}
	}
}

func testRandom(t *testing.T, f *Fixture) {
	ctx := t.Context()
	for _, n := range []int{1, 12, 32, backends.MaxRandom} {
		b, err := f.Backend.GenerateRandom(ctx, n)
		if err != nil {
			t.Errorf("GenerateRandom(%d) error: %v", n, err)
			continue
		}
		if len(b) != n {
			t.Errorf("GenerateRandom(%d) returned %d bytes", n, len(b))
		}
	}
	a, err1 := f.Backend.GenerateRandom(ctx, 32)
	b, err2 := f.Backend.GenerateRandom(ctx, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("GenerateRandom errors: %v, %v", err1, err2)
	}
	if bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 32)) {
		t.Errorf("GenerateRandom(32) twice = %x, %x: not random", a, b)
	}
	for _, n := range []int{0, -1, backends.MaxRandom + 1} {
		_, err := f.Backend.GenerateRandom(ctx, n)
		wantKind(t, fmt.Sprintf("GenerateRandom(%d)", n), err, backends.ErrInvalidArgument)
	}
}

func testMAC(t *testing.T, f *Fixture) {
	m, ok := f.Backend.(backends.MACer)
	if !ok {
		t.Skip("backend is not a MACer")
	}
	ctx := t.Context()
	data := []byte("keybroker/v1/material\x00payments\x00\x00\x00\x01")
	t1, err := m.MAC(ctx, f.HMAC, data)
	if err != nil {
		t.Fatalf("MAC error: %v", err)
	}
	if t1.Len() != 32 {
		t.Fatalf("MAC length = %d, want 32", t1.Len())
	}
	t2, err := m.MAC(ctx, f.HMAC, data)
	if err != nil {
		t.Fatal(err)
	}
	if !t1.Equal(t2) {
		t.Error("MAC is not deterministic: the same key and data gave two tags")
	}
	t3, err := m.MAC(ctx, f.HMAC2, data)
	if err != nil {
		t.Fatal(err)
	}
	if t1.Equal(t3) {
		t.Error("two HMAC keys gave the same tag: no key separation")
	}
	t4, err := m.MAC(ctx, f.HMAC, append(bytes.Clone(data), 0))
	if err != nil {
		t.Fatal(err)
	}
	if t1.Equal(t4) {
		t.Error("different data gave the same tag")
	}
	_, err = m.MAC(ctx, f.HMAC, nil)
	wantKind(t, "MAC of empty data", err, backends.ErrInvalidArgument)
	if _, err := m.MAC(ctx, f.HMAC, make([]byte, backends.MaxMACInput)); err != nil {
		t.Errorf("MAC of MaxMACInput bytes: %v", err)
	}
	if err := m.VerifyMAC(ctx, f.HMAC, data, t1.Reveal()); err != nil {
		t.Errorf("VerifyMAC of a good tag: %v", err)
	}
	bad := bytes.Clone(t1.Reveal())
	bad[0] ^= 1
	wantKind(t, "VerifyMAC of a flipped tag", m.VerifyMAC(ctx, f.HMAC, data, bad), backends.ErrDecryptionFailed)
	wantKind(t, "VerifyMAC under the other key", m.VerifyMAC(ctx, f.HMAC2, data, t1.Reveal()), backends.ErrDecryptionFailed)
	_, err = m.MAC(ctx, f.HMAC, make([]byte, backends.MaxMACInput+1))
	wantKind(t, "MAC of oversized data", err, backends.ErrInvalidArgument)
}

func testSign(t *testing.T, f *Fixture) {
	s, ok := f.Backend.(backends.Signer)
	if !ok {
		t.Skip("backend is not a Signer")
	}
	ctx := t.Context()
	msg := []byte("keybroker conformance message")
	if f.ECDSA != "" {
		digest := sha256.Sum256(msg)
		sig, err := s.Sign(ctx, f.ECDSA, digest[:])
		if err != nil {
			t.Fatalf("Sign(%q) error: %v", f.ECDSA, err)
		}
		pub, err := s.PublicKey(ctx, f.ECDSA)
		if err != nil {
			t.Fatalf("PublicKey(%q) error: %v", f.ECDSA, err)
		}
		ep, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			t.Fatalf("PublicKey(%q) is %T, want *ecdsa.PublicKey", f.ECDSA, pub)
		}
		if ep.Curve.Params().Name != "P-256" {
			t.Errorf("curve = %s, want P-256", ep.Curve.Params().Name)
		}
		if !ecdsa.VerifyASN1(ep, digest[:], sig) {
			t.Errorf("ecdsa.VerifyASN1 rejects the backend's signature %x", sig)
		}
		other := sha256.Sum256([]byte("another message"))
		if ecdsa.VerifyASN1(ep, other[:], sig) {
			t.Error("signature verifies for another digest")
		}
	}
	if f.Ed25519 != "" {
		sig, err := s.Sign(ctx, f.Ed25519, msg)
		if err != nil {
			t.Fatalf("Sign(%q) error: %v", f.Ed25519, err)
		}
		pub, err := s.PublicKey(ctx, f.Ed25519)
		if err != nil {
			t.Fatalf("PublicKey(%q) error: %v", f.Ed25519, err)
		}
		ep, ok := pub.(ed25519.PublicKey)
		if !ok {
			t.Fatalf("PublicKey(%q) is %T, want ed25519.PublicKey", f.Ed25519, pub)
		}
		if !ed25519.Verify(ep, msg, sig) {
			t.Error("ed25519.Verify rejects the backend's signature")
		}
	}
}

func testDataKey(t *testing.T, f *Fixture) {
	g, ok := f.Backend.(backends.DataKeyGenerator)
	if !ok {
		t.Skip("backend is not a DataKeyGenerator")
	}
	ctx := t.Context()
	aad := []byte("dk-aad")
	dek, wrapped, err := g.GenerateDataKey(ctx, f.AES, aad)
	if err != nil {
		t.Fatalf("GenerateDataKey error: %v", err)
	}
	if dek.Len() != 32 {
		t.Fatalf("data key is %d bytes, want 32", dek.Len())
	}
	got, err := f.Backend.Decrypt(ctx, f.AES, wrapped, aad)
	if err != nil {
		t.Fatalf("Decrypt(wrapped data key) error: %v", err)
	}
	if !got.Equal(dek) {
		t.Error("unwrapped data key differs from the one returned")
	}
	_, err = f.Backend.Decrypt(ctx, f.AES, wrapped, nil)
	wantKind(t, "Decrypt(wrapped data key) without aad", err, backends.ErrDecryptionFailed)
	dek2, _, err := g.GenerateDataKey(ctx, f.AES, aad)
	if err != nil {
		t.Fatal(err)
	}
	if dek.Equal(dek2) {
		t.Error("two data keys are equal")
	}
	_, _, err = g.GenerateDataKey(ctx, f.Unknown, aad)
	wantKind(t, "GenerateDataKey with an unknown key", err, backends.ErrNotFound)
}

func testCreateKey(t *testing.T, f *Fixture) {
	c, ok := f.Backend.(backends.KeyCreator)
	if !ok {
		t.Skip("backend is not a KeyCreator")
	}
	ctx := t.Context()
	for _, alg := range f.Caps.Creates {
		t.Run(string(alg), func(t *testing.T) {
			name := f.NewName()
			info, err := c.CreateKey(ctx, name, alg)
			if err != nil {
				t.Fatalf("CreateKey(%q, %s) error: %v", name, alg, err)
			}
			if info.Algorithm != alg || !info.Enabled || info.Key == "" {
				t.Errorf("CreateKey(%q, %s) = %+v", name, alg, info)
			}
			d, err := f.Backend.Describe(ctx, info.Key)
			if err != nil || d.Algorithm != alg {
				t.Errorf("Describe(new key %q) = %+v, %v; want algorithm %s", info.Key, d, err, alg)
			}
			useKey(t, f.Backend, info.Key, alg)
			_, err = c.CreateKey(ctx, name, alg)
			wantKind(t, "CreateKey of an existing name", err, backends.ErrInvalidArgument)
		})
	}
	_, err := c.CreateKey(ctx, f.NewName(), backends.Algorithm("rsa-1024"))
	if !errors.Is(err, backends.ErrInvalidArgument) && !errors.Is(err, backends.ErrUnsupported) {
		t.Errorf("CreateKey(rsa-1024) err = %v, want invalid argument or unsupported", err)
	}
}

// useKey proves a freshly created key works for its algorithm.
func useKey(t *testing.T, b backends.Backend, key string, alg backends.Algorithm) {
	t.Helper()
	ctx := t.Context()
	switch alg {
	case backends.AES256:
		ct, err := b.Encrypt(ctx, key, []byte("fresh"), nil)
		if err != nil {
			t.Fatalf("Encrypt with new key: %v", err)
		}
		if pt, err := b.Decrypt(ctx, key, ct, nil); err != nil || string(pt.Reveal()) != "fresh" {
			t.Errorf("Decrypt with new key = %v, %v", pt, err)
		}
	case backends.HMAC256:
		m := b.(backends.MACer)
		tag, err := m.MAC(ctx, key, []byte("fresh"))
		if err != nil {
			t.Fatalf("MAC with new key: %v", err)
		}
		if err := m.VerifyMAC(ctx, key, []byte("fresh"), tag.Reveal()); err != nil {
			t.Errorf("VerifyMAC with new key: %v", err)
		}
	case backends.ECDSAP256:
		s := b.(backends.Signer)
		d := sha256.Sum256([]byte("fresh"))
		sig, err := s.Sign(ctx, key, d[:])
		if err != nil {
			t.Fatalf("Sign with new key: %v", err)
		}
		pub, err := s.PublicKey(ctx, key)
		if err != nil {
			t.Fatalf("PublicKey of new key: %v", err)
		}
		if ep, ok := pub.(*ecdsa.PublicKey); !ok || !ecdsa.VerifyASN1(ep, d[:], sig) {
			t.Error("new ECDSA key's signature does not verify")
		}
	case backends.Ed25519:
		s := b.(backends.Signer)
		sig, err := s.Sign(ctx, key, []byte("fresh"))
		if err != nil {
			t.Fatalf("Sign with new key: %v", err)
		}
		pub, err := s.PublicKey(ctx, key)
		if err != nil {
			t.Fatalf("PublicKey of new key: %v", err)
		}
		if ep, ok := pub.(ed25519.PublicKey); !ok || !ed25519.Verify(ep, []byte("fresh"), sig) {
			t.Error("new Ed25519 key's signature does not verify")
		}
	}
}

func testHealth(t *testing.T, f *Fixture) {
	h, ok := f.Backend.(backends.HealthChecker)
	if !ok {
		t.Skip("backend is not a HealthChecker")
	}
	if err := h.Health(t.Context()); err != nil {
		t.Errorf("Health() = %v, want nil", err)
	}
}

func testConcurrent(t *testing.T, f *Fixture) {
	const workers, rounds = 64, 8
	ctx := t.Context()
	m, _ := f.Backend.(backends.MACer)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				pt := fmt.Appendf(nil, "worker %d round %d", w, r)
				aad := fmt.Appendf(nil, "aad %d", w)
				ct, err := f.Backend.Encrypt(ctx, f.AES, pt, aad)
				if err != nil {
					errs <- fmt.Errorf("worker %d Encrypt: %w", w, err)
					return
				}
				got, err := f.Backend.Decrypt(ctx, f.AES, ct, aad)
				if err != nil {
					errs <- fmt.Errorf("worker %d Decrypt: %w", w, err)
					return
				}
				if !bytes.Equal(got.Reveal(), pt) {
					errs <- fmt.Errorf("worker %d: round trip mismatch", w)
					return
				}
				if m != nil && f.HMAC != "" {
					if _, err := m.MAC(ctx, f.HMAC, pt); err != nil {
						errs <- fmt.Errorf("worker %d MAC: %w", w, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testCanceled(t *testing.T, f *Fixture) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want context.Canceled", what, err)
		}
	}
	_, err := f.Backend.Encrypt(ctx, f.AES, []byte("x"), nil)
	check("Encrypt", err)
	_, err = f.Backend.Decrypt(ctx, f.AES, bytes.Repeat([]byte{1}, 64), nil)
	check("Decrypt", err)
	_, err = f.Backend.GenerateRandom(ctx, 16)
	check("GenerateRandom", err)
	_, err = f.Backend.Describe(ctx, f.AES)
	check("Describe", err)
	if m, ok := f.Backend.(backends.MACer); ok {
		_, err = m.MAC(ctx, f.HMAC, []byte("x"))
		check("MAC", err)
	}
	if s, ok := f.Backend.(backends.Signer); ok {
		key := f.ECDSA
		digest := make([]byte, 32)
		if key == "" {
			key, digest = f.Ed25519, []byte("x")
		}
		_, err = s.Sign(ctx, key, digest)
		check("Sign", err)
	}
}

func testClose(t *testing.T, open func(t *testing.T) *Fixture) {
	f := open(t)
	ct, err := f.Backend.Encrypt(t.Context(), f.AES, []byte("before close"), nil)
	if err != nil {
		t.Fatalf("Encrypt before Close: %v", err)
	}
	if err := f.Backend.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if _, err := f.Backend.Encrypt(t.Context(), f.AES, []byte("after close"), nil); err == nil {
		t.Error("Encrypt after Close succeeded")
	}
	if _, err := f.Backend.Decrypt(t.Context(), f.AES, ct, nil); err == nil {
		t.Error("Decrypt after Close succeeded")
	}
	// A second Close must not panic.
	_ = f.Backend.Close()
}
