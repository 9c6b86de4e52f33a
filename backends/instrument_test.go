package backends

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/secret"
)

// fakeBackend counts the calls that reach it and answers each with err (or
// a placeholder result). Its optional interfaces are added by
// fakeWithCapabilities (generated with the decorator's types).
type fakeBackend struct {
	mu    sync.Mutex
	calls map[string]int
	err   error
}

func (f *fakeBackend) called(m string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[m]++
	return f.err
}

func (f *fakeBackend) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		n += c
	}
	return n
}

func (f *fakeBackend) Encrypt(context.Context, string, []byte, []byte) ([]byte, error) {
	return []byte("ct"), f.called("Encrypt")
}

func (f *fakeBackend) Decrypt(context.Context, string, []byte, []byte) (*secret.Bytes, error) {
	return secret.New([]byte("pt")), f.called("Decrypt")
}

func (f *fakeBackend) GenerateRandom(_ context.Context, n int) ([]byte, error) {
	return make([]byte, n), f.called("GenerateRandom")
}

func (f *fakeBackend) Describe(_ context.Context, key string) (KeyInfo, error) {
	return KeyInfo{Key: key, Algorithm: AES256, Enabled: true}, f.called("Describe")
}

func (f *fakeBackend) Close() error { return f.called("Close") }

type fakeMAC struct{ f *fakeBackend }

func (m fakeMAC) MAC(context.Context, string, []byte) (*secret.Bytes, error) {
	return secret.New(make([]byte, 32)), m.f.called("MAC")
}

func (m fakeMAC) VerifyMAC(context.Context, string, []byte, []byte) error {
	return m.f.called("VerifyMAC")
}

type fakeSign struct{ f *fakeBackend }

func (s fakeSign) Sign(context.Context, string, []byte) ([]byte, error) {
	return []byte("sig"), s.f.called("Sign")
}

func (s fakeSign) PublicKey(context.Context, string) (crypto.PublicKey, error) {
	return nil, s.f.called("PublicKey")
}

type fakeCreate struct{ f *fakeBackend }

func (c fakeCreate) CreateKey(_ context.Context, name string, alg Algorithm) (KeyInfo, error) {
	return KeyInfo{Key: name, Algorithm: alg, Enabled: true}, c.f.called("CreateKey")
}

type fakeDataKey struct{ f *fakeBackend }

func (d fakeDataKey) GenerateDataKey(context.Context, string, []byte) (*secret.Bytes, []byte, error) {
	return secret.New(make([]byte, 32)), []byte("wrapped"), d.f.called("GenerateDataKey")
}

type fakeHealth struct{ f *fakeBackend }

func (h fakeHealth) Health(context.Context) error { return h.f.called("Health") }

type fakeAlgorithms struct{ f *fakeBackend }

func (a fakeAlgorithms) CreatableAlgorithms() []Algorithm { return []Algorithm{AES256, HMAC256} }

// allCaps is the mask of every optional interface.
const allCaps = 1<<6 - 1

// capMask lists the optional interfaces b implements, as a bit mask in the
// order of the generator's caps.
func capMask(b Backend) int {
	m := 0
	for bit, ok := range []bool{is[MACer](b), is[Signer](b), is[KeyCreator](b), is[DataKeyGenerator](b),
		is[HealthChecker](b), is[CreatesAlgorithms](b)} {
		if ok {
			m |= 1 << bit
		}
	}
	return m
}

// TestInstrumentPreservesCapabilities: for every combination of optional
// interfaces, the decorated backend implements exactly those the inner one
// does, so CapabilitiesOf and the central tier's type assertions (a derive
// root must be a MACer) see through the decorator, and the decorator never
// claims a capability the backend lacks.
func TestInstrumentPreservesCapabilities(t *testing.T) {
	for mask := range allCaps + 1 {
		inner := fakeWithCapabilities(&fakeBackend{}, mask)
		if got := capMask(inner); got != mask {
			t.Fatalf("fake for mask %06b implements %06b", mask, got)
		}
		b := Instrument(inner, InstrumentOptions{Name: "x"})
		if got := capMask(b); got != mask {
			t.Errorf("Instrument(backend with capabilities %06b) implements %06b", mask, got)
		}
		if diff := cmp.Diff(CapabilitiesOf(inner), CapabilitiesOf(b)); diff != "" {
			t.Errorf("CapabilitiesOf(Instrument(%06b)) differs (-inner +instrumented):\n%s", mask, diff)
		}
		again := Instrument(b, InstrumentOptions{Name: "y"})
		if got := capMask(again); got != mask {
			t.Errorf("Instrument twice (%06b) implements %06b", mask, got)
		}
		if Uninstrumented(again) != inner {
			t.Errorf("Uninstrumented(Instrument(Instrument(b))) is not b: instrumenting twice stacks decorators")
		}
	}
}

