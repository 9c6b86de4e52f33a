package pkcs11

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// A PKCS#11 module is process-global state in C: C_Initialize and
// C_Finalize act on the whole process, session and object handles are
// numbers in one space shared by every user of the module, and the login
// state is per process and token. modules mirrors that: one *module per
// loaded library, reference-counted by the backends that use it, so that two
// backends on one module (two tokens, or one token opened twice) neither
// finalise the module under each other nor confuse each other's handles.
// It is the package's only global state, and it exists because the C
// library's does.
var modules = struct {
	mu sync.Mutex
	m  map[string]*module
}{m: make(map[string]*module)}

// session is one PKCS#11 session handle. dead is set (under the module's
// gate write lock) when the handle is known to be invalid or re-issued; a
// dead session is dropped, never closed, because its number may now belong
// to another session.
type session struct {
	h    pkcs11.SessionHandle
	dead atomic.Bool
	// poisoned is set by the holder when an operation may still be active
	// on the session; release closes it instead of pooling it.
	poisoned bool
}

// module is one loaded PKCS#11 library.
//
// gate serialises handle lifetimes against their use. Every sequence of
// calls on a session runs under gate.RLock; opening sessions, sweeping dead
// ones, re-initialising and closing run under gate.Lock. So when a session
// is opened no call is in flight anywhere in the process, and if the module
// hands out a number we still hold (because the old session was closed or
// the module re-initialised behind our back) the stale holder is marked dead
// before it can issue a call on someone else's session.
type module struct {
	path string
	p    *pkcs11.Ctx
	// monotonic is true for modules (SoftHSM) that number sessions and
	// objects from one counter that only restarts when the module is
	// initialised again: a handle at or below the highest seen then proves
	// a re-initialisation.
	monotonic bool

	refs int // under modules.mu

	gate sync.RWMutex
	// gen changes (under gate.Lock) whenever cached object handles or the
	// login may have become invalid; backends compare it with their own.
	gen atomic.Uint64
	// maxHandle is the highest session or object handle seen since the
	// module was initialised (monotonic modules only).
	maxHandle atomic.Uint64
	// Under gate.Lock:
	initialized bool
	live        map[pkcs11.SessionHandle]*session
}

// acquireModule loads (once per process) and initialises the module at path.
func acquireModule(path string) (*module, error) {
	key := filepath.Clean(path)
	if real, err := filepath.EvalSymlinks(key); err == nil {
		key = real
	}
	modules.mu.Lock()
	defer modules.mu.Unlock()
	m := modules.m[key]
	if m == nil {
		p := pkcs11.New(key)
		if p == nil {
			return nil, fmt.Errorf("cannot load PKCS#11 module %s (dlopen or C_GetFunctionList failed)", path)
		}
		m = &module{path: key, p: p, live: make(map[pkcs11.SessionHandle]*session)}
		modules.m[key] = m
	}
	m.gate.Lock()
	defer m.gate.Unlock()
	if !m.initialized {
		if err := m.initializeLocked(); err != nil {
			return nil, err
		}
	}
	m.refs++
	return m, nil
}

// release drops a reference; the last one finalises the module. The
// library stays loaded: unloading a module that registered OpenSSL or
// thread-local state is not reliably safe, and reloading it is pointless.
func (m *module) release() {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	m.gate.Lock()
	defer m.gate.Unlock()
	m.killAllLocked()
	if m.initialized {
		_ = m.p.Finalize()
		m.initialized = false
	}
}

// initializeLocked calls C_Initialize. CKR_CRYPTOKI_ALREADY_INITIALIZED is
// success: another user in the process initialised the module.
func (m *module) initializeLocked() error {
	err := m.p.Initialize()
	if rv, ok := rvOf(err); ok && rv == pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		err = nil
	}
	if err != nil {
		return ck("C_Initialize", err)
	}
	m.initialized = true
	m.maxHandle.Store(0)
	if info, err := m.p.GetInfo(); err == nil {
		m.monotonic = strings.HasPrefix(info.ManufacturerID, "SoftHSM")
	}
	return nil
}

// killAllLocked marks every session dead and forgets them; their numbers
// are no longer ours.
func (m *module) killAllLocked() {
	for h, s := range m.live {
		s.dead.Store(true)
		delete(m.live, h)
	}
	m.gen.Add(1)
}

// reinit finalises and initialises the module again, unless another
// recovery already did so since the caller saw generation seen.
func (m *module) reinit(seen uint64) error {
	m.gate.Lock()
	defer m.gate.Unlock()
	if m.gen.Load() != seen && m.initialized {
		return nil
	}
	m.killAllLocked()
	if m.initialized {
		// C_Finalize may fail if someone else finalised the module; the
		// C_Initialize below is what matters.
		_ = m.p.Finalize()
		m.initialized = false
	}
	return m.initializeLocked()
}

