package broker

import (
	"fmt"
	"testing"

	"github.com/keybroker/keybroker/managed"
)

// BenchmarkService measures the central tier's own cost per operation on a
// warm key (material derived, data key reused, unwrapped key cached), with
// softkms as the root: what is left is the registry read, policy-free
// service logic and AES-GCM.
func BenchmarkService(b *testing.B) {
	for _, size := range []int{32, 1024} {
		b.Run(fmt.Sprintf("Encrypt%dB", size), func(b *testing.B) {
			e := newBenchEnv(b)
			pt := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := e.byID().Encrypt(b.Context(), "bench", pt, map[string]string{"tenant": "42"}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Decrypt%dB", size), func(b *testing.B) {
			e := newBenchEnv(b)
			ct, _, err := e.byID().Encrypt(b.Context(), "bench", make([]byte, size), map[string]string{"tenant": "42"})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for b.Loop() {
				if _, _, _, err := e.byID().Decrypt(b.Context(), ct, map[string]string{"tenant": "42"}, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func newBenchEnv(b *testing.B) *env {
	e := newEnv(b)
	e.create(b, "bench", managed.AES256GCM, managed.ModeDerive, "", false)
	return e
}
