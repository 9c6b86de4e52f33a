package client_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// BenchmarkEnvelope compares the SDK envelope with a warm data key against
// raw AES-256-GCM (a random nonce per message, as the envelope uses) on the
// same sizes in the same run. The target is envelope ≤ 1.3× raw.
func BenchmarkEnvelope(b *testing.B) {
	c := startCluster(b)
	cl := c.client(b, "us", c.us)
	ectx := map[string]string{"queue": "orders"}
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "shared"})
	if err != nil {
		b.Fatal(err)
	}
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	blk, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(blk)
	for _, size := range []struct {
		name string
		n    int
	}{{"1KiB", 1 << 10}, {"1MiB", 1 << 20}} {
		msg := make([]byte, size.n)
		ct, err := enc.Encrypt(b.Context(), msg, ectx) // warm the data key
		if err != nil {
			b.Fatal(err)
		}
		if _, err := dec.Decrypt(b.Context(), ct, ectx); err != nil {
			b.Fatal(err)
		}
		nonce := make([]byte, aead.NonceSize())
		raw := aead.Seal(nil, nonce, msg, nil)
		b.Run("Encrypt"+size.name+"/sdk", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := enc.Encrypt(b.Context(), msg, ectx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Encrypt"+size.name+"/raw-aes-gcm", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				n := make([]byte, aead.NonceSize())
				_, _ = rand.Read(n)
				_ = aead.Seal(n, n, msg, nil)
			}
		})
		// The same AEAD with the AAD the format binds (header and
		// context, as long as the ciphertext's): what any binding of key
		// id, version, wrapped key and context costs.
		canon, _ := envelope.CanonicalContext(ectx)
		aad := make([]byte, len(ct)-size.n-envelope.TagSize+len(canon))
		rawAAD := aead.Seal(nil, nonce, msg, aad)
		b.Run("Encrypt"+size.name+"/raw-aes-gcm+aad", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				n := make([]byte, aead.NonceSize())
				_, _ = rand.Read(n)
				_ = aead.Seal(n, n, msg, aad)
			}
		})
		b.Run("Decrypt"+size.name+"/raw-aes-gcm+aad", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := aead.Open(nil, nonce, rawAAD, aad); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Decrypt"+size.name+"/sdk", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := dec.Decrypt(b.Context(), ct, ectx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Decrypt"+size.name+"/raw-aes-gcm", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := aead.Open(nil, nonce, raw, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
