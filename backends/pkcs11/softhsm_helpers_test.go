package pkcs11_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/secret"
)

// newBackend opens a backend on tok through New; edit adjusts the config.
// The backend is closed when the test ends.
func newBackend(t testing.TB, tok *softhsmtest.Token, edit func(*pkcs11.Config)) *pkcs11.Backend {
	t.Helper()
	cfg := pkcs11.Config{
		ModulePath: tok.ModulePath,
		TokenLabel: tok.Label,
		PIN:        secret.Copy([]byte(tok.PIN)),
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := pkcs11.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("pkcs11.New(%v) error: %v", cfg, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// keys are the fixture's key labels.
type keys struct {
	aes, aes2, hmac, hmac2, ecdsa string
}

var fixtureKeys = keys{aes: "aes-1", aes2: "aes-2", hmac: "hmac-1", hmac2: "hmac-2", ecdsa: "ecdsa-1"}

// createKeys creates the fixture's keys with the backend's CreateKey.
func createKeys(t testing.TB, b *pkcs11.Backend) keys {
	t.Helper()
	k := fixtureKeys
	for _, c := range []struct {
		name string
		alg  backends.Algorithm
	}{
		{k.aes, backends.AES256}, {k.aes2, backends.AES256},
		{k.hmac, backends.HMAC256}, {k.hmac2, backends.HMAC256},
		{k.ecdsa, backends.ECDSAP256},
	} {
		if _, err := b.CreateKey(t.Context(), c.name, c.alg); err != nil {
			t.Fatalf("CreateKey(%q, %s) error: %v", c.name, c.alg, err)
		}
	}
	return k
}

// raw is a second, independent miekg/pkcs11 handle on the same module in
// this process: the way tests act on the token behind the backend's back.
// It never finalises the module unless a test says so.
type raw struct {
	p    *p11.Ctx
	slot uint
}

func newRaw(t testing.TB, tok *softhsmtest.Token) *raw {
	t.Helper()
	p := p11.New(tok.ModulePath)
	if p == nil {
		t.Fatalf("cannot load %s", tok.ModulePath)
	}
	t.Cleanup(p.Destroy)
	if err := p.Initialize(); err != nil && !isRV(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatalf("C_Initialize: %v", err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatalf("C_GetSlotList: %v", err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimRight(ti.Label, " ") == tok.Label {
			return &raw{p: p, slot: s}
		}
	}
	t.Fatalf("no token labelled %q", tok.Label)
	return nil
}

func isRV(err error, rv uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// session opens a logged-in session, closed when the test ends.
func (r *raw) session(t testing.TB, pin string) p11.SessionHandle {
	t.Helper()
	h, err := r.p.OpenSession(r.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("C_OpenSession: %v", err)
	}
	t.Cleanup(func() { _ = r.p.CloseSession(h) })
	if err := r.p.Login(h, p11.CKU_USER, pin); err != nil && !isRV(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		t.Fatalf("C_Login: %v", err)
	}
	return h
}

// find returns the handles of the objects labelled label.
func (r *raw) find(t testing.TB, h p11.SessionHandle, label string, class uint) p11.ObjectHandle {
	t.Helper()
	if err := r.p.FindObjectsInit(h, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label), p11.NewAttribute(p11.CKA_CLASS, class)}); err != nil {
		t.Fatal(err)
	}
	hs, _, err := r.p.FindObjects(h, 2)
	_ = r.p.FindObjectsFinal(h)
	if err != nil || len(hs) != 1 {
		t.Fatalf("find %q: %v, %v; want one object", label, hs, err)
	}
	return hs[0]
}

// wantKind fails unless err is a *backends.Error of the given kind.
func wantKind(t testing.TB, what string, err, kind error) {
	t.Helper()
	var be *backends.Error
	switch {
	case err == nil:
		t.Errorf("%s: err = nil, want %v", what, kind)
	case !errors.As(err, &be):
		t.Errorf("%s: err = %v (%T), want a *backends.Error", what, err, err)
	case !errors.Is(err, kind):
		t.Errorf("%s: err = %v (code %s), want %v", what, err, backends.CodeOf(err), kind)
	}
}

// nameGen returns fresh labels.
func nameGen(prefix string) func() string {
	n := 0
	return func() string {
		n++
		return fmt.Sprintf("%s-%d", prefix, n)
	}
}
