package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	p11 "github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// TestRefusesUnprotectedKeys creates keys behind the broker's back that
// SoftHSM allows but the broker must not use as roots: extractable, or not
// sensitive.
func TestRefusesUnprotectedKeys(t *testing.T) {
	tok := softhsmtest.New(t)
	b := newBackend(t, tok, nil)
	r := newRaw(t, tok)
	h := r.session(t, tok.PIN)
	for _, tc := range []struct {
		label                  string
		extractable, sensitive bool
		want                   error
	}{
		{"extractable", true, true, backends.ErrPermissionDenied},
		{"readable", false, false, backends.ErrPermissionDenied},
		{"extractable-readable", true, false, backends.ErrPermissionDenied},
		{"protected", false, true, nil},
	} {
		t.Run(tc.label, func(t *testing.T) {
			_, err := r.p.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_TOKEN, true),
				p11.NewAttribute(p11.CKA_PRIVATE, true),
				p11.NewAttribute(p11.CKA_LABEL, tc.label),
				p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
				p11.NewAttribute(p11.CKA_ENCRYPT, true),
				p11.NewAttribute(p11.CKA_DECRYPT, true),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, tc.extractable),
				p11.NewAttribute(p11.CKA_SENSITIVE, tc.sensitive),
			})
			if err != nil {
				t.Fatalf("C_GenerateKey: %v", err)
			}
			_, err = b.Describe(t.Context(), tc.label)
			_, encErr := b.Encrypt(t.Context(), tc.label, []byte("x"), nil)
			if tc.want == nil {
				if err != nil || encErr != nil {
					t.Errorf("Describe, Encrypt(%q) = %v, %v; want success", tc.label, err, encErr)
				}
				return
			}
			wantKind(t, fmt.Sprintf("Describe(%q)", tc.label), err, tc.want)
			wantKind(t, fmt.Sprintf("Encrypt(%q)", tc.label), encErr, tc.want)
		})
	}
}

// TestRequireNeverExtractable refuses a key that is non-extractable now but
// was imported in clear.
func TestRequireNeverExtractable(t *testing.T) {
	tok := softhsmtest.New(t)
	strict := newBackend(t, tok, func(c *pkcs11.Config) { c.RequireNeverExtractable = true })
	r := newRaw(t, tok)
	h := r.session(t, tok.PIN)
	_, err := r.p.CreateObject(h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_LABEL, "imported"),
		p11.NewAttribute(p11.CKA_VALUE, bytes.Repeat([]byte{7}, 32)),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
	})
	if err != nil {
		t.Fatalf("C_CreateObject: %v", err)
	}
	_, err = strict.Describe(t.Context(), "imported")
	wantKind(t, "strict Describe(imported)", err, backends.ErrPermissionDenied)
	if _, err := strict.CreateKey(t.Context(), "generated", backends.AES256); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if _, err := strict.Describe(t.Context(), "generated"); err != nil {
		t.Errorf("strict Describe(generated) = %v, want success: generated keys were never extractable", err)
	}
}

