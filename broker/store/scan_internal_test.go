package store

import "testing"

// TestScanBatch: after a first read of a page, a scan reads as many
// objects as 8 MiB holds of that size, between the page and 10,000 — so
// a million keys of some 600 bytes cost etcd a hundred reads, not a
// thousand, each of which visits every key to the range's end.
func TestScanBatch(t *testing.T) {
	objs := func(n, size int) []Object {
		out := make([]Object, n)
		for i := range out {
			out[i] = Object{ID: "k", Value: make([]byte, size-1)}
		}
		return out
	}
	for _, tc := range []struct {
		read        []Object
		limit, want int
	}{
		{objs(1000, 600), 1000, scanObjects},
		{objs(1000, 4096), 1000, 2048},
		{objs(10, 1<<20), 1000, 1000},
		{nil, 500, scanObjects},
	} {
		if got := scanBatch(tc.read, tc.limit); got != tc.want {
			t.Errorf("scanBatch(%d objects, limit %d) = %d, want %d", len(tc.read), tc.limit, got, tc.want)
		}
	}
}
