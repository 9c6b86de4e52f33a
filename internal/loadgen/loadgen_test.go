package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRunCountsCallsAndErrorsByCode(t *testing.T) {
	var n atomic.Uint64
	made := map[int]bool{}
	var mu sync.Mutex
	st, err := Run(t.Context(), Config{Workers: 8, Count: 1000}, func(w int) (Op, error) {
		mu.Lock()
		made[w] = true
		mu.Unlock()
		return func(context.Context) error {
			switch i := n.Add(1); {
			case i%10 == 0:
				return status.Error(codes.Unavailable, "down")
			case i%100 == 1:
				return errors.New("no status")
			}
			return nil
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(made) != 8 {
		t.Errorf("ops made for workers %v, want 0-7", made)
	}
	if got := n.Load(); got != 1000 {
		t.Errorf("%d calls made, want exactly the count, 1000", got)
	}
	if st.Ops != 890 || st.Failed != 110 || st.Errors["Unavailable"] != 100 || st.Errors["Unknown"] != 10 {
		t.Errorf("ops %d failed %d errors %v; want 890, 110, Unavailable 100, Unknown 10", st.Ops, st.Failed, st.Errors)
	}
	l := st.Latency
	if l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
		t.Errorf("latency %+v: percentiles out of order", l)
	}
	if st.Rate() <= 0 {
		t.Errorf("rate %v", st.Rate())
	}
}

func TestRunRecordsLatency(t *testing.T) {
	// Half the calls take at least 2ms, so the p90 cannot be under it and
	// the p50 of the fast half is far below it.
	var n atomic.Uint64
	st, err := Run(t.Context(), Config{Workers: 2, Count: 40}, func(int) (Op, error) {
		return func(context.Context) error {
			if n.Add(1)%2 == 0 {
				time.Sleep(2 * time.Millisecond)
			}
			return nil
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Latency.P90 < 2*time.Millisecond || st.Latency.Max < 2*time.Millisecond {
		t.Errorf("p90 %v max %v: the slow half (≥ 2ms) is missing", st.Latency.P90, st.Latency.Max)
	}
}

func TestRunDropsCallsCutShortByTheEnd(t *testing.T) {
	// Every call blocks until the run ends and then fails with the
	// context's error: none of them is a failure of the target.
	st, err := Run(t.Context(), Config{Workers: 4, Duration: 20 * time.Millisecond}, func(int) (Op, error) {
		return func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Ops != 0 || st.Failed != 0 {
		t.Errorf("ops %d failed %d; want 0 and 0", st.Ops, st.Failed)
	}
	if st.Elapsed < 20*time.Millisecond {
		t.Errorf("elapsed %v, shorter than the duration", st.Elapsed)
	}
}

func TestRunWarmupIsNotCounted(t *testing.T) {
	var calls atomic.Uint64
	st, err := Run(t.Context(), Config{Workers: 1, Count: 5, Warmup: 10 * time.Millisecond}, func(int) (Op, error) {
		return func(context.Context) error { calls.Add(1); return nil }, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Ops != 5 {
		t.Errorf("ops %d, want the 5 measured", st.Ops)
	}
	if calls.Load() <= 5 {
		t.Errorf("%d calls: the warm-up made none", calls.Load())
	}
}

func TestRunIntervalsAddUpToTheTotal(t *testing.T) {
	// The op holds back until the first interval has been reported, so at
	// least two periods (one reported, then the rest) make up the run.
	reported := make(chan struct{})
	var once sync.Once
	var periods []Stats
	st, err := Run(t.Context(), Config{Workers: 2, Count: 2000, Interval: time.Millisecond, OnInterval: func(s Stats) {
		periods = append(periods, s)
		once.Do(func() { close(reported) })
	}}, func(int) (Op, error) {
		var i int
		return func(context.Context) error {
			if i++; i == 500 {
				<-reported
			}
			return nil
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, p := range periods {
		sum += p.Ops
		if p.Elapsed <= 0 {
			t.Errorf("period %+v has no length", p)
		}
	}
	if len(periods) == 0 || sum > st.Ops || st.Ops != 2000 {
		t.Errorf("%d periods with %d ops; total %d, want 2000 with the periods part of it", len(periods), sum, st.Ops)
	}
}

func TestRunRejectsUnusableConfig(t *testing.T) {
	newOp := func(int) (Op, error) { return func(context.Context) error { return nil }, nil }
	for _, cfg := range []Config{{Workers: 0, Count: 1}, {Workers: 1}} {
		if _, err := Run(t.Context(), cfg, newOp); err == nil {
			t.Errorf("Run(%+v) = nil error", cfg)
		}
	}
	boom := errors.New("no key")
	if _, err := Run(t.Context(), Config{Workers: 2, Count: 1}, func(w int) (Op, error) {
		if w == 1 {
			return nil, boom
		}
		return newOp(w)
	}); !errors.Is(err, boom) {
		t.Errorf("Run with a failing newOp = %v, want %v", err, boom)
	}
}

func TestStatsJSON(t *testing.T) {
	s := Stats{Elapsed: 2 * time.Second, Ops: 100, Failed: 1, Errors: map[string]uint64{"Unavailable": 1},
		Latency: Latency{P50: 1500 * time.Microsecond, P999: 3 * time.Millisecond}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Elapsed float64            `json:"elapsed_s"`
		Rate    float64            `json:"ops_per_s"`
		Errors  map[string]uint64  `json:"errors"`
		Latency map[string]float64 `json:"latency_us"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Elapsed != 2 || got.Rate != 50 || got.Errors["Unavailable"] != 1 || got.Latency["p50"] != 1500 || got.Latency["p99_9"] != 3000 {
		t.Errorf("JSON %s", b)
	}
}

func TestRunPaired(t *testing.T) {
	// A waits 10µs a call, B 2ms, on the bubble's fake clock: A's rate is
	// above B's in every round, however busy the machine running the test.
	synctest.Test(t, func(t *testing.T) {
		fast := func(int) (Op, error) {
			return func(context.Context) error { time.Sleep(10 * time.Microsecond); return nil }, nil
		}
		slow := func(int) (Op, error) {
			return func(context.Context) error { time.Sleep(2 * time.Millisecond); return nil }, nil
		}
		// AroundRound brackets each measured round of each load, in turn.
		var rounds []string
		cfg := Config{Workers: 2, Duration: 60 * time.Millisecond, AroundRound: func(l int) func() {
			rounds = append(rounds, fmt.Sprint("before ", l))
			return func() { rounds = append(rounds, fmt.Sprint("after ", l)) }
		}}
		p, err := RunPaired(t.Context(), cfg, 3, fast, slow)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Repeat("before 0,after 0,before 1,after 1,", 3)
		if got := strings.Join(rounds, ",") + ","; got != want {
			t.Errorf("AroundRound calls %s, want %s", got, want)
		}
		if len(p.Ratios) != 3 || p.A.Ops == 0 || p.B.Ops == 0 || p.A.Elapsed <= 0 || p.B.Elapsed <= 0 {
			t.Fatalf("paired = %+v: want 3 rounds with calls on both sides", p)
		}
		for _, r := range p.Ratios {
			if r <= 1 {
				t.Errorf("round ratio %v: the fast load was not faster", r)
			}
		}
		if m := p.MedianRatio(); m < slices.Min(p.Ratios) || m > slices.Max(p.Ratios) {
			t.Errorf("median %v outside the rounds %v", m, p.Ratios)
		}
		if _, err := RunPaired(t.Context(), Config{Workers: 1, Duration: time.Second}, 0, fast, slow); err == nil {
			t.Error("RunPaired with 0 rounds succeeded")
		}
	})
}

func TestMedianRatio(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := (Paired{Ratios: tc.in}).MedianRatio(); got != tc.want {
			t.Errorf("MedianRatio(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