func TestKWP(t *testing.T) {
	tok := softhsmtest.New(t)
	b := newBackend(t, tok, nil)
	k := createKeys(t, b)
	ctx := t.Context()
	for _, n := range []int{8, 16, 32, 64, backends.MaxEncryptInput} {
		material := bytes.Repeat([]byte{byte(n)}, n)
		w, err := b.WrapKWP(ctx, k.aes, material)
		if err != nil {
			t.Fatalf("WrapKWP(%d bytes) error: %v", n, err)
		}
		if want := n + 8; len(w) != want {
			t.Errorf("WrapKWP(%d bytes) = %d bytes, want %d", n, len(w), want)
		}
		got, err := b.UnwrapKWP(ctx, k.aes, w)
		if err != nil {
			t.Fatalf("UnwrapKWP error: %v", err)
		}
		if !bytes.Equal(got.Reveal(), material) {
			t.Errorf("UnwrapKWP(WrapKWP(%d bytes)) = %d bytes, want the material back", n, got.Len())
		}
	}
	w, err := b.WrapKWP(ctx, k.aes, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(w)
	bad[5] ^= 1
	_, err = b.UnwrapKWP(ctx, k.aes, bad)
	wantKind(t, "UnwrapKWP of a tampered value", err, backends.ErrDecryptionFailed)
	_, err = b.UnwrapKWP(ctx, k.aes2, w)
	wantKind(t, "UnwrapKWP under another key", err, backends.ErrDecryptionFailed)
	for _, tc := range []struct {
		what string
		err  error
	}{
		{"WrapKWP of 19 bytes", func() error { _, err := b.WrapKWP(ctx, k.aes, make([]byte, 19)); return err }()},
		{"WrapKWP of 0 bytes", func() error { _, err := b.WrapKWP(ctx, k.aes, nil); return err }()},
		{"WrapKWP with an HMAC key", func() error { _, err := b.WrapKWP(ctx, k.hmac, make([]byte, 32)); return err }()},
		{"UnwrapKWP of 12 bytes", func() error { _, err := b.UnwrapKWP(ctx, k.aes, make([]byte, 12)); return err }()},
	} {
		wantKind(t, tc.what, tc.err, backends.ErrInvalidArgument)
	}
	_, err = b.WrapKWP(ctx, "no-such-key", make([]byte, 32))
	wantKind(t, "WrapKWP with an unknown key", err, backends.ErrNotFound)
}

// TestKeyByID names keys by CKA_ID ("id=%xx..."), as a pkcs11 URI with only
// id= does.
func TestKeyByID(t *testing.T) {
	tok := softhsmtest.New(t)
	b := newBackend(t, tok, nil)
	k := createKeys(t, b)
	r := newRaw(t, tok)
	h := r.session(t, tok.PIN)
	a, err := r.p.GetAttributeValue(h, r.find(t, h, k.hmac, p11.CKO_SECRET_KEY), []*p11.Attribute{p11.NewAttribute(p11.CKA_ID, nil)})
	if err != nil {
		t.Fatal(err)
	}
	u, err := backends.ParsePKCS11URI("pkcs11:token=x;id=" + pct(a[0].Value))
	if err != nil {
		t.Fatal(err)
	}
	byID := u.Key()
	t1, err := b.MAC(t.Context(), byID, []byte("m"))
	if err != nil {
		t.Fatalf("MAC(%q) error: %v", byID, err)
	}
	t2, err := b.MAC(t.Context(), k.hmac, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if !t1.Equal(t2) {
		t.Errorf("MAC by id and by label differ")
	}
	info, err := b.Describe(t.Context(), byID)
	if err != nil || info.Algorithm != backends.HMAC256 {
		t.Errorf("Describe(%q) = %+v, %v; want hmac-256", byID, info, err)
	}
	_, err = b.Describe(t.Context(), "id=%FF%FF")
	wantKind(t, "Describe of an unknown id", err, backends.ErrNotFound)
}

func pct(b []byte) string {
	var s string
	for _, c := range b {
		s += fmt.Sprintf("%%%02X", c)
	}
	return s
}

// TestOpenURI opens the backend through its URI with a pin-source file.
func TestOpenURI(t *testing.T) {
	tok := softhsmtest.New(t)
	dir := t.TempDir()
	writePIN := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrongPIN := writePIN("wrong", "9999\n")
	crlfPIN := writePIN("crlf", tok.PIN+"\r\n")
	emptyPIN := writePIN("empty", "\n")
	base := "pkcs11:token=" + tok.Label
	mod := "module-path=" + tok.ModulePath
	// The wrong PIN case runs first: SoftHSM's login is per process, and a
	// C_Login with a wrong PIN "succeeds" while another session is logged in.
	for _, tc := range []struct {
		name string
		uri  string
		want error // nil: opens
	}{
		{"wrong PIN", base + "?" + mod + "&pin-source=" + wrongPIN, backends.ErrPermissionDenied},
		{"harness URI", tok.URI("root-1"), nil},
		{"CRLF pin file", base + "?" + mod + "&pin-source=file:" + crlfPIN + "&max-sessions=2", nil},
		{"module-name", base + "?module-name=libsofthsm2.so&pin-source=" + tok.PinFile, nil},
		{"unknown token", "pkcs11:token=nope?" + mod + "&pin-source=" + tok.PinFile, backends.ErrNotFound},
		{"no pin-source", base + "?" + mod, backends.ErrInvalidArgument},
		{"missing pin file", base + "?" + mod + "&pin-source=" + filepath.Join(dir, "absent"), backends.ErrInvalidArgument},
		{"empty pin file", base + "?" + mod + "&pin-source=" + emptyPIN, backends.ErrInvalidArgument},
		{"no module", base + "?pin-source=" + tok.PinFile, backends.ErrInvalidArgument},
		{"unknown module-name", base + "?module-name=nosuchmodule&pin-source=" + tok.PinFile, backends.ErrInvalidArgument},
		{"not a library", base + "?module-path=" + tok.PinFile + "&pin-source=" + tok.PinFile, backends.ErrInvalidArgument},
		{"pin-value", base + "?" + mod + "&pin-value=1234", backends.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "module-name" && filepath.Dir(tok.ModulePath) != "/usr/lib/softhsm" {
				t.Skip("module-name resolution is checked against Debian's layout")
			}
			b, err := pkcs11.Open(t.Context(), tc.uri, backends.Options{})
			if tc.want != nil {
				wantKind(t, fmt.Sprintf("Open(%q)", tc.uri), err, tc.want)
				if b != nil {
					t.Errorf("Open(%q) returned a backend with its error", tc.uri)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q) error: %v", tc.uri, err)
			}
			defer b.Close()
			if _, err := b.GenerateRandom(t.Context(), 16); err != nil {
				t.Errorf("GenerateRandom on the opened backend: %v", err)
			}
		})
	}
}

// TestTwoBackendsOneModule checks that backends sharing the module do not
// finalise it under each other or close each other's sessions.
func TestTwoBackendsOneModule(t *testing.T) {
	tok := softhsmtest.New(t)
	a := newBackend(t, tok, nil)
	k := createKeys(t, a)
	b2, err := pkcs11.Open(t.Context(), tok.URI(""), backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := b2.Encrypt(t.Context(), k.aes, []byte("shared"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	pt, err := a.Decrypt(t.Context(), k.aes, ct, nil)
	if err != nil || string(pt.Reveal()) != "shared" {
		t.Fatalf("Decrypt on the first backend after the second closed = %v, %v", pt, err)
	}
	if err := a.Health(t.Context()); err != nil {
		t.Errorf("Health() = %v", err)
	}
}

// TestPoolBound checks that at most MaxSessions sessions are used, that
// waiters are served, and that a waiter's context is honoured.
func TestPoolBound(t *testing.T) {
	tok := softhsmtest.New(t)
	reg := prometheus.NewRegistry()
	b := newBackend(t, tok, func(c *pkcs11.Config) { c.MaxSessions = 2; c.Metrics = reg })
	k := createKeys(t, b)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for range 20 {
				if _, err := b.MAC(t.Context(), k.hmac, []byte("x")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := b.Stats(); st.SessionsOpen > 2 || st.SessionsInUse != 0 || st.Waiters != 0 {
		t.Errorf("Stats() = %+v; want at most 2 sessions open, none in use, no waiters", st)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := b.MAC(ctx, k.hmac, []byte("x"))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("MAC with a cancelled context: err = %v, want context.Canceled", err)
	}
	if got := gauge(t, reg, "keybroker_pkcs11_sessions_open"); got < 1 || got > 2 {
		t.Errorf("sessions_open gauge = %v, want 1..2", got)
	}
	if got := counter(t, reg, "keybroker_pkcs11_operations_total", map[string]string{"op": "mac", "code": "ok"}); got != 16*20 {
		t.Errorf(`operations_total{op="mac",code="ok"} = %v, want %d`, got, 16*20)
	}
	if got := counter(t, reg, "keybroker_pkcs11_operations_total", map[string]string{"op": "mac", "code": "canceled"}); got != 1 {
		t.Errorf(`operations_total{op="mac",code="canceled"} = %v, want 1`, got)
	}
	if n := histCount(t, reg, "keybroker_pkcs11_pool_wait_seconds"); n < 16*20 {
		t.Errorf("pool_wait_seconds count = %d, want at least %d", n, 16*20)
	}
}

// metric finds one series in reg.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) int {
	t.Helper()
	if m := metric(t, reg, name, labels); m != nil {
		return int(m.GetCounter().GetValue())
	}
	return 0
}

func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	if m := metric(t, reg, name, nil); m != nil {
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func histCount(t testing.TB, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	if m := metric(t, reg, name, nil); m != nil {
		return m.GetHistogram().GetSampleCount()
	}
	t.Fatalf("no metric %s", name)
	return 0
}
