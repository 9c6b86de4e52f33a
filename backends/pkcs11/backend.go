package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

// Capabilities, asserted at compile time.
var (
	_ backends.Backend           = (*Backend)(nil)
	_ backends.MACer             = (*Backend)(nil)
	_ backends.Signer            = (*Backend)(nil)
	_ backends.KeyCreator        = (*Backend)(nil)
	_ backends.CreatesAlgorithms = (*Backend)(nil)
	_ backends.DataKeyGenerator  = (*Backend)(nil)
	_ backends.HealthChecker     = (*Backend)(nil)
)

// AES-GCM parameters of Encrypt's ciphertexts: iv ‖ ciphertext ‖ tag.
const (
	gcmIVLen  = 12
	gcmTagLen = 16
)

// maxAttempts bounds the tries of one operation: the first, and up to two
// retries after recoveries (at most one of which re-initialises the module).
const maxAttempts = 3

// Backend is a PKCS#11 token used as a root of trust. It is safe for
// concurrent use; see the package documentation for its concurrency model.
type Backend struct {
	cfg   Config // without PIN
	pin   *secret.Bytes
	log   *slog.Logger
	mod   *module
	met   *metrics
	br    *breaker
	pool  *pool
	keys  sync.Map // key name → *keyEntry
	slot  atomic.Uint64
	gen   atomic.Uint64 // module generation the slot and login were last checked at
	token string

	syncMu   chan struct{} // a mutex whose wait honours contexts; guards login
	login    *session      // kept open so the login persists
	createMu chan struct{} // serialises CreateKey's check-then-create

	closed    atomic.Bool
	closeOnce sync.Once

	recoveries [4]atomic.Int64 // by recovery kind, successful
	failed     atomic.Int64    // failed recoveries
}

// Stats is a snapshot of a backend's pool, recoveries and breaker, for
// tests and diagnostics (the same figures are exported as metrics).
type Stats struct {
	SessionsOpen  int // pool sessions open, excluding the login session
	SessionsInUse int
	Waiters       int
	// Recoveries by kind that completed, and recoveries that failed.
	ObjectRecoveries, SessionRecoveries, ModuleRecoveries, FailedRecoveries int
	Breaker                                                                 BreakerState
}

// Stats reports the backend's current figures.
func (b *Backend) Stats() Stats {
	return Stats{
		SessionsOpen:      int(b.pool.nOpen.Load()),
		SessionsInUse:     int(b.pool.nInUse.Load()),
		Waiters:           int(b.pool.nWaiting.Load()),
		ObjectRecoveries:  int(b.recoveries[recoverObject].Load()),
		SessionRecoveries: int(b.recoveries[recoverSession].Load()),
		ModuleRecoveries:  int(b.recoveries[recoverModule].Load()),
		FailedRecoveries:  int(b.failed.Load()),
		Breaker:           b.br.State(),
	}
}

// New loads the module (once per process), finds the token, logs in and
// returns a backend over it.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, wrapErr(opOpen, "", err)
	}
	mod, err := acquireModule(cfg.ModulePath)
	if err != nil {
		if _, ok := rvOf(err); ok { // C_Initialize failed
			return nil, wrapErr(opOpen, "", err)
		}
		// The library could not be loaded: a configuration error.
		return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
	}
	b := &Backend{
		cfg:      cfg,
		pin:      cfg.PIN.Clone(),
		log:      cfg.Logger,
		mod:      mod,
		token:    cfg.tokenName(),
		syncMu:   make(chan struct{}, 1),
		createMu: make(chan struct{}, 1),
	}
	b.cfg.PIN = nil
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.log = b.log.With("backend", scheme, "token", b.token)
	if b.met, err = newMetrics(cfg.Metrics, b.token); err != nil {
		mod.release()
		return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, fmt.Errorf("registering metrics: %w", err))
	}
	threshold, cooldown, now := cfg.BreakerThreshold, cfg.BreakerCooldown, cfg.Now
	if threshold == 0 {
		threshold = DefaultBreakerThreshold
	}
	if cooldown == 0 {
		cooldown = DefaultBreakerCooldown
	}
	if now == nil {
		now = time.Now
	}
	b.br = newBreaker(threshold, cooldown, now, b.breakerChanged)
	b.pool = newPool(cfg.maxSessions(), b.openSession, b.dropSession, b.met.gauges())
	if err := b.sync(ctx, true); err != nil {
		mod.closeSessions(b.login)
		mod.release()
		b.pin.Destroy()
		if errors.Is(err, errNoToken) {
			return nil, backends.NewError(scheme, opOpen, "", backends.ErrNotFound, err)
		}
		if errors.Is(err, errAmbiguousToken) {
			return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
		}
		return nil, wrapErr(opOpen, "", err)
	}
	b.met.breaker(BreakerClosed)
	b.log.Debug("pkcs11: opened", "config", cfg)
	return b, nil
}

