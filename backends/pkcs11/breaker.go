package pkcs11

import (
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is the circuit breaker's state.
type BreakerState int32

// Breaker states, also the value of the breaker-state gauge.
const (
	// BreakerClosed: calls go through; failed recoveries are counted.
	BreakerClosed BreakerState = 0
	// BreakerHalfOpen: the cool-down is over; one call at a time probes the
	// token, the others fail fast.
	BreakerHalfOpen BreakerState = 1
	// BreakerOpen: calls fail fast with ErrUnavailable until the cool-down
	// ends.
	BreakerOpen BreakerState = 2
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// breaker stops the backend from hammering a token that repeated recoveries
// could not bring back. It counts consecutive failed recoveries; at threshold
// it opens for cooldown, during which calls fail fast; then it lets one probe
// through (half-open). A probe that succeeds closes it, one whose recovery
// fails opens it again.
//
// The closed state is read with one atomic load, so the breaker costs nothing
// on the hot path while the token is healthy.
type breaker struct {
	now       func() time.Time
	threshold int
	cooldown  time.Duration
	onChange  func(BreakerState)

	state    atomic.Int32 // BreakerState, written under mu
	failures atomic.Int32 // consecutive failed recoveries, written under mu

	mu       sync.Mutex
	openedAt time.Time
	probing  bool
}

func newBreaker(threshold int, cooldown time.Duration, now func() time.Time, onChange func(BreakerState)) *breaker {
	if onChange == nil {
		onChange = func(BreakerState) {}
	}
	return &breaker{now: now, threshold: threshold, cooldown: cooldown, onChange: onChange}
}

// State reports the current state, moving open to half-open when the
// cool-down is over.
func (br *breaker) State() BreakerState {
	s := BreakerState(br.state.Load())
	if s != BreakerOpen {
		return s
	}
	br.mu.Lock()
	defer br.mu.Unlock()
	br.maybeHalfOpen()
	return BreakerState(br.state.Load())
}

func (br *breaker) maybeHalfOpen() {
	if BreakerState(br.state.Load()) == BreakerOpen && !br.now().Before(br.openedAt.Add(br.cooldown)) {
		br.set(BreakerHalfOpen)
	}
}

func (br *breaker) set(s BreakerState) {
	if BreakerState(br.state.Swap(int32(s))) != s {
		br.onChange(s)
	}
}

// allow reports whether a call may proceed. probe is true when the call is
// the half-open probe, which must be followed by exactly one of success,
// failure or release.
func (br *breaker) allow() (probe bool, ok bool) {
	if BreakerState(br.state.Load()) == BreakerClosed {
		return false, true
	}
	br.mu.Lock()
	defer br.mu.Unlock()
	br.maybeHalfOpen()
	switch BreakerState(br.state.Load()) {
	case BreakerClosed:
		return false, true
	case BreakerHalfOpen:
		if br.probing {
			return false, false
		}
		br.probing = true
		return true, true
	}
	return false, false
}

// success records that the token answered: the breaker closes.
func (br *breaker) success(probe bool) {
	if !probe && BreakerState(br.state.Load()) == BreakerClosed && br.failures.Load() == 0 {
		return
	}
	br.mu.Lock()
	defer br.mu.Unlock()
	if probe {
		br.probing = false
	}
	br.failures.Store(0)
	br.set(BreakerClosed)
}

// failure records a failed recovery.
func (br *breaker) failure(probe bool) {
	br.mu.Lock()
	defer br.mu.Unlock()
	if probe {
		br.probing = false
	}
	n := br.failures.Add(1)
	if probe || BreakerState(br.state.Load()) == BreakerHalfOpen || int(n) >= br.threshold {
		br.openedAt = br.now()
		br.set(BreakerOpen)
	}
}

// release ends a probe that gave no verdict (its context was cancelled, or
// it failed for a reason unrelated to the token's health).
func (br *breaker) release(probe bool) {
	if !probe {
		return
	}
	br.mu.Lock()
	br.probing = false
	br.mu.Unlock()
}
