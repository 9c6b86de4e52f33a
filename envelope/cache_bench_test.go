package envelope

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// BenchmarkCacheGet measures a warm unwrap-cache lookup of a 60-byte
// wrapped data key: the cost of the cache alone.
func BenchmarkCacheGet(b *testing.B) {
	c := NewCache(1024, time.Hour, nil)
	h := &Header{KeyID: "orders", Version: 3, WrappedDEK: bytes.Repeat([]byte{7}, 60)}
	dk := &DataKey{KeyID: "orders"}
	unwrap := func(context.Context) (*DataKey, error) { return dk, nil }
	if _, err := c.GetIncarnation(b.Context(), h, "salt-0123456789abcdef", unwrap); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if got, err := c.GetIncarnation(b.Context(), h, "salt-0123456789abcdef", unwrap); err != nil || got != dk {
			b.Fatal(got, err)
		}
	}
}
