package scenarios_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// BenchmarkPropagation measures how long a key change made at the central
// tier takes to reach every edge, with 10 and 50 prefetching edges, each
// following the central node over its own Watch stream.
//
// One iteration is one trial: the admin calls RotateKey (or DisableKey) at
// the central node; the clock starts when the call returns. An edge has
// the change when a client at that edge sees it: an Encrypt there answers
// with the new primary version (rotate) or is refused with
// FailedPrecondition (disable). The client asks once the edge's replica
// reports the change's revision applied — polled in-process every 200 µs,
// the gate that saves 50 clients from polling over gRPC while nothing has
// happened — and asks again every millisecond until it sees the change,
// so the figure is when a client call returned with it, never earlier than
// the truth and later by at most the poll interval plus one call. The
// edge's own applied time is reported alongside (applied-*). p50-ms,
// p99-ms and max-ms are over every (edge, trial) pair.
//
// The rotated key accumulates versions, one per trial, as a key does in
// production; the disabled key is enabled again between trials (not
// timed). Before each trial every edge encrypts once under the key (not
// timed), so the change meets a warm edge: material opened, a data key in
// reuse.
//
//	go test -run '^$' -bench BenchmarkPropagation -benchtime 200x -count 3 ./internal/scenarios/
func BenchmarkPropagation(b *testing.B) {
	for _, n := range []int{10, 50} {
		b.Run(fmt.Sprintf("edges=%d", n), func(b *testing.B) {
			cl := startCluster(b, n, true)
			b.Run("rotate", func(b *testing.B) { cl.propagation(b, rotateChange) })
			b.Run("disable", func(b *testing.B) { cl.propagation(b, disableChange) })
		})
	}
}

// keyChange is the admin call a propagation trial times, how a client at
// an edge recognises its effect, and what puts the key back (untimed).
type keyChange struct {
	name string
	make func(context.Context, kbv1.KeyAdminClient, string) (*kbv1.KeyMetadata, error)
	// seen reports whether an Encrypt's answer shows the change made by
	// md; an error means the answer is neither the old state nor the new.
	seen func(md *kbv1.KeyMetadata, resp *kbv1.EncryptResponse, err error) (bool, error)
	undo func(context.Context, kbv1.KeyAdminClient, string) (*kbv1.KeyMetadata, error)
}

var rotateChange = keyChange{
	name: "rotate",
	make: func(ctx context.Context, a kbv1.KeyAdminClient, id string) (*kbv1.KeyMetadata, error) {
		return a.RotateKey(ctx, &kbv1.KeyRequest{KeyId: id})
	},
	seen: func(md *kbv1.KeyMetadata, resp *kbv1.EncryptResponse, err error) (bool, error) {
		switch {
		case err != nil:
			return false, err
		case resp.GetKeyVersion() > md.GetPrimaryVersion():
			return false, fmt.Errorf("encrypted under version %d, after rotating to %d", resp.GetKeyVersion(), md.GetPrimaryVersion())
		}
		return resp.GetKeyVersion() == md.GetPrimaryVersion(), nil
	},
}

var disableChange = keyChange{
	name: "disable",
	make: func(ctx context.Context, a kbv1.KeyAdminClient, id string) (*kbv1.KeyMetadata, error) {
		return a.DisableKey(ctx, &kbv1.KeyRequest{KeyId: id})
	},
	seen: func(_ *kbv1.KeyMetadata, _ *kbv1.EncryptResponse, err error) (bool, error) {
		switch status.Code(err) {
		case codes.OK:
			return false, nil
		case codes.FailedPrecondition:
			return true, nil
		}
		return false, err
	},
	undo: func(ctx context.Context, a kbv1.KeyAdminClient, id string) (*kbv1.KeyMetadata, error) {
		return a.EnableKey(ctx, &kbv1.KeyRequest{KeyId: id})
	},
}

var keySeq atomic.Int64

