package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/secret"
	"github.com/keybroker/keybroker/tests/framework"
)

// gatedBackend is the pkcs11 root of trust with every call made under a
// read lock the test takes for writing to inject a fault between calls.
// SoftHSM frees a session closed by another thread while that thread is
// inside a call on it (use after free: a wrong HMAC was seen), and no
// PKCS#11 module promises anything about C_CloseAllSessions racing a call
// — a limitation the pkcs11 package documents. A real HSM that drops its
// sessions fails the calls in flight; between calls is where the backend
// must notice and recover, and where this test hits it.
type gatedBackend struct {
	b    *pkcs11.Backend
	gate *sync.RWMutex
}

var (
	_ backends.Backend           = (*gatedBackend)(nil)
	_ backends.MACer             = (*gatedBackend)(nil)
	_ backends.Signer            = (*gatedBackend)(nil)
	_ backends.KeyCreator        = (*gatedBackend)(nil)
	_ backends.CreatesAlgorithms = (*gatedBackend)(nil)
	_ backends.DataKeyGenerator  = (*gatedBackend)(nil)
	_ backends.HealthChecker     = (*gatedBackend)(nil)
)

func (g *gatedBackend) Encrypt(ctx context.Context, key string, plaintext, aad []byte) ([]byte, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.Encrypt(ctx, key, plaintext, aad)
}

func (g *gatedBackend) Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (*secret.Bytes, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.Decrypt(ctx, key, ciphertext, aad)
}

func (g *gatedBackend) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.GenerateRandom(ctx, n)
}

func (g *gatedBackend) Describe(ctx context.Context, key string) (backends.KeyInfo, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.Describe(ctx, key)
}

func (g *gatedBackend) Close() error { return g.b.Close() }

func (g *gatedBackend) MAC(ctx context.Context, key string, data []byte) (*secret.Bytes, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.MAC(ctx, key, data)
}

func (g *gatedBackend) VerifyMAC(ctx context.Context, key string, data, tag []byte) error {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.VerifyMAC(ctx, key, data, tag)
}

func (g *gatedBackend) Sign(ctx context.Context, key string, digest []byte) ([]byte, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.Sign(ctx, key, digest)
}

func (g *gatedBackend) PublicKey(ctx context.Context, key string) (crypto.PublicKey, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.PublicKey(ctx, key)
}

func (g *gatedBackend) CreateKey(ctx context.Context, name string, alg backends.Algorithm) (backends.KeyInfo, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.CreateKey(ctx, name, alg)
}

func (g *gatedBackend) CreatableAlgorithms() []backends.Algorithm { return g.b.CreatableAlgorithms() }

func (g *gatedBackend) GenerateDataKey(ctx context.Context, key string, aad []byte) (*secret.Bytes, []byte, error) {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.GenerateDataKey(ctx, key, aad)
}

func (g *gatedBackend) Health(ctx context.Context) error {
	g.gate.RLock()
	defer g.gate.RUnlock()
	return g.b.Health(ctx)
}

