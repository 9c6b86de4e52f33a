package managed

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// TestXKSMatchesTheSpec: what XKSEncrypt seals opens with nothing but the
// standard library, the documented subkey (HKDF-SHA256 of the version's
// material, info Input(DomainXKS, v): the legacy label for a key without
// salt, the salted one otherwise) and the spec's AAD (u16 length ‖ AAD ‖
// u8 length ‖ metadata); it does not open under the raw material;
// XKSDecrypt opens it and refuses a changed AAD, and the metadata names
// the version.
func TestXKSMatchesTheSpec(t *testing.T) {
	ctx := t.Context()
	o, src := newOps(t)
	salted := src.m["aes"].Clone()
	salted.ID, salted.Salt = "salted", NewSalt()
	src.m["salted"], src.mat["salted"] = salted, src.mat["aes"].Clone()
	aad := bytes.Repeat([]byte{7}, 8192)
	pt := bytes.Repeat([]byte("x"), 4300)
	for _, tc := range []struct {
		id   string
		info []byte
	}{
		{"aes", VersionInput("keybroker/v1/xks", "aes", 1)},
		{"salted", SaltedInput("keybroker/v2/xks", salted.Salt, "salted", 1)},
	} {
		k := src.m[tc.id]
		out, err := o.XKSEncrypt(ctx, k, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		if out.Version != 1 || !bytes.Equal(out.Metadata, []byte{1, 0, 0, 0, 1}) || len(out.IV) != XKSIVSize || len(out.Tag) != XKSTagSize || len(out.Ciphertext) != len(pt) {
			t.Fatalf("XKSEncrypt(%s) = version %d, metadata %x, IV %d, tag %d, ciphertext %d", tc.id, out.Version, out.Metadata, len(out.IV), len(out.Tag), len(out.Ciphertext))
		}
		full := binary.BigEndian.AppendUint16(nil, uint16(len(aad)))
		full = append(full, aad...)
		full = append(full, byte(len(out.Metadata)))
		full = append(full, out.Metadata...)
		open := func(key []byte) ([]byte, error) {
			block, _ := aes.NewCipher(key)
			gcm, _ := cipher.NewGCM(block)
			return gcm.Open(nil, out.IV, append(bytes.Clone(out.Ciphertext), out.Tag...), full)
		}
		sub, err := hkdf.Key(sha256.New, src.mat[tc.id].Reveal(), nil, string(tc.info), 32)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := open(sub); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("%s: the documented subkey and AAD do not open it: %v", tc.id, err)
		}
		if _, err := open(src.mat[tc.id].Reveal()); err == nil {
			t.Errorf("%s: the raw material opens an XKS ciphertext", tc.id)
		}
		dec, err := o.XKSDecrypt(ctx, k, 1, aad, out.Metadata, out.IV, out.Ciphertext, out.Tag)
		if err != nil || !bytes.Equal(dec.Plaintext, pt) || dec.Version != 1 {
			t.Errorf("XKSDecrypt(%s) = %d, %v", tc.id, dec.Version, err)
		}
		if _, err := o.XKSDecrypt(ctx, k, 1, aad[1:], out.Metadata, out.IV, out.Ciphertext, out.Tag); !errors.Is(err, ErrBadCiphertext) || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("XKSDecrypt with another AAD: %v, want ErrBadCiphertext", err)
		}
	}
	if _, err := o.XKSEncrypt(ctx, src.m["hsm"], pt, nil); !errors.Is(err, ErrXKSKeyUsage) {
		t.Errorf("XKSEncrypt on a backend-mode key: %v, want ErrXKSKeyUsage", err)
	}
	if _, err := o.XKSEncrypt(ctx, src.m["aes"], make([]byte, MaxXKSPlaintext+1), nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("XKSEncrypt of an oversized plaintext: %v, want ErrInvalidArgument", err)
	}
}

func TestParseXKSMetadata(t *testing.T) {
	for _, v := range []uint32{1, 2, 1 << 31} {
		if got, err := ParseXKSMetadata(XKSMetadata(v)); err != nil || got != v {
			t.Errorf("ParseXKSMetadata(XKSMetadata(%d)) = %d, %v", v, got, err)
		}
	}
	for _, md := range [][]byte{nil, {}, {1}, {2, 0, 0, 0, 1}, {1, 0, 0, 0, 0}, {1, 0, 0, 0, 1, 0}} {
		if _, err := ParseXKSMetadata(md); !errors.Is(err, ErrBadCiphertext) {
			t.Errorf("ParseXKSMetadata(%x) = %v, want ErrBadCiphertext", md, err)
		}
	}
}

// BenchmarkXKSEncrypt: one XKS encrypt of 4300 bytes with an 8192-byte
// AAD and the decrypt of it on a derive-mode key whose material the source
// holds: the material fetch, the HKDF subkey (derived per call, not
// cached) and AES-GCM.
func BenchmarkXKSEncrypt(b *testing.B) {
	o, src := newOps(b)
	k := src.m["aes"]
	pt, aad := make([]byte, 4300), make([]byte, 8192)
	b.SetBytes(int64(len(pt)))
	for b.Loop() {
		out, err := o.XKSEncrypt(b.Context(), k, pt, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := o.XKSDecrypt(b.Context(), k, out.Version, aad, out.Metadata, out.IV, out.Ciphertext, out.Tag); err != nil {
			b.Fatal(err)
		}
	}
}
