package pkcs11_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/secret"
)

// load runs workers that keep the backend busy with every kind of
// operation, checking each result, until stop is closed. Errors that are
// not transient (backends.Retryable) fail the test: a wrong plaintext, a
// decryption failure or a "not found" during a fault would mean the backend
// confused keys or sessions.
type load struct {
	b       *pkcs11.Backend
	k       keys
	pub     *ecdsa.PublicKey
	ops     atomic.Int64
	errs    atomic.Int64
	tick    chan struct{} // receives a value every tickEvery operations
	pause   sync.RWMutex  // workers hold it for reading around each backend call
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	unknown []error
}

const tickEvery = 50

func startLoad(t *testing.T, ctx context.Context, b *pkcs11.Backend, k keys, workers int) *load {
	pub, err := b.PublicKey(ctx, k.ecdsa)
	if err != nil {
		t.Fatal(err)
	}
	l := &load{b: b, k: k, pub: pub.(*ecdsa.PublicKey), tick: make(chan struct{}, 1), stop: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				err := l.op(ctx, w, i)
				if err != nil {
					l.errs.Add(1)
					if !backends.Retryable(err) {
						l.mu.Lock()
						l.unknown = append(l.unknown, err)
						l.mu.Unlock()
					}
				}
				if l.ops.Add(1)%tickEvery == 0 {
					select {
					case l.tick <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	return l
}

// op performs one checked operation, chosen by worker and round. Each
// backend call holds pause for reading, so a fault is injected between
// calls, never during one: SoftHSM frees a session closed by another thread
// while it is inside a call on it (use after free; it was seen returning a
// wrong HMAC), and C_Finalize during a call is undefined for any module.
func (l *load) op(ctx context.Context, w, i int) error {
	call := func(f func() error) error {
		l.pause.RLock()
		defer l.pause.RUnlock()
		return f()
	}
	msg := fmt.Appendf(nil, "worker %d round %d", w, i)
	switch (w + i) % 4 {
	case 0, 1:
		var ct []byte
		var pt *secret.Bytes
		err := call(func() (err error) { ct, err = l.b.Encrypt(ctx, l.k.aes, msg, msg[:6]); return err })
		if err != nil {
			return err
		}
		if err := call(func() (err error) { pt, err = l.b.Decrypt(ctx, l.k.aes, ct, msg[:6]); return err }); err != nil {
			return err
		}
		if !bytes.Equal(pt.Reveal(), msg) {
			return fmt.Errorf("round trip returned %q, want %q", pt.Reveal(), msg)
		}
	case 2:
		var tag *secret.Bytes
		if err := call(func() (err error) { tag, err = l.b.MAC(ctx, l.k.hmac, msg); return err }); err != nil {
			return err
		}
		if err := call(func() error { return l.b.VerifyMAC(ctx, l.k.hmac, msg, tag.Reveal()) }); err != nil {
			return err
		}
	case 3:
		d := sha256.Sum256(msg)
		var sig []byte
		if err := call(func() (err error) { sig, err = l.b.Sign(ctx, l.k.ecdsa, d[:]); return err }); err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(l.pub, d[:], sig) {
			return errors.New("signature does not verify")
		}
	}
	return nil
}

// waitTicks waits until the workers have done n more batches of operations.
func (l *load) waitTicks(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for range n {
		select {
		case <-l.tick:
		case <-ctx.Done():
			t.Fatalf("workers made no progress: %v", ctx.Err())
		}
	}
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	for _, err := range l.unknown {
		t.Errorf("non-transient error under fault: %v (code %s)", err, backends.CodeOf(err))
	}
	t.Logf("%d operations, %d transient errors during faults", l.ops.Load(), l.errs.Load())
}

// afterFault checks that every operation succeeds once the fault is over.
func afterFault(t *testing.T, ctx context.Context, l *load) {
	t.Helper()
	for i := range 40 {
		if err := l.op(ctx, 0, i); err != nil {
			t.Errorf("operation %d after recovery: %v", i, err)
		}
	}
	if err := l.b.Health(ctx); err != nil {
		t.Errorf("Health() after recovery = %v", err)
	}
}

// TestRecoverClosedSessions closes every session on the slot, from a second
// handle in this process, while workers are running (between their calls,
// see load.op): the backend must notice, open new sessions, log in again,
// re-resolve its key handles and carry on, without a restart.
func TestRecoverClosedSessions(t *testing.T) {
	tok := softhsmtest.New(t)
	reg := prometheus.NewRegistry()
	b := newBackend(t, tok, func(c *pkcs11.Config) { c.MaxSessions = 4; c.Metrics = reg })
	k := createKeys(t, b)
	r := newRaw(t, tok)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // a hang fails instead of blocking CI
	defer cancel()

	l := startLoad(t, ctx, b, k, 6)
	const faults = 5
	for range faults {
		l.waitTicks(t, ctx, 2)
		l.pause.Lock()
		if err := r.p.CloseAllSessions(r.slot); err != nil {
			t.Fatalf("C_CloseAllSessions: %v", err)
		}
		l.pause.Unlock()
	}
	l.waitTicks(t, ctx, 4)
	l.finish(t)
	afterFault(t, ctx, l)

	st := b.Stats()
	if st.SessionRecoveries+st.ObjectRecoveries == 0 {
		t.Errorf("Stats() = %+v; want session or object recoveries after %d faults", st, faults)
	}
	if st.Breaker != pkcs11.BreakerClosed {
		t.Errorf("breaker = %v, want closed", st.Breaker)
	}
	got := counter(t, reg, "keybroker_pkcs11_recoveries_total", map[string]string{"kind": "session", "result": "ok"}) +
		counter(t, reg, "keybroker_pkcs11_recoveries_total", map[string]string{"kind": "object", "result": "ok"})
	if got == 0 {
		t.Errorf("recoveries_total{result=ok} = 0, want > 0")
	}
}

// TestRecoverReinitializedModule finalises and initialises the module behind
// the backend's back (as a device reset would): every session, login and
// handle is void and handle numbers start again. As in every fault test the
// reset happens between backend calls (see load.op); the workers resume onto
// the stale state at once.
func TestRecoverReinitializedModule(t *testing.T) {
	tok := softhsmtest.New(t)
	reg := prometheus.NewRegistry()
	b := newBackend(t, tok, func(c *pkcs11.Config) { c.MaxSessions = 4; c.Metrics = reg })
	k := createKeys(t, b)
	r := newRaw(t, tok)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	l := startLoad(t, ctx, b, k, 6)
	const faults = 3
	for i := range faults {
		l.waitTicks(t, ctx, 2)
		l.pause.Lock()
		if err := r.p.Finalize(); err != nil {
			t.Fatalf("C_Finalize: %v", err)
		}
		if i%2 == 0 { // leave it finalised every other time: the backend must initialise it
			if err := r.p.Initialize(); err != nil {
				t.Fatalf("C_Initialize: %v", err)
			}
		}
		l.pause.Unlock()
	}
	l.waitTicks(t, ctx, 4)
	l.finish(t)
	afterFault(t, ctx, l)

	st := b.Stats()
	if st.ModuleRecoveries+st.SessionRecoveries == 0 {
		t.Errorf("Stats() = %+v; want module or session recoveries after %d resets", st, faults)
	}
	if n := counter(t, reg, "keybroker_pkcs11_recoveries_total", map[string]string{"kind": "module", "result": "ok"}); n == 0 {
		t.Errorf(`recoveries_total{kind="module",result="ok"} = 0, want > 0 (the module was left finalised)`)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestCircuitBreaker breaks the module for real (finalised, and SOFTHSM2_CONF
// pointing nowhere so that C_Initialize fails), drives the breaker open with
// failed recoveries, checks that it fails fast without touching the module,
// and that after the cool-down (on an injected clock) one probe brings the
// backend back.
func TestCircuitBreaker(t *testing.T) {
	tok := softhsmtest.New(t)
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	reg := prometheus.NewRegistry()
	const threshold, cooldown = 2, time.Minute
	b := newBackend(t, tok, func(c *pkcs11.Config) {
		c.BreakerThreshold, c.BreakerCooldown, c.Now, c.Metrics = threshold, cooldown, clock.Now, reg
	})
	k := createKeys(t, b)
	ctx := t.Context()
	if _, err := b.Encrypt(ctx, k.aes, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}

	r := newRaw(t, tok)
	t.Setenv("SOFTHSM2_CONF", tok.Dir+"/missing.conf")
	if err := r.p.Finalize(); err != nil {
		t.Fatalf("C_Finalize: %v", err)
	}
	for i := range threshold {
		_, err := b.Encrypt(ctx, k.aes, []byte("x"), nil)
		wantKind(t, fmt.Sprintf("Encrypt %d with the module broken", i), err, backends.ErrUnavailable)
		if !backends.Retryable(err) {
			t.Errorf("Retryable(%v) = false, want true", err)
		}
		var rv p11.Error
		if !errors.As(err, &rv) {
			t.Errorf("error %v does not carry the pkcs11.Error", err)
		}
	}
	st := b.Stats()
	if st.Breaker != pkcs11.BreakerOpen || st.FailedRecoveries != threshold {
		t.Fatalf("after %d failed recoveries Stats() = %+v; want breaker open, %d failed recoveries", threshold, st, threshold)
	}
	if got := gauge(t, reg, "keybroker_pkcs11_breaker_state"); got != float64(pkcs11.BreakerOpen) {
		t.Errorf("breaker_state gauge = %v, want %d", got, pkcs11.BreakerOpen)
	}

	// Open: fail fast, no recovery attempted.
	clock.Advance(cooldown / 2)
	_, err := b.MAC(ctx, k.hmac, []byte("x"))
	wantKind(t, "MAC with the breaker open", err, backends.ErrUnavailable)
	if err := b.Health(ctx); !errors.Is(err, backends.ErrUnavailable) {
		t.Errorf("Health() with the breaker open = %v, want ErrUnavailable", err)
	}
	if got := b.Stats().FailedRecoveries; got != threshold {
		t.Errorf("FailedRecoveries = %d while open, want %d (no recovery attempts)", got, threshold)
	}

	// Half-open with the module still broken: the probe fails, open again.
	clock.Advance(cooldown)
	if got := b.Stats().Breaker; got != pkcs11.BreakerHalfOpen {
		t.Errorf("breaker after the cool-down = %v, want half-open", got)
	}
	_, err = b.Encrypt(ctx, k.aes, []byte("x"), nil)
	wantKind(t, "Encrypt probe with the module broken", err, backends.ErrUnavailable)
	if got := b.Stats().Breaker; got != pkcs11.BreakerOpen {
		t.Errorf("breaker after a failed probe = %v, want open", got)
	}

	// Repair the module; after the next cool-down the probe succeeds.
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	_, err = b.Encrypt(ctx, k.aes, []byte("x"), nil)
	wantKind(t, "Encrypt before the cool-down ends", err, backends.ErrUnavailable)
	clock.Advance(cooldown)
	ct, err := b.Encrypt(ctx, k.aes, []byte("back"), nil)
	if err != nil {
		t.Fatalf("Encrypt probe after repair: %v", err)
	}
	if pt, err := b.Decrypt(ctx, k.aes, ct, nil); err != nil || string(pt.Reveal()) != "back" {
		t.Errorf("Decrypt after recovery = %v, %v", pt, err)
	}
	st = b.Stats()
	if st.Breaker != pkcs11.BreakerClosed || st.ModuleRecoveries == 0 {
		t.Errorf("Stats() after recovery = %+v; want breaker closed and a module recovery", st)
	}
	if got := gauge(t, reg, "keybroker_pkcs11_breaker_state"); got != float64(pkcs11.BreakerClosed) {
		t.Errorf("breaker_state gauge = %v, want %d", got, pkcs11.BreakerClosed)
	}
}