// logBuffer collects a node's log lines for counting and for failures.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestFaultHSMSessionsClosed closes every session the SoftHSM2 token has
// (C_CloseAllSessions, which also ends the login) again and again while
// eight workers — four over gRPC with mutual TLS, four through the Go SDK
// — run backend-mode operations on a central node: HMAC, ECDSA signing,
// data keys wrapped and unwrapped by the token, random bytes. Central runs
// in this process, because only the process that loaded the module can
// close its sessions; the fault comes from a second handle on the same
// module, as another library in the process would. The pkcs11 backend must
// notice, open new sessions, log in again and retry: no error may reach a
// caller, and every MAC and signature must be right.
func TestFaultHSMSessionsClosed(t *testing.T) {
	rep := framework.NewFaultReport(t, "hsm-sessions-closed")
	c := framework.NewSetupOn(t, framework.PKCS11Roots, append(framework.BasicRoots, framework.RootKey{Object: "root-ec", Algorithm: "ecdsa-p256"}, framework.RootKey{Object: "root-mac", Algorithm: "hmac-256"}))
	cfg, err := config.LoadCentral(c.Config)
	must(t, "LoadCentral", err)
	// Eight workers at full speed on backend-mode keys: the per-principal
	// backend budget is not what this test is about.
	cfg.BackendBudget.Rate, cfg.BackendBudget.Burst = 1_000_000, 1_000_000
	must(t, "Check", cfg.Check())

	var gate sync.RWMutex
	var hsm *pkcs11.Backend
	reg := backends.NewRegistry()
	must(t, "Register", reg.Register("pkcs11", func(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
		b, err := pkcs11.Open(ctx, uri, opts)
		if err != nil {
			return nil, err
		}
		hsm = b.(*pkcs11.Backend)
		return &gatedBackend{b: hsm, gate: &gate}, nil
	}))
	var logs logBuffer
	node, err := central.Start(t.Context(), cfg, central.Options{Backends: reg, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	must(t, "central.Start", err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := node.Shutdown(ctx); err != nil {
			t.Errorf("central Shutdown: %v", err)
		}
	})
	defer func() {
		if t.Failed() {
			t.Logf("central's log:\n%s", logs.String())
		}
	}()
	raw, slot := openRawToken(t)

	ctx := t.Context()
	admin := c.Dial(t, node.Addr(), identity.Admin, "ops")
	owner := map[string]string{"owner": framework.TrustDomain}
	backend := kbv1.KeyMode_KEY_MODE_BACKEND
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "hsm-aes", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: backend, Labels: owner},
		{KeyId: "hsm-mac", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: backend, Labels: owner, RootKey: c.Roots.Ref("root-mac")},
		{KeyId: "hsm-ec", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: backend, Labels: owner, RootKey: c.Roots.Ref("root-ec")},
	} {
		_, err := admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
	}
	app := c.Dial(t, node.Addr(), identity.Client, "app")
	sdk := c.SDKClient(t, "", node.Addr())

	// Reference answers, made before any fault: a MAC is deterministic, so
	// a wrong one under fault is caught, not just a failed one.
	msgs := make([][]byte, 16)
	refMAC := make([][]byte, 16)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "message %d", i)
		m, err := app.KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "hsm-mac", Message: msgs[i]})
		must(t, "GenerateMac", err)
		refMAC[i] = m.GetMac()
	}
	pk, err := app.KB.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: "hsm-ec"})
	must(t, "GetPublicKey", err)
	pub, err := x509.ParsePKIXPublicKey(pk.GetPublicKey())
	must(t, "ParsePKIXPublicKey", err)
	ecPub := pub.(*ecdsa.PublicKey)

	// Over gRPC (workers 0-3) or the SDK (4-7): each returns the key
	// operation's result; the checks are the same.
	viaGRPC := hsmOps{
		mac: func(ctx context.Context, msg []byte) ([]byte, error) {
			r, err := app.KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "hsm-mac", Message: msg})
			return r.GetMac(), err
		},
		verifyMAC: func(ctx context.Context, msg, mac []byte) (bool, error) {
			r, err := app.KB.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "hsm-mac", Message: msg, Mac: mac})
			return r.GetValid(), err
		},
		sign: func(ctx context.Context, msg []byte) ([]byte, error) {
			r, err := app.KB.Sign(ctx, &kbv1.SignRequest{KeyId: "hsm-ec", Input: &kbv1.SignRequest_Message{Message: msg}})
			return r.GetSignature(), err
		},
		dataKey: func(ctx context.Context) ([]byte, []byte, uint32, error) {
			r, err := app.KB.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "hsm-aes"})
			return r.GetPlaintext(), r.GetWrappedDataKey(), r.GetKeyVersion(), err
		},
		unwrap: func(ctx context.Context, version uint32, wrapped []byte) ([]byte, error) {
			r, err := app.KB.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: "hsm-aes", KeyVersion: version, WrappedDataKey: wrapped})
			return r.GetPlaintext(), err
		},
		random: func(ctx context.Context) ([]byte, error) {
			r, err := app.KB.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 32})
			return r.GetRandom(), err
		},
	}
	viaSDK := hsmOps{
		mac: func(ctx context.Context, msg []byte) ([]byte, error) {
			r, err := sdk.GenerateMac(ctx, "hsm-mac", msg)
			if err != nil {
				return nil, err
			}
			return r.MAC, nil
		},
		verifyMAC: func(ctx context.Context, msg, mac []byte) (bool, error) {
			return sdk.VerifyMac(ctx, "hsm-mac", 0, msg, mac)
		},
		sign: func(ctx context.Context, msg []byte) ([]byte, error) {
			r, err := sdk.Sign(ctx, "hsm-ec", msg)
			if err != nil {
				return nil, err
			}
			return r.Signature, nil
		},
		dataKey: func(ctx context.Context) ([]byte, []byte, uint32, error) {
			r, err := sdk.GenerateDataKey(ctx, "hsm-aes", nil)
			if err != nil {
				return nil, nil, 0, err
			}
			return r.Plaintext, r.Wrapped, r.Version, nil
		},
		unwrap: func(ctx context.Context, version uint32, wrapped []byte) ([]byte, error) {
			return sdk.DecryptDataKey(ctx, "hsm-aes", version, wrapped, nil)
		},
		random: func(ctx context.Context) ([]byte, error) { return sdk.GenerateRandom(ctx, 32) },
	}
	var grpcErrs, sdkErrs faultCounter
	l := framework.StartLoad(ctx, 8, func(ctx context.Context, w, i int) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		o, errs := viaGRPC, &grpcErrs
		if w >= 4 {
			o, errs = viaSDK, &sdkErrs
		}
		err := o.run(ctx, msgs, refMAC, ecPub, w+i)
		if err != nil {
			errs.add()
		}
		return err
	})
	defer l.Stop()

	const faults = 20
	for range faults {
		l.WaitOps(t, l.Ops.Load()+60)
		gate.Lock()
		err := raw.CloseAllSessions(slot)
		gate.Unlock()
		must(t, "C_CloseAllSessions", err)
	}
	l.WaitOps(t, l.Ops.Load()+200)
	first := l.Stop()
	st := hsm.Stats()
	recovering := strings.Count(logs.String(), `"msg":"pkcs11: recovering"`)
	t.Logf("%d operations; %d errors over gRPC, %d through the SDK; pkcs11 stats %+v; %d recoveries logged", l.Ops.Load(), grpcErrs.n(), sdkErrs.n(), st, recovering)
	if n := l.Errs.Load(); n != 0 {
		t.Errorf("%d of %d operations failed under closed sessions (%d over gRPC, %d through the SDK); first: %v", n, l.Ops.Load(), grpcErrs.n(), sdkErrs.n(), errors.Join(first...))
	}
	if st.SessionRecoveries+st.ObjectRecoveries+st.ModuleRecoveries == 0 {
		t.Errorf("pkcs11 Stats() = %+v: no recovery after %d faults; were the sessions closed?", st, faults)
	}
	if st.Breaker != pkcs11.BreakerClosed || st.FailedRecoveries != 0 {
		t.Errorf("pkcs11 Stats() = %+v; want the breaker closed and no failed recovery", st)
	}
	// Everything works after the faults, checked once more by a fresh
	// caller.
	after := c.Dial(t, node.Addr(), identity.Client, "app")
	for i := range 16 {
		m, err := after.KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "hsm-mac", Message: msgs[i]})
		if err != nil || !bytes.Equal(m.GetMac(), refMAC[i]) {
			t.Errorf("GenerateMac after the faults = %x, %v; want %x", m.GetMac(), err, refMAC[i])
		}
	}
	rep.Set("C_CloseAllSessions on the token %d times (also ending the login) under 8 workers running backend-mode HMAC, ECDSA, data-key wrap/unwrap and random at an in-process central; "+
		"%d operations, %d errors over gRPC and %d through the SDK, every MAC and signature correct; the backend recovered (%d session, %d object, %d module recoveries, 0 failed; breaker closed)",
		faults, l.Ops.Load(), grpcErrs.n(), sdkErrs.n(), st.SessionRecoveries, st.ObjectRecoveries, st.ModuleRecoveries)
}