// call is one call of every method the decorator checks, with arguments
// valid or not.
type call struct {
	name   string
	method string // the fake's method the call reaches
	op     string // the op it is counted under
	do     func(ctx context.Context, b Backend) error
}

func validCalls() []call {
	return []call{
		{"Encrypt", "Encrypt", OpEncrypt, func(ctx context.Context, b Backend) error {
			_, err := b.Encrypt(ctx, "k", []byte("p"), []byte("aad"))
			return err
		}},
		{"Decrypt", "Decrypt", OpDecrypt, func(ctx context.Context, b Backend) error {
			_, err := b.Decrypt(ctx, "k", []byte("c"), nil)
			return err
		}},
		{"GenerateRandom", "GenerateRandom", OpRandom, func(ctx context.Context, b Backend) error {
			_, err := b.GenerateRandom(ctx, MaxRandom)
			return err
		}},
		{"Describe", "Describe", OpDescribe, func(ctx context.Context, b Backend) error {
			_, err := b.Describe(ctx, "k")
			return err
		}},
		{"MAC", "MAC", OpMAC, func(ctx context.Context, b Backend) error {
			_, err := b.(MACer).MAC(ctx, "k", make([]byte, MaxMACInput))
			return err
		}},
		{"VerifyMAC", "VerifyMAC", OpVerifyMAC, func(ctx context.Context, b Backend) error {
			return b.(MACer).VerifyMAC(ctx, "k", []byte("d"), make([]byte, 32))
		}},
		{"Sign", "Sign", OpSign, func(ctx context.Context, b Backend) error {
			_, err := b.(Signer).Sign(ctx, "k", make([]byte, 32))
			return err
		}},
		{"PublicKey", "PublicKey", OpPublicKey, func(ctx context.Context, b Backend) error {
			_, err := b.(Signer).PublicKey(ctx, "k")
			return err
		}},
		{"CreateKey", "CreateKey", OpCreateKey, func(ctx context.Context, b Backend) error {
			_, err := b.(KeyCreator).CreateKey(ctx, "k", HMAC256)
			return err
		}},
		{"GenerateDataKey", "GenerateDataKey", OpGenerateDataKey, func(ctx context.Context, b Backend) error {
			_, _, err := b.(DataKeyGenerator).GenerateDataKey(ctx, "k", make([]byte, MaxAAD))
			return err
		}},
	}
}