// sweep probes every live session after one was found closed, marks the
// invalid ones dead and moves to a new generation (so backends flush handle
// caches and log in again), unless another sweep or re-init did since seen.
func (m *module) sweep(seen uint64) {
	m.gate.Lock()
	defer m.gate.Unlock()
	if m.gen.Load() != seen {
		return
	}
	for h, s := range m.live {
		if _, err := m.p.GetSessionInfo(h); err != nil {
			s.dead.Store(true)
			delete(m.live, h)
		}
	}
	m.gen.Add(1)
}

// invalidateObjects moves to a new generation after a stale object handle,
// unless that already happened since seen.
func (m *module) invalidateObjects(seen uint64) {
	m.gate.Lock()
	defer m.gate.Unlock()
	if m.gen.Load() == seen {
		m.gen.Add(1)
	}
}

// noteHandle records a handle the module returned (monotonic modules).
func (m *module) noteHandle(h uint) {
	if !m.monotonic {
		return
	}
	for {
		cur := m.maxHandle.Load()
		if uint64(h) <= cur || m.maxHandle.CompareAndSwap(cur, uint64(h)) {
			return
		}
	}
}

// errNotInitialized is returned, as a Cryptoki error, when a call needs the
// module while a failed recovery left it finalised.
var errNotInitialized = &callError{fn: "C_OpenSession", rv: pkcs11.Error(pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED)}

// openSession opens a read-write session on slot and logs the user in on it
// (CKR_USER_ALREADY_LOGGED_IN is success: the login is per process, so this
// is cheap once any session is logged in, and makes every new session usable
// even if the login was lost since the last one).
func (m *module) openSession(slot uint, pin string) (*session, error) {
	m.gate.Lock()
	defer m.gate.Unlock()
	if !m.initialized {
		return nil, errNotInitialized
	}
	h, err := m.p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, ck("C_OpenSession", err)
	}
	switch old := m.live[h]; {
	case old != nil:
		// The module re-issued a number we hold: that session was closed
		// behind our back (C_CloseAllSessions, or a re-initialisation).
		old.dead.Store(true)
		delete(m.live, h)
		m.gen.Add(1)
	case m.monotonic && uint64(h) <= m.maxHandle.Load():
		// The handle counter went back: the module was finalised and
		// initialised behind our back. Every session and object handle we
		// hold is void, and their numbers will be re-issued.
		m.killAllLocked()
	}
	m.maxHandle.Store(max(m.maxHandle.Load(), uint64(h)))
	s := &session{h: h}
	if err := m.p.Login(h, pkcs11.CKU_USER, pin); err != nil {
		if rv, ok := rvOf(err); !ok || rv != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			_ = m.p.CloseSession(h)
			return nil, ck("C_Login", err)
		}
	}
	m.live[h] = s
	return s, nil
}

// closeSessions closes sessions we own. Dead ones are only forgotten.
func (m *module) closeSessions(ss ...*session) {
	m.gate.Lock()
	defer m.gate.Unlock()
	for _, s := range ss {
		if s == nil {
			continue
		}
		if !s.dead.Load() && m.live[s.h] == s {
			_ = m.p.CloseSession(s.h)
			delete(m.live, s.h)
		}
		s.dead.Store(true)
	}
}

// findSlot returns the slot holding the token cfg selects.
func (m *module) findSlot(cfg *Config) (uint, error) {
	m.gate.RLock()
	defer m.gate.RUnlock()
	slots, err := m.p.GetSlotList(true)
	if err != nil {
		return 0, ck("C_GetSlotList", err)
	}
	var found []uint
	var labels []string
	for _, slot := range slots {
		if cfg.SlotID != nil && *cfg.SlotID != slot {
			continue
		}
		ti, err := m.p.GetTokenInfo(slot)
		if err != nil {
			continue // a slot whose token vanished meanwhile
		}
		label := strings.TrimRight(ti.Label, " \x00")
		labels = append(labels, fmt.Sprintf("%q", label))
		switch {
		case cfg.TokenLabel != "" && label != cfg.TokenLabel,
			cfg.TokenSerial != "" && strings.TrimRight(ti.SerialNumber, " \x00") != cfg.TokenSerial,
			cfg.TokenManufacturer != "" && strings.TrimRight(ti.ManufacturerID, " \x00") != cfg.TokenManufacturer,
			cfg.TokenModel != "" && strings.TrimRight(ti.Model, " \x00") != cfg.TokenModel:
			continue
		}
		found = append(found, slot)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return 0, fmt.Errorf("%w: no token matches %s (tokens present: %s)", errNoToken, cfg.tokenName(), strings.Join(labels, ", "))
	}
	return 0, fmt.Errorf("%w: %d tokens match %s; add serial= to choose one", errAmbiguousToken, len(found), cfg.tokenName())
}

var (
	errNoToken        = errors.New("token not found")
	errAmbiguousToken = errors.New("token selection is ambiguous")
)
