// Package loadgen drives concurrent load at an operation and measures what
// it does: completed operations per second, latency percentiles (p50, p90,
// p99, p99.9, max) from an HDR histogram, and failures counted by gRPC code.
// `keybroker bench` and `make soak` are built on it.
//
// A run has workers, each calling its own [Op] in a loop, one call at a
// time, for a duration or until a total count of calls has been made. Each
// worker records into its own histogram, so recording costs no shared lock;
// the histograms are merged for a report. An optional warm-up runs the same
// load first and throws its figures away (connections, caches and data keys
// are then warm), and an optional interval reports the figures of each
// period while the run goes on.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Op makes one call. An error counts as a failure under its gRPC code
// (status.Code; errors that carry no status count as Unknown).
type Op func(ctx context.Context) error

// Config shapes a run.
type Config struct {
	// Workers is the number of concurrent callers; at least 1.
	Workers int
	// Duration bounds the measured part of the run. 0 means no bound, and
	// then Count must be set.
	Duration time.Duration
	// Count, when set, ends the run after this many calls in all (the
	// warm-up's not included).
	Count uint64
	// Warmup runs the load this long before measuring; its figures are
	// thrown away.
	Warmup time.Duration
	// Interval, when set with OnInterval, reports the figures of each
	// period of this length while the run goes on.
	Interval time.Duration
	// OnInterval receives each period's figures, from one goroutine.
	OnInterval func(Stats)
	// OnStart, when set, is called once the warm-up is over and before the
	// measured run starts, while no Op runs: the place to reset counters
	// the Ops keep.
	OnStart func()
	// AroundRound, when set, is called by RunPaired just before each
	// measured round of load l (0 for A, 1 for B), outside its timing, and
	// the function it returns just after: the place to read a counter that
	// the round moves (a node's CPU).
	AroundRound func(l int) (after func())
}

// Stats are the figures of a run or of one of its periods.
type Stats struct {
	// Start is when the measured period began.
	Start time.Time
	// Elapsed is the length of the period.
	Elapsed time.Duration
	// Ops counts the calls that succeeded.
	Ops uint64
	// Failed counts the calls that failed; Errors splits it by gRPC code
	// name ("Unavailable").
	Failed uint64
	Errors map[string]uint64
	// Latency of the calls that succeeded.
	Latency Latency
}

// Rate is the successful calls per second.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Ops) / s.Elapsed.Seconds()
}

// MarshalJSON gives seconds, operations per second and latencies in
// microseconds:
//
//	{"start": "…", "elapsed_s": 10.0, "ops": 299120, "ops_per_s": 29912.0,
//	 "failed": 0, "errors": {}, "latency_us": {"p50": 1980.4, …}}
func (s Stats) MarshalJSON() ([]byte, error) {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	errs := s.Errors
	if errs == nil {
		errs = map[string]uint64{}
	}
	return json.Marshal(struct {
		Start     time.Time          `json:"start"`
		Elapsed   float64            `json:"elapsed_s"`
		Ops       uint64             `json:"ops"`
		Rate      float64            `json:"ops_per_s"`
		Failed    uint64             `json:"failed"`
		Errors    map[string]uint64  `json:"errors"`
		LatencyUS map[string]float64 `json:"latency_us"`
	}{s.Start, s.Elapsed.Seconds(), s.Ops, s.Rate(), s.Failed, errs, map[string]float64{
		"p50": us(s.Latency.P50), "p90": us(s.Latency.P90), "p99": us(s.Latency.P99),
		"p99_9": us(s.Latency.P999), "max": us(s.Latency.Max), "mean": us(s.Latency.Mean),
	}})
}

// Latency is a latency distribution.
type Latency struct {
	P50, P90, P99, P999, Max, Mean time.Duration
}

// Histogram bounds: 1 µs to 1 hour, three significant figures (a value is
// recorded to within 0.1 %).
const (
	lowest  = int64(time.Microsecond)
	highest = int64(time.Hour)
	sigfigs = 3
)

func newHistogram() *hdr.Histogram { return hdr.New(lowest, highest, sigfigs) }

// worker is one caller's counters. Its mutex is taken by the worker on
// each call and by the reporter to swap the period out: uncontended but for
// the moment of a swap.
type worker struct {
	mu     sync.Mutex
	hist   *hdr.Histogram
	failed map[codes.Code]uint64
}