func invalidCalls() []call {
	big := func(n int) []byte { return make([]byte, n) }
	enc := func(key string, p, aad []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { _, err := b.Encrypt(ctx, key, p, aad); return err }
	}
	dec := func(key string, c, aad []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { _, err := b.Decrypt(ctx, key, c, aad); return err }
	}
	rnd := func(n int) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { _, err := b.GenerateRandom(ctx, n); return err }
	}
	mac := func(key string, d []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { _, err := b.(MACer).MAC(ctx, key, d); return err }
	}
	vmac := func(key string, d []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { return b.(MACer).VerifyMAC(ctx, key, d, big(32)) }
	}
	sign := func(key string, d []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error { _, err := b.(Signer).Sign(ctx, key, d); return err }
	}
	dk := func(key string, aad []byte) func(context.Context, Backend) error {
		return func(ctx context.Context, b Backend) error {
			_, _, err := b.(DataKeyGenerator).GenerateDataKey(ctx, key, aad)
			return err
		}
	}
	return []call{
		{"Encrypt empty key", "Encrypt", OpEncrypt, enc("", []byte("p"), nil)},
		{"Encrypt empty plaintext", "Encrypt", OpEncrypt, enc("k", nil, nil)},
		{"Encrypt oversized plaintext", "Encrypt", OpEncrypt, enc("k", big(MaxEncryptInput+1), nil)},
		{"Encrypt oversized aad", "Encrypt", OpEncrypt, enc("k", []byte("p"), big(MaxAAD+1))},
		{"Decrypt empty key", "Decrypt", OpDecrypt, dec("", []byte("c"), nil)},
		{"Decrypt empty ciphertext", "Decrypt", OpDecrypt, dec("k", nil, nil)},
		{"Decrypt oversized ciphertext", "Decrypt", OpDecrypt, dec("k", big(MaxCiphertext+1), nil)},
		{"Decrypt oversized aad", "Decrypt", OpDecrypt, dec("k", []byte("c"), big(MaxAAD+1))},
		{"GenerateRandom 0", "GenerateRandom", OpRandom, rnd(0)},
		{"GenerateRandom -1", "GenerateRandom", OpRandom, rnd(-1)},
		{"GenerateRandom too many", "GenerateRandom", OpRandom, rnd(MaxRandom + 1)},
		{"Describe empty key", "Describe", OpDescribe, func(ctx context.Context, b Backend) error { _, err := b.Describe(ctx, ""); return err }},
		{"MAC empty key", "MAC", OpMAC, mac("", []byte("d"))},
		{"MAC empty data", "MAC", OpMAC, mac("k", nil)},
		{"MAC oversized data", "MAC", OpMAC, mac("k", big(MaxMACInput+1))},
		{"VerifyMAC empty key", "VerifyMAC", OpVerifyMAC, vmac("", []byte("d"))},
		{"VerifyMAC oversized data", "VerifyMAC", OpVerifyMAC, vmac("k", big(MaxMACInput+1))},
		{"Sign empty key", "Sign", OpSign, sign("", big(32))},
		{"Sign empty digest", "Sign", OpSign, sign("k", nil)},
		{"Sign oversized digest", "Sign", OpSign, sign("k", big(MaxMACInput+1))},
		{"PublicKey empty key", "PublicKey", OpPublicKey, func(ctx context.Context, b Backend) error { _, err := b.(Signer).PublicKey(ctx, ""); return err }},
		{"CreateKey unknown algorithm", "CreateKey", OpCreateKey, func(ctx context.Context, b Backend) error {
			_, err := b.(KeyCreator).CreateKey(ctx, "k", "rsa-1024")
			return err
		}},
		{"GenerateDataKey empty key", "GenerateDataKey", OpGenerateDataKey, dk("", nil)},
		{"GenerateDataKey oversized aad", "GenerateDataKey", OpGenerateDataKey, dk("k", big(MaxAAD+1))},
	}
}

// observations reads the duration histogram's sample counts by
// "backend op outcome".
func observations(t *testing.T, m *Metrics) map[string]uint64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "keybroker_backend_call_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[l["backend"]+" "+l["op"]+" "+l["outcome"]] += mt.GetHistogram().GetSampleCount()
		}
	}
	return out
}

// TestInstrumentRefusesInvalidInputBeforeBackend: every argument the
// Check* limits refuse is refused by the decorator with an
// ErrInvalidArgument *Error naming the scheme and operation, before the
// backend, the budget (Admit), the call count or the audit line see it; the
// refusal is observed once, as invalid_argument.
func TestInstrumentRefusesInvalidInputBeforeBackend(t *testing.T) {
	for _, tc := range invalidCalls() {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeBackend{}
			m := NewMetrics()
			admitted := 0
			b := Instrument(fakeWithCapabilities(f, allCaps), InstrumentOptions{Name: "hsm-1", Scheme: "pkcs11", Metrics: m,
				Admit: func(context.Context, Call) error { admitted++; return nil }})
			ctx := audit.WithTrace(t.Context())
			err := tc.do(ctx, b)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("%s: err = %v, want ErrInvalidArgument", tc.name, err)
			}
			var be *Error
			if !errors.As(err, &be) || be.Backend != "pkcs11" {
				t.Errorf("%s: err = %#v, want a *backends.Error naming backend pkcs11", tc.name, err)
			}
			if n := f.total(); n != 0 {
				t.Errorf("%s reached the backend %d times (%v), want 0", tc.name, n, f.calls)
			}
			if admitted != 0 {
				t.Errorf("%s was admitted (charged) %d times, want 0", tc.name, admitted)
			}
			if c := m.Calls(); len(c) != 0 {
				t.Errorf("%s counted calls %v, want none", tc.name, c)
			}
			if calls, _ := audit.Traced(ctx); len(calls) != 0 {
				t.Errorf("%s audited backend calls %q, want none", tc.name, calls)
			}
			want := map[string]uint64{"hsm-1 " + tc.op + " invalid_argument": 1}
			if diff := cmp.Diff(want, observations(t, m)); diff != "" {
				t.Errorf("%s observations (-want +got):\n%s", tc.name, diff)
			}
		})
	}
}

