package client_test

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// BenchmarkEnvelope compares the SDK envelope with a warm data key against
// raw AES-256-GCM on the same sizes in the same run. The target is
// envelope ≤ 1.3× raw.
//
// The raw baselines are what a careful application writes: a random nonce
// per message from crypto/rand, the SDK's nonce source, and one allocation
// of exactly its output — nonce ‖ ciphertext ‖ tag, sealed in place after
// the nonce — or, to open, exactly the plaintext. raw-aes-gcm+aad binds an
// AAD as long as the format's header and context (built once: any binding
// of key id, version, wrapped key and context costs at least that).
//
// The sub-benchmarks run one after another, each -count times in a row, so
// on a shared machine a change of load between them moves their ratio. The
// paired sub-benchmarks run the SDK and both raw baselines in turn, in
// stretches of about 32 KiB, within one loop, and report each one's time
// per message and the median of the stretches' ratios; compare those.
// (They share garbage collection between the three, which allocate the
// same size class.)
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
		canon, _ := envelope.CanonicalContext(ectx)
		aad := make([]byte, len(ct)-size.n-envelope.TagSize+len(canon))
		seal := func(aad []byte) []byte {
			out := make([]byte, envelope.NonceSize, envelope.NonceSize+size.n+envelope.TagSize)
			_, _ = rand.Read(out)
			return aead.Seal(out, out, msg, aad)
		}
		open := func(ct, aad []byte) {
			if _, err := aead.Open(nil, ct[:envelope.NonceSize], ct[envelope.NonceSize:], aad); err != nil {
				b.Fatal(err)
			}
		}
		raw, rawAAD := seal(nil), seal(aad)
		sdkSeal := func() {
			if _, err := enc.Encrypt(b.Context(), msg, ectx); err != nil {
				b.Fatal(err)
			}
		}
		sdkOpen := func() {
			if _, err := dec.Decrypt(b.Context(), ct, ectx); err != nil {
				b.Fatal(err)
			}
		}
		// The loops are written out, not run through these closures, so
		// that the raw baselines pay no indirect call the SDK does not.
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
				out := make([]byte, envelope.NonceSize, envelope.NonceSize+size.n+envelope.TagSize)
				_, _ = rand.Read(out)
				_ = aead.Seal(out, out, msg, nil)
			}
		})
		b.Run("Encrypt"+size.name+"/raw-aes-gcm+aad", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				out := make([]byte, envelope.NonceSize, envelope.NonceSize+size.n+envelope.TagSize)
				_, _ = rand.Read(out)
				_ = aead.Seal(out, out, msg, aad)
			}
		})
		b.Run("Decrypt"+size.name+"/raw-aes-gcm+aad", func(b *testing.B) {
			b.SetBytes(int64(size.n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := aead.Open(nil, rawAAD[:envelope.NonceSize], rawAAD[envelope.NonceSize:], aad); err != nil {
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
				if _, err := aead.Open(nil, raw[:envelope.NonceSize], raw[envelope.NonceSize:], nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		stretch := max(1, (32<<10)/size.n)
		b.Run("Encrypt"+size.name+"/paired", func(b *testing.B) {
			paired(b, stretch, sdkSeal, func() { seal(nil) }, func() { seal(aad) })
		})
		b.Run("Decrypt"+size.name+"/paired", func(b *testing.B) {
			paired(b, stretch, sdkOpen, func() { open(raw, nil) }, func() { open(rawAAD, aad) })
		})
	}
}

// paired times sdk, raw and rawAAD in turn, stretch messages at a time,
// and reports each one's ns per message (sdk-ns/msg, raw-ns/msg,
// raw+aad-ns/msg) and the medians of the stretches' ratios (sdk/raw,
// sdk/raw+aad). Its ns/op is left out: an op is a stretch of each.
func paired(b *testing.B, stretch int, sdk, raw, rawAAD func()) {
	fs := [3]func(){sdk, raw, rawAAD}
	var total [3]time.Duration
	var toRaw, toAAD []float64
	for b.Loop() {
		var d [3]time.Duration
		for i, f := range fs {
			t0 := time.Now()
			for range stretch {
				f()
			}
			d[i] = time.Since(t0)
			total[i] += d[i]
		}
		toRaw = append(toRaw, float64(d[0])/float64(d[1]))
		toAAD = append(toAAD, float64(d[0])/float64(d[2]))
	}
	msgs := float64(b.N * stretch)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(total[0])/msgs, "sdk-ns/msg")
	b.ReportMetric(float64(total[1])/msgs, "raw-ns/msg")
	b.ReportMetric(float64(total[2])/msgs, "raw+aad-ns/msg")
	b.ReportMetric(median(toRaw), "sdk/raw")
	b.ReportMetric(median(toAAD), "sdk/raw+aad")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	return xs[len(xs)/2]
}