// lock and unlock make a one-slot channel a mutex whose wait honours ctx.
func lock(ctx context.Context, mu chan struct{}) error {
	select {
	case mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func unlock(mu chan struct{}) { <-mu }

// sync brings the backend up to the module's generation: it finds the
// token's slot again, flushes cached key handles and makes sure the login
// session is open and logged in. It runs at open and after any recovery.
func (b *Backend) sync(ctx context.Context, force bool) error {
	if err := lock(ctx, b.syncMu); err != nil {
		return err
	}
	defer unlock(b.syncMu)
	if b.closed.Load() { // Close holds syncMu after setting closed
		return errClosed
	}
	for range 3 {
		g := b.mod.gen.Load()
		if !force && b.gen.Load() == g {
			return nil
		}
		force = false
		if err := ctx.Err(); err != nil {
			return err
		}
		slot, err := b.mod.findSlot(&b.cfg)
		if err != nil {
			return err
		}
		b.slot.Store(uint64(slot))
		b.keys.Clear()
		if err := b.ensureLogin(slot); err != nil {
			return err
		}
		// Opening the login session may itself have moved the generation
		// (it found a re-issued handle); if so go round once more.
		if b.mod.gen.Load() == g {
			b.gen.Store(g)
			return nil
		}
	}
	b.gen.Store(b.mod.gen.Load())
	return nil
}

// ensureLogin (under syncMu) keeps the login session open and logged in.
func (b *Backend) ensureLogin(slot uint) error {
	if b.login != nil && !b.login.dead.Load() {
		b.mod.gate.RLock()
		err := error(nil)
		if !b.login.dead.Load() {
			err = b.mod.p.Login(b.login.h, pkcs11.CKU_USER, string(b.pin.Reveal()))
			if rv, ok := rvOf(err); ok && rv == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
				err = nil
			}
		}
		dead := b.login.dead.Load()
		b.mod.gate.RUnlock()
		if err == nil && !dead {
			return nil
		}
		if recoveryFor(err) != recoverSession && !dead {
			return ck("C_Login", err)
		}
		// The login session is gone: open another.
	}
	s, err := b.mod.openSession(slot, string(b.pin.Reveal()))
	if err != nil {
		return err
	}
	b.login = s
	return nil
}

func (b *Backend) openSession() (*session, error) {
	return b.mod.openSession(uint(b.slot.Load()), string(b.pin.Reveal()))
}

func (b *Backend) dropSession(s *session) { b.mod.closeSessions(s) }

func (b *Backend) breakerChanged(s BreakerState) {
	b.met.breaker(s)
	switch s {
	case BreakerOpen:
		b.log.Error("pkcs11: circuit breaker open: failing fast", "cooldown", b.br.cooldown)
	default:
		b.log.Info("pkcs11: circuit breaker " + s.String())
	}
}

// exec runs fn on a pooled session, recovering and retrying after failures
// that a new session, fresh handles or a re-initialised module can fix.
func (b *Backend) exec(ctx context.Context, op, key string, fn func(c *conn) error) error {
	err := wrapErr(op, key, b.exec1(ctx, op, key, fn))
	b.met.count(op, err)
	return err
}

func (b *Backend) exec1(ctx context.Context, op, key string, fn func(c *conn) error) error {
	if b.closed.Load() {
		return backends.NewError(scheme, op, key, backends.ErrUnavailable, errClosed)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	probe, ok := b.br.allow()
	if !ok {
		return backends.NewError(scheme, op, key, backends.ErrUnavailable, errBreakerOpen)
	}
	var (
		err             error
		reinitialised   bool
		recoveryFailure bool
	)
	for attempt := 1; ; attempt++ {
		var seen uint64
		seen, err = b.attempt(ctx, op, fn)
		r := recoveryFor(err)
		if r == recoverNone || attempt == maxAttempts || (r == recoverModule && reinitialised) || ctx.Err() != nil || b.closed.Load() {
			if r == recoverModule {
				recoveryFailure = true // the module is still failing after what we could do
			}
			break
		}
		if rerr := b.recover(ctx, r, seen, err); rerr != nil {
			// A recovery cut short by the caller's context proves nothing.
			err, recoveryFailure = rerr, ctx.Err() == nil
			break
		}
		reinitialised = reinitialised || r == recoverModule
	}
	switch {
	case recoveryFailure:
		b.br.failure(probe)
	case err == nil, !backends.Retryable(wrapErr(op, "", err)) && ctx.Err() == nil:
		// The token answered (a wrong key or a bad tag is an answer).
		b.br.success(probe)
	default:
		b.br.release(probe)
	}
	return err
}

// attempt runs fn once. seen is the module generation fn ran at, which the
// recovery compares against so that concurrent failures recover once.
func (b *Backend) attempt(ctx context.Context, op string, fn func(c *conn) error) (seen uint64, err error) {
	seen = b.mod.gen.Load()
	if b.gen.Load() != seen {
		if err := b.sync(ctx, false); err != nil {
			return seen, err
		}
	}
	start := time.Now()
	var s *session
	for {
		if s, err = b.pool.get(ctx); err != nil {
			b.met.observeWait(time.Since(start))
			return seen, err
		}
		b.mod.gate.RLock()
		if !s.dead.Load() {
			break
		}
		// Killed by a sweep or re-init since it went idle: forget it.
		b.mod.gate.RUnlock()
		b.pool.put(s)
	}
	ran := time.Now()
	b.met.observeWait(ran.Sub(start))
	c := conn{ctx: ctx, p: b.mod.p, m: b.mod, s: s, gen: b.mod.gen.Load()}
	seen = c.gen
	err = fn(&c)
	b.mod.gate.RUnlock()
	b.pool.put(s)
	b.met.observeOp(op, time.Since(ran))
	return seen, err
}

// recover repairs what cause showed broken. It returns an error only when
// the repair itself failed.
func (b *Backend) recover(ctx context.Context, r recovery, seen uint64, cause error) error {
	b.log.Warn("pkcs11: recovering", "kind", r.String(), "cause", cause)
	var err error
	switch r {
	case recoverObject:
		b.mod.invalidateObjects(seen)
	case recoverSession:
		b.mod.sweep(seen)
	case recoverModule:
		if err = b.mod.reinit(seen); err == nil {
			err = b.sync(ctx, true)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			b.failed.Add(1)
			b.met.recovery(r, false)
			b.log.Error("pkcs11: recovery failed", "kind", r.String(), "err", err)
		}
		return err
	}
	b.recoveries[r].Add(1)
	b.met.recovery(r, true)
	return nil
}

// Close closes the backend's sessions, waiting for operations in flight,
// and finalises the module when no other backend in the process uses it.
// Calls after Close fail with ErrUnavailable.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.pool.close()
		_ = lock(context.Background(), b.syncMu)
		b.mod.closeSessions(b.login)
		b.login = nil
		unlock(b.syncMu)
		b.mod.release()
		b.pin.Destroy()
	})
	return nil
}
