package backendtest

import (
	"crypto/sha256"
	"testing"

	"github.com/keybroker/keybroker/backends"
)

// Bench runs the standard backend benchmarks: Encrypt32B, MAC and Sign, each
// serially and in parallel (b.RunParallel), so every backend is measured the
// same way. Sub-benchmarks a backend cannot do are skipped.
func Bench(b *testing.B, f *Fixture) {
	ctx := b.Context()
	pt := make([]byte, 32)
	msg := []byte("keybroker/v1/material\x00bench\x00\x00\x00\x01")
	digest := sha256.Sum256(msg)
	ops := []struct {
		name string
		skip bool
		op   func() error
	}{
		{"Encrypt32B", false, func() error { _, err := f.Backend.Encrypt(ctx, f.AES, pt, msg); return err }},
		{"MAC", f.HMAC == "", func() error {
			tag, err := f.Backend.(backends.MACer).MAC(ctx, f.HMAC, msg)
			tag.Destroy()
			return err
		}},
		{"Sign", f.ECDSA == "", func() error { _, err := f.Backend.(backends.Signer).Sign(ctx, f.ECDSA, digest[:]); return err }},
	}
	for _, o := range ops {
		b.Run(o.name, func(b *testing.B) {
			if o.skip {
				b.Skip("backend has no key for this")
			}
			if o.name == "Encrypt32B" {
				b.SetBytes(int64(len(pt)))
			}
			for b.Loop() {
				if err := o.op(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(o.name+"Parallel", func(b *testing.B) {
			if o.skip {
				b.Skip("backend has no key for this")
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := o.op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
