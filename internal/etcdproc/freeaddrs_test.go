package etcdproc

import "testing"

// freeAddrs never gives one address twice: a cluster's members with the
// same peer URL do not start.
func TestFreeAddrsDistinct(t *testing.T) {
	addrs, err := freeAddrs(64)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s given twice in %v", a, addrs)
		}
		seen[a] = true
	}
}