// hsmOps are the backend-mode operations, made one way (gRPC or the SDK).
type hsmOps struct {
	mac       func(ctx context.Context, msg []byte) ([]byte, error)
	verifyMAC func(ctx context.Context, msg, mac []byte) (bool, error)
	sign      func(ctx context.Context, msg []byte) ([]byte, error)
	dataKey   func(ctx context.Context) (pt, wrapped []byte, version uint32, err error)
	unwrap    func(ctx context.Context, version uint32, wrapped []byte) ([]byte, error)
	random    func(ctx context.Context) ([]byte, error)
}

// run performs one checked operation, chosen by n: a MAC compared with
// its reference and verified, a signature verified with the public key, a
// data key unwrapped again, random bytes.
func (o hsmOps) run(ctx context.Context, msgs, refMAC [][]byte, pub *ecdsa.PublicKey, n int) error {
	msg := msgs[n%len(msgs)]
	switch n % 4 {
	case 0:
		got, err := o.mac(ctx, msg)
		if err != nil {
			return fmt.Errorf("GenerateMac: %w", err)
		}
		if !bytes.Equal(got, refMAC[n%len(msgs)]) {
			return fmt.Errorf("GenerateMac(%q) = %x, want %x", msg, got, refMAC[n%len(msgs)])
		}
		ok, err := o.verifyMAC(ctx, msg, got)
		if err != nil || !ok {
			return fmt.Errorf("VerifyMac = %v, %v", ok, err)
		}
	case 1:
		sig, err := o.sign(ctx, msg)
		if err != nil {
			return fmt.Errorf("Sign: %w", err)
		}
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			return fmt.Errorf("the signature of %q does not verify", msg)
		}
	case 2:
		pt, wrapped, v, err := o.dataKey(ctx)
		if err != nil {
			return fmt.Errorf("GenerateDataKey: %w", err)
		}
		got, err := o.unwrap(ctx, v, wrapped)
		if err != nil {
			return fmt.Errorf("DecryptDataKey: %w", err)
		}
		if !bytes.Equal(got, pt) || len(pt) != 32 {
			return fmt.Errorf("DecryptDataKey gave another data key (%d bytes)", len(got))
		}
	default:
		r, err := o.random(ctx)
		if err != nil {
			return fmt.Errorf("GenerateRandom: %w", err)
		}
		if len(r) != 32 {
			return fmt.Errorf("GenerateRandom gave %d bytes, want 32", len(r))
		}
	}
	return nil
}

// faultCounter counts errors seen one way.
type faultCounter struct {
	mu    sync.Mutex
	count int
}

func (c *faultCounter) add() {
	c.mu.Lock()
	c.count++
	c.mu.Unlock()
}

func (c *faultCounter) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// openRawToken loads the SoftHSM2 module a second time in this process
// (the same library, so the same state) and finds the test token's slot,
// for the test to close sessions with. It never finalises the module:
// that would be the backend's to do.
func openRawToken(t *testing.T) (*p11.Ctx, uint) {
	t.Helper()
	module, why := softhsmtest.Module()
	if module == "" {
		t.Fatal(why)
	}
	p := p11.New(module)
	if p == nil {
		t.Fatalf("cannot load %s", module)
	}
	t.Cleanup(p.Destroy)
	if err := p.Initialize(); err != nil {
		var e p11.Error
		if !errors.As(err, &e) || uint(e) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			t.Fatalf("C_Initialize: %v", err)
		}
	}
	slots, err := p.GetSlotList(true)
	must(t, "C_GetSlotList", err)
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimRight(ti.Label, " \x00") == softhsmtest.DefaultLabel {
			return p, s
		}
	}
	t.Fatalf("no token labelled %q", softhsmtest.DefaultLabel)
	return nil, 0
}