// propagation runs b.N trials of ch on a key of its own.
func (cl *cluster) propagation(b *testing.B, ch keyChange) {
	ctx := b.Context()
	id := fmt.Sprintf("%s-%d", ch.name, keySeq.Add(1))
	if _, err := cl.createKey(ctx, id); err != nil {
		b.Fatal(err)
	}
	if err := cl.waitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	n := len(cl.edges)
	var seen, applied []time.Duration
	var retries, trials int
	reconnects := cl.reconnects()
	for b.Loop() {
		trials++
		b.StopTimer()
		if err := cl.warm(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, a, r, err := cl.trial(ctx, id, ch)
		if err != nil {
			b.Fatal(err)
		}
		seen, applied, retries = append(seen, s...), append(applied, a...), retries+r
		if ch.undo != nil {
			b.StopTimer()
			md, err := ch.undo(ctx, cl.admin, id)
			if err == nil {
				err = cl.waitApplied(ctx, md.GetRevision(), nil)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	quantiles(b, "", seen)
	quantiles(b, "applied-", applied)
	// Client calls that still found the old state once the edge had
	// applied the change's revision: 0 when the replica's revision and
	// what it serves move together.
	b.ReportMetric(float64(retries)/float64(n*trials), "retries/edge")
	// Watch streams lost meanwhile (a stream that falls behind the
	// registry's feed is cut, and its edge resumes): 0 in a healthy run.
	b.ReportMetric(float64(cl.reconnects()-reconnects), "reconnects")
}

// reconnects counts the times the edges lost their Watch stream.
func (cl *cluster) reconnects() uint64 {
	var n uint64
	for _, e := range cl.c.Edges {
		n += e.Cache().Stats().Reconnects
	}
	return n
}

// warm encrypts once under id at every edge.
func (cl *cluster) warm(ctx context.Context, id string) error {
	var wg sync.WaitGroup
	errs := make([]error, len(cl.edges))
	for i, e := range cl.edges {
		wg.Go(func() {
			_, errs[i] = e.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: plaintext})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("warming edge %d: %w", i, err)
		}
	}
	return nil
}

var plaintext = make([]byte, 32)

// trial makes the change and returns, per edge, when a client there saw
// it and when the edge had applied it, both from the admin call's return,
// and how many client calls found the old state after the edge had
// applied the change.
func (cl *cluster) trial(ctx context.Context, id string, ch keyChange) (seen, applied []time.Duration, retries int, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	md, err := ch.make(ctx, cl.admin, id)
	if err != nil {
		return nil, nil, 0, err
	}
	t0 := time.Now()
	n := len(cl.edges)
	seen = make([]time.Duration, n)
	gates := make([]chan struct{}, n)
	errs := make([]error, n)
	var stale atomic.Int64
	var wg sync.WaitGroup
	for i, e := range cl.edges {
		gates[i] = make(chan struct{})
		wg.Go(func() {
			select {
			case <-gates[i]:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			for {
				resp, err := e.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: plaintext})
				ok, err := ch.seen(md, resp, err)
				if ok || err != nil {
					seen[i], errs[i] = time.Since(t0), err
					return
				}
				stale.Add(1)
				select {
				case <-time.After(time.Millisecond):
				case <-ctx.Done():
					errs[i] = ctx.Err()
					return
				}
			}
		})
	}
	applied = make([]time.Duration, n)
	err = cl.waitApplied(ctx, md.GetRevision(), func(i int) {
		applied[i] = time.Since(t0)
		close(gates[i])
	})
	if err != nil {
		cancel()
	}
	wg.Wait()
	for i, e := range errs {
		if e != nil && err == nil {
			err = fmt.Errorf("edge %d: %w", i, e)
		}
	}
	return seen, applied, int(stale.Load()), err
}

// waitApplied polls every edge's replica every 200 µs until each has
// applied rev, calling done(i) as edge i does.
func (cl *cluster) waitApplied(ctx context.Context, rev uint64, done func(i int)) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pending := make([]bool, len(cl.c.Edges))
	left := len(pending)
	for i := range pending {
		pending[i] = true
	}
	for {
		for i, e := range cl.c.Edges {
			if pending[i] && e.Cache().Revision() >= rev {
				pending[i] = false
				left--
				if done != nil {
					done(i)
				}
			}
		}
		if left == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d edges have not applied revision %d: %w", left, rev, ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
}