func (w *worker) record(d time.Duration, err error) {
	w.mu.Lock()
	if err == nil {
		// Values past the histogram's bounds are clamped to them: a call
		// slower than an hour still counts, at an hour.
		_ = w.hist.RecordValue(min(max(int64(d), lowest), highest))
	} else {
		w.failed[status.Code(err)]++
	}
	w.mu.Unlock()
}

// take returns the worker's figures since the last take and starts afresh.
func (w *worker) take() (*hdr.Histogram, map[codes.Code]uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	h, f := w.hist, w.failed
	w.hist, w.failed = newHistogram(), map[codes.Code]uint64{}
	return h, f
}

// Run runs the load: Workers goroutines each calling the Op that newOp made
// for it (worker 0 … Workers-1), and returns the figures of the measured
// part. It returns an error only when newOp fails or the Config is unusable;
// failed calls are counted, not returned. Calls cut short by the end of the
// run, or by ctx, are not counted at all.
func Run(ctx context.Context, cfg Config, newOp func(worker int) (Op, error)) (Stats, error) {
	if cfg.Workers < 1 {
		return Stats{}, fmt.Errorf("loadgen: %d workers: at least 1 is needed", cfg.Workers)
	}
	if cfg.Duration <= 0 && cfg.Count == 0 {
		return Stats{}, errors.New("loadgen: a duration or a count is needed")
	}
	ops, err := makeOps(cfg.Workers, newOp)
	if err != nil {
		return Stats{}, err
	}
	if cfg.Warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, cfg.Warmup)
		run(wctx, ops, 0, nil)
		cancel()
	}
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	if cfg.OnStart != nil {
		cfg.OnStart()
	}

	ws := newWorkers(len(ops))
	// The run's deadline counts from start, so a timed run's Elapsed is
	// never shorter than its Duration.
	start := time.Now()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Duration > 0 {
		rctx, cancel = context.WithDeadline(ctx, start.Add(cfg.Duration))
		defer cancel()
	}
	total := newAccumulator(start)
	var reporter sync.WaitGroup
	if cfg.Interval > 0 && cfg.OnInterval != nil {
		reporter.Go(func() {
			t := time.NewTicker(cfg.Interval)
			defer t.Stop()
			from := start
			for {
				select {
				case <-rctx.Done():
					return
				case now := <-t.C:
					period := newAccumulator(from)
					period.takeFrom(ws)
					total.merge(period)
					cfg.OnInterval(period.stats(now))
					from = now
				}
			}
		})
	}
	run(rctx, ops, cfg.Count, ws)
	end := time.Now()
	cancel()
	reporter.Wait()
	last := newAccumulator(start)
	last.takeFrom(ws)
	total.merge(last)
	return total.stats(end), nil
}

// makeOps makes each of n workers' Op.
func makeOps(n int, newOp func(worker int) (Op, error)) ([]Op, error) {
	ops := make([]Op, n)
	for i := range ops {
		op, err := newOp(i)
		if err != nil {
			return nil, err
		}
		ops[i] = op
	}
	return ops, nil
}

// newWorkers makes n workers' empty counters.
func newWorkers(n int) []*worker {
	ws := make([]*worker, n)
	for i := range ws {
		ws[i] = &worker{hist: newHistogram(), failed: map[codes.Code]uint64{}}
	}
	return ws
}

// run calls ops until ctx ends or count calls (when count > 0) have been
// claimed, recording into ws when it is not nil.
func run(ctx context.Context, ops []Op, count uint64, ws []*worker) {
	// The run is over at its deadline even before ctx's timer has fired:
	// gRPC fails a call whose deadline has passed at once, and a loaded
	// machine can run the timer late.
	deadline, hasDeadline := ctx.Deadline()
	over := func(now time.Time) bool { return ctx.Err() != nil || (hasDeadline && !now.Before(deadline)) }
	var claimed atomic.Uint64
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Go(func() {
			for !over(time.Now()) {
				if count > 0 && claimed.Add(1) > count {
					return
				}
				t0 := time.Now()
				err := op(ctx)
				t1 := time.Now()
				if ws == nil || (err != nil && over(t1)) {
					// Warm-up, or a call cut short by the end of the run.
					continue
				}
				ws[i].record(t1.Sub(t0), err)
			}
		})
	}
	wg.Wait()
}

// accumulator merges workers' figures.
type accumulator struct {
	start  time.Time
	hist   *hdr.Histogram
	failed map[codes.Code]uint64
}