// TestInstrumentCountsAuditsAndTimesEachCall: a call with valid arguments
// reaches the backend once, is admitted once, counted once, listed once in
// the request's audit trace as "name:op", and observed once with its
// outcome — whether the backend answers or fails. A context naming what
// the call is for (WithOp) replaces the method's name in all three.
func TestInstrumentCountsAuditsAndTimesEachCall(t *testing.T) {
	for _, backendErr := range []error{nil, NewError("pkcs11", "x", "k", ErrNotFound, nil)} {
		outcome := string(CodeOf(backendErr))
		for _, tc := range validCalls() {
			for _, purpose := range []string{"", "derive"} {
				t.Run(fmt.Sprintf("%s/%s/%s", tc.name, outcome, purpose), func(t *testing.T) {
					f := &fakeBackend{err: backendErr}
					m := NewMetrics()
					var admitted []Call
					b := Instrument(fakeWithCapabilities(f, allCaps), InstrumentOptions{Name: "hsm-1", Scheme: "pkcs11", Metrics: m,
						Admit: func(_ context.Context, c Call) error { admitted = append(admitted, c); return nil }})
					ctx := audit.WithTrace(t.Context())
					op := tc.op
					callCtx := ctx
					if purpose != "" {
						op, callCtx = purpose, WithOp(ctx, purpose)
					}
					err := tc.do(callCtx, b)
					if !errors.Is(err, backendErr) || (backendErr == nil) != (err == nil) {
						t.Fatalf("%s: err = %v, want %v", tc.name, err, backendErr)
					}
					if diff := cmp.Diff(map[string]int{tc.method: 1}, f.calls); diff != "" {
						t.Errorf("%s: backend calls (-want +got):\n%s", tc.name, diff)
					}
					want := Call{"hsm-1", op}
					if !slices.Equal(admitted, []Call{want}) {
						t.Errorf("%s: admitted %v, want [%v]", tc.name, admitted, want)
					}
					if diff := cmp.Diff(map[Call]uint64{want: 1}, m.Calls()); diff != "" {
						t.Errorf("%s: counted calls (-want +got):\n%s", tc.name, diff)
					}
					if calls, dropped := audit.Traced(ctx); !slices.Equal(calls, []string{"hsm-1:" + op}) || dropped != 0 {
						t.Errorf("%s: audit trace %q (+%d dropped), want [hsm-1:%s]", tc.name, calls, dropped, op)
					}
					if diff := cmp.Diff(map[string]uint64{"hsm-1 " + op + " " + outcome: 1}, observations(t, m)); diff != "" {
						t.Errorf("%s: observations (-want +got):\n%s", tc.name, diff)
					}
				})
			}
		}
	}
}

// TestInstrumentAdmitRefuses: a call Admit refuses (a spent budget) never
// reaches the backend, is neither counted nor audited, and the caller gets
// Admit's error itself.
func TestInstrumentAdmitRefuses(t *testing.T) {
	spent := errors.New("budget spent")
	for _, tc := range validCalls() {
		f := &fakeBackend{}
		m := NewMetrics()
		b := Instrument(fakeWithCapabilities(f, allCaps), InstrumentOptions{Name: "hsm-1", Metrics: m,
			Admit: func(context.Context, Call) error { return spent }})
		ctx := audit.WithTrace(t.Context())
		if err := tc.do(ctx, b); err != spent {
			t.Errorf("%s refused by Admit: err = %v, want %v", tc.name, err, spent)
		}
		if n := f.total(); n != 0 {
			t.Errorf("%s refused by Admit reached the backend %d times", tc.name, n)
		}
		if c := m.Calls(); len(c) != 0 {
			t.Errorf("%s refused by Admit counted %v", tc.name, c)
		}
		if calls, _ := audit.Traced(ctx); len(calls) != 0 {
			t.Errorf("%s refused by Admit audited %q", tc.name, calls)
		}
	}
}

