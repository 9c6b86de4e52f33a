package broker

import (
	"testing"

	"github.com/keybroker/keybroker/managed"
)

// BenchmarkMaterialsGet measures a warm central material lookup: the cost
// of the cache alone, the root of trust untouched.
func BenchmarkMaterialsGet(b *testing.B) {
	e := newBenchEnv(b)
	k := e.create(b, "mat", managed.HMACSHA256, managed.ModeDerive, "", false)
	if _, err := e.svc.mat.Get(b.Context(), k, 1); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.svc.mat.Get(b.Context(), k, 1); err != nil {
			b.Fatal(err)
		}
	}
}
