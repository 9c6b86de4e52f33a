package store_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// BenchmarkPut measures a compare-and-swap write of a 1 KiB value (about a
// key record) on each store: one writer updating one object, and 8
// writers each creating objects of their own (the shape of CreateKey under
// load). bbolt fsyncs every commit; etcd (one member on loopback) fsyncs
// its log and batches concurrent proposals.
func BenchmarkPut(b *testing.B) {
	value := make([]byte, 1024)
	stores := map[string]func(b *testing.B) store.Store{
		"bolt": func(b *testing.B) store.Store {
			s, err := store.Open(filepath.Join(b.TempDir(), "r.db"), 0)
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
		"etcd": func(b *testing.B) store.Store {
			c := etcdtest.Start(b, 1)
			s, err := store.OpenEtcd(b.Context(), store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/bench/"})
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	for _, name := range []string{"bolt", "etcd"} {
		b.Run(name+"/update", func(b *testing.B) {
			s := stores[name](b)
			defer s.Close()
			rev, err := s.Put(b.Context(), "keys", "k", value, 0)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if rev, err = s.Put(b.Context(), "keys", "k", value, rev); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/create-8", func(b *testing.B) {
			s := stores[name](b)
			defer s.Close()
			var n atomic.Int64
			b.SetParallelism(4) // 8 writers on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Put(b.Context(), "keys", fmt.Sprintf("k%d", n.Add(1)), value, 0); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