// TestInstrumentHealthAndClose: Health is timed but, being the process's
// probe and not a request's call, neither admitted, counted nor audited;
// Close passes straight through.
func TestInstrumentHealthAndClose(t *testing.T) {
	f := &fakeBackend{}
	m := NewMetrics()
	b := Instrument(fakeWithCapabilities(f, allCaps), InstrumentOptions{Name: "hsm-1", Metrics: m,
		Admit: func(context.Context, Call) error { return errors.New("no admission for probes") }})
	ctx := audit.WithTrace(t.Context())
	if err := b.(HealthChecker).Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if diff := cmp.Diff(map[string]int{"Health": 1, "Close": 1}, f.calls); diff != "" {
		t.Errorf("backend calls (-want +got):\n%s", diff)
	}
	if c := m.Calls(); len(c) != 0 {
		t.Errorf("Health counted %v, want none", c)
	}
	if calls, _ := audit.Traced(ctx); len(calls) != 0 {
		t.Errorf("Health audited %q, want none", calls)
	}
	if diff := cmp.Diff(map[string]uint64{"hsm-1 health ok": 1}, observations(t, m)); diff != "" {
		t.Errorf("observations (-want +got):\n%s", diff)
	}
}

// TestInstrumentNilMetrics: a decorator without Metrics still checks,
// admits and audits.
func TestInstrumentNilMetrics(t *testing.T) {
	f := &fakeBackend{}
	b := Instrument(f, InstrumentOptions{Name: "soft"})
	ctx := audit.WithTrace(t.Context())
	if _, err := b.GenerateRandom(ctx, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("GenerateRandom(0) = %v, want ErrInvalidArgument", err)
	}
	if _, err := b.GenerateRandom(ctx, 8); err != nil {
		t.Fatalf("GenerateRandom(8): %v", err)
	}
	if calls, _ := audit.Traced(ctx); !slices.Equal(calls, []string{"soft:random"}) {
		t.Errorf("audit trace %q, want [soft:random]", calls)
	}
}

// TestInstrumentTraces: with a Logger, every call is traced at debug level
// with its backend, op, outcome and duration, and never its key name or
// data.
func TestInstrumentTraces(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := Instrument(fakeWithCapabilities(&fakeBackend{}, allCaps), InstrumentOptions{Name: "hsm-1", Logger: log})
	ctx := t.Context()
	if _, err := b.Encrypt(WithOp(ctx, "wrap-data-key"), "secret-key-name", []byte("secret plaintext"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GenerateRandom(ctx, 0); err == nil {
		t.Fatal("GenerateRandom(0) succeeded")
	}
	got := buf.String()
	for _, want := range []string{"backend=hsm-1 op=wrap-data-key outcome=ok", "backend=hsm-1 op=random outcome=invalid_argument"} {
		if !strings.Contains(got, want) {
			t.Errorf("trace %q lacks %q", got, want)
		}
	}
	for _, secret := range []string{"secret-key-name", "secret plaintext"} {
		if strings.Contains(got, secret) {
			t.Errorf("trace %q shows %q", got, secret)
		}
	}
}

// BenchmarkInstrument measures what the decorator adds to a call: raw is
// the fake alone, instrumented the fake behind Instrument with metrics, an
// admission hook and an audit trace, as the central tier uses it.
func BenchmarkInstrument(b *testing.B) {
	pt := make([]byte, 32)
	for _, tc := range []struct {
		name string
		be   func() Backend
	}{
		{"raw", func() Backend { return &fakeBackend{} }},
		{"instrumented", func() Backend {
			return Instrument(&fakeBackend{}, InstrumentOptions{Name: "hsm-1", Metrics: NewMetrics(),
				Admit: func(context.Context, Call) error { return nil }})
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			be := tc.be()
			ctx := audit.WithTrace(b.Context())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := be.Encrypt(WithOp(ctx, "wrap-data-key"), "k", pt, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