func newAccumulator(start time.Time) *accumulator {
	return &accumulator{start: start, hist: newHistogram(), failed: map[codes.Code]uint64{}}
}

func (a *accumulator) takeFrom(ws []*worker) {
	for _, w := range ws {
		h, f := w.take()
		a.hist.Merge(h)
		for c, n := range f {
			a.failed[c] += n
		}
	}
}

func (a *accumulator) merge(b *accumulator) {
	a.hist.Merge(b.hist)
	for c, n := range b.failed {
		a.failed[c] += n
	}
}

func (a *accumulator) stats(end time.Time) Stats {
	s := Stats{Start: a.start, Elapsed: end.Sub(a.start), Ops: uint64(a.hist.TotalCount())}
	for c, n := range a.failed {
		if s.Errors == nil {
			s.Errors = map[string]uint64{}
		}
		s.Errors[c.String()] += n
		s.Failed += n
	}
	if s.Ops > 0 {
		at := func(q float64) time.Duration { return time.Duration(a.hist.ValueAtPercentile(q)) }
		s.Latency = Latency{P50: at(50), P90: at(90), P99: at(99), P999: at(99.9),
			Max: time.Duration(a.hist.Max()), Mean: time.Duration(a.hist.Mean())}
	}
	return s
}

// Paired are the figures of RunPaired: each load's, over all its rounds,
// and the ratio of their rates in each round.
type Paired struct {
	A, B Stats
	// Ratios are A's rate over B's, one a round.
	Ratios []float64
}

// MedianRatio is the median of the rounds' ratios.
func (p Paired) MedianRatio() float64 {
	if len(p.Ratios) == 0 {
		return 0
	}
	r := slices.Sorted(slices.Values(p.Ratios))
	if n := len(r); n%2 == 0 {
		return (r[n/2-1] + r[n/2]) / 2
	}
	return r[len(r)/2]
}

// RunPaired runs two loads in turn, rounds times each, each round lasting
// cfg.Duration / rounds, so that both meet the same conditions on a
// machine whose load changes: the ratio of their rates is taken round by
// round. cfg.Warmup runs both first; cfg.Count, Interval and OnStart are
// not used.
func RunPaired(ctx context.Context, cfg Config, rounds int, newA, newB func(worker int) (Op, error)) (Paired, error) {
	if cfg.Workers < 1 || rounds < 1 || cfg.Duration < time.Duration(rounds)*time.Millisecond {
		return Paired{}, fmt.Errorf("loadgen: %d workers, %d rounds over %s: need workers ≥ 1 and rounds ≥ 1 of at least 1ms", cfg.Workers, rounds, cfg.Duration)
	}
	var loads [2][]Op
	for l, newOp := range []func(int) (Op, error){newA, newB} {
		ops, err := makeOps(cfg.Workers, newOp)
		if err != nil {
			return Paired{}, err
		}
		loads[l] = ops
	}
	if cfg.Warmup > 0 {
		for _, ops := range loads {
			wctx, cancel := context.WithTimeout(ctx, cfg.Warmup/2)
			run(wctx, ops, 0, nil)
			cancel()
		}
	}
	round := cfg.Duration / time.Duration(rounds)
	start := time.Now()
	totals := [2]*accumulator{newAccumulator(start), newAccumulator(start)}
	var elapsed [2]time.Duration
	var out Paired
	for range rounds {
		var rate [2]float64
		for l, ops := range loads {
			if err := ctx.Err(); err != nil {
				return Paired{}, err
			}
			ws := newWorkers(len(ops))
			after := func() {}
			if cfg.AroundRound != nil {
				after = cfg.AroundRound(l)
			}
			rctx, cancel := context.WithTimeout(ctx, round)
			t0 := time.Now()
			run(rctx, ops, 0, ws)
			d := time.Since(t0)
			cancel()
			after()
			acc := newAccumulator(t0)
			acc.takeFrom(ws)
			totals[l].merge(acc)
			elapsed[l] += d
			rate[l] = float64(acc.hist.TotalCount()) / d.Seconds()
		}
		if rate[1] > 0 {
			out.Ratios = append(out.Ratios, rate[0]/rate[1])
		}
	}
	// Each load's elapsed time is the sum of its own rounds.
	out.A, out.B = totals[0].stats(start.Add(elapsed[0])), totals[1].stats(start.Add(elapsed[1]))
	return out, nil
}
