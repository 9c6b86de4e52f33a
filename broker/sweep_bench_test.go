package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkSweep: one lifecycle sweep of a registry of 20,000 keys on
// bbolt, 10 of them with a rotation period, nothing due: "scan" pages
// through every key (the first sweep after the feed starts, or every
// sweep before the index), "indexed" reads the index the feed keeps.
//
//	go test ./broker -run '^$' -bench BenchmarkSweep -benchtime 20x
func BenchmarkSweep(b *testing.B) {
	const n = 20_000
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	r, c, _ := newRegistryTB(b)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				k := aesKey(fmt.Sprintf("k-%06d", i))
				if i%(n/10) == 0 {
					k.RotationPeriod, k.NextRotation = 24*time.Hour, c.Now().Add(24*time.Hour)
				}
				if _, err := r.Create(ctx, k); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { r.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := r.WaitFollowed(ctx, r.Store().Revision()); err != nil {
		b.Fatal(err)
	}
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := r.sweepAll(ctx, nil, c.Now(), 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	if _, _, err := r.Sweep(ctx, nil); err != nil { // builds the index
		b.Fatal(err)
	}
	b.Run("indexed", func(b *testing.B) {
		before := r.sweeps.indexed.Load()
		for b.Loop() {
			if _, _, err := r.Sweep(ctx, nil); err != nil {
				b.Fatal(err)
			}
		}
		if r.sweeps.indexed.Load() == before {
			b.Fatal("no sweep used the index")
		}
	})
}
