package gcpkms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	gax "github.com/googleapis/gax-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest"
	"github.com/keybroker/keybroker/backends/backendtest/gcpfake"
)

const testRing = "projects/keybroker-test/locations/europe-west1/keyRings/kb"

// fastRetry keeps retried tests quick; the fake answers in microseconds.
var fastRetry = RetryConfig{MaxAttempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}

// env is a fake service holding the conformance keys.
type env struct {
	fake                 *gcpfake.Fake
	aes, aes2            string // CryptoKeys
	hmac, hmac2, ecdsa   string // CryptoKeyVersions
	hmacKey              string // the CryptoKey of hmac
	disabled             string // a CryptoKey whose primary is disabled
	unknown, unknownVers string
	seq                  atomic.Int64
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	f := gcpfake.New(tb)
	e := &env{fake: f}
	e.aes = f.CreateKey(testRing, "aes-1", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	e.aes2 = f.CreateKey(testRing, "aes-2", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	e.hmacKey = f.CreateKey(testRing, "hmac-1", kmspb.CryptoKey_MAC)
	e.hmac = e.hmacKey + "/cryptoKeyVersions/1"
	e.hmac2 = f.CreateKey(testRing, "hmac-2", kmspb.CryptoKey_MAC) + "/cryptoKeyVersions/1"
	e.ecdsa = f.CreateKey(testRing, "ecdsa-1", kmspb.CryptoKey_ASYMMETRIC_SIGN) + "/cryptoKeyVersions/1"
	e.disabled = f.CreateKey(testRing, "aes-disabled", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	f.Disable(e.disabled + "/cryptoKeyVersions/1")
	e.unknown = testRing + "/cryptoKeys/no-such-key"
	e.unknownVers = e.aes + "/cryptoKeyVersions/99"
	return e
}

// config is a Config for the fake; mutate it before open.
func (e *env) config() Config {
	return Config{KeyRing: testRing, ClientOptions: e.fake.ClientOptions(), Retry: fastRetry}
}

// open builds a backend with the real client on the fake.
func (e *env) open(tb testing.TB, cfg Config) *Backend {
	tb.Helper()
	b, err := New(tb.Context(), cfg)
	if err != nil {
		tb.Fatalf("New() error: %v", err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	return b
}

// openWith builds a backend whose client is wrap(the real client).
func (e *env) openWith(tb testing.TB, cfg Config, wrap func(kmsClient) kmsClient) *Backend {
	tb.Helper()
	b := e.open(tb, cfg)
	b.api = wrap(b.api)
	return b
}

func (e *env) fixture(b *Backend) *backendtest.Fixture {
	return &backendtest.Fixture{
		Backend:  b,
		AES:      e.aes,
		AES2:     e.aes2,
		HMAC:     e.hmac,
		HMAC2:    e.hmac2,
		ECDSA:    e.ecdsa,
		Disabled: e.disabled,
		Unknown:  e.unknown,
		Caps: backends.Capabilities{
			MAC: true, Sign: true, Create: true, Health: true,
			Creates: []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256},
		},
		NewName: func() string { return fmt.Sprintf("created-%d", e.seq.Add(1)) },
	}
}

func TestConformance(t *testing.T) {
	e := newEnv(t)
	backendtest.Run(t, func(t *testing.T) *backendtest.Fixture {
		b, err := New(t.Context(), e.config())
		if err != nil {
			t.Fatalf("New() error: %v", err)
		}
		return e.fixture(b)
	})
}

func BenchmarkBackend(b *testing.B) {
	e := newEnv(b)
	backendtest.Bench(b, e.fixture(e.open(b, e.config())))
}

// wantKind fails unless err is a *backends.Error classified as kind.
func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: err = nil, want %v", what, kind)
		return
	}
	if _, ok := errors.AsType[*backends.Error](err); !ok {
		t.Errorf("%s: err = %v (%T), want a *backends.Error", what, err, err)
	}
	if !errors.Is(err, kind) {
		t.Errorf("%s: err = %v (code %s), want %v", what, err, backends.CodeOf(err), kind)
	}
}

func TestKeyForms(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	ctx := t.Context()
	ct, err := b.Encrypt(ctx, e.aes, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ecdsaKey := strings.TrimSuffix(e.ecdsa, "/cryptoKeyVersions/1")
	for _, tc := range []struct {
		name string
		run  func() error
		kind error
	}{
		{"Decrypt of a CryptoKeyVersion", func() error {
			_, err := b.Decrypt(ctx, e.aes+"/cryptoKeyVersions/1", ct, nil)
			return err
		}, backends.ErrInvalidArgument},
		{"Decrypt of an unknown CryptoKeyVersion", func() error {
			_, err := b.Decrypt(ctx, e.unknown+"/cryptoKeyVersions/1", ct, nil)
			return err
		}, backends.ErrNotFound},
		{"MAC with the MAC CryptoKey", func() error {
			_, err := b.MAC(ctx, e.hmacKey, []byte("x"))
			return err
		}, backends.ErrInvalidArgument},
		{"VerifyMAC with the MAC CryptoKey", func() error {
			return b.VerifyMAC(ctx, e.hmacKey, []byte("x"), make([]byte, 32))
		}, backends.ErrInvalidArgument},
		{"Sign with a CryptoKey", func() error {
			_, err := b.Sign(ctx, ecdsaKey, make([]byte, 32))
			return err
		}, backends.ErrInvalidArgument},
		{"PublicKey of a CryptoKey", func() error {
			_, err := b.PublicKey(ctx, ecdsaKey)
			return err
		}, backends.ErrInvalidArgument},
		{"Encrypt with a key ring", func() error {
			_, err := b.Encrypt(ctx, testRing, []byte("x"), nil)
			return err
		}, backends.ErrInvalidArgument},
		{"Encrypt with a relative name", func() error {
			_, err := b.Encrypt(ctx, "cryptoKeys/aes-1", []byte("x"), nil)
			return err
		}, backends.ErrInvalidArgument},
		{"Describe of a bare id", func() error {
			_, err := b.Describe(ctx, "aes-1")
			return err
		}, backends.ErrInvalidArgument},
		{"Encrypt with an unknown version", func() error {
			_, err := b.Encrypt(ctx, e.unknownVers, []byte("x"), nil)
			return err
		}, backends.ErrNotFound},
		{"Encrypt with a signing version", func() error {
			_, err := b.Encrypt(ctx, e.ecdsa, []byte("x"), nil)
			return err
		}, backends.ErrInvalidArgument},
		{"Decrypt with a MAC CryptoKey", func() error {
			_, err := b.Decrypt(ctx, e.hmacKey, ct, nil)
			return err
		}, backends.ErrInvalidArgument},
		{"MAC with a signing version", func() error {
			_, err := b.MAC(ctx, e.ecdsa, []byte("x"))
			return err
		}, backends.ErrInvalidArgument},
		{"Sign with a MAC version", func() error {
			_, err := b.Sign(ctx, e.hmac, make([]byte, 32))
			return err
		}, backends.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) { wantKind(t, tc.name, tc.run(), tc.kind) })
	}

	e.fake.ResetCalls()
	_, err = b.Encrypt(ctx, "projects/p/locations/l/keyRings/r/cryptoKeys/bad name", []byte("x"), nil)
	wantKind(t, "Encrypt with a malformed name", err, backends.ErrInvalidArgument)
	if n := e.fake.TotalCalls(); n != 0 {
		t.Errorf("a malformed name sent %d RPCs, want 0", n)
	}
}

func TestEncryptWithVersionAndRotation(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	ctx := t.Context()
	old, err := b.Encrypt(ctx, e.aes, []byte("before rotation"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	v2 := e.fake.AddVersion(e.aes)
	viaKey, err := b.Encrypt(ctx, e.aes, []byte("after rotation"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	viaV1, err := b.Encrypt(ctx, e.aes+"/cryptoKeyVersions/1", []byte("explicit v1"), []byte("aad"))
	if err != nil {
		t.Fatalf("Encrypt with a CryptoKeyVersion: %v", err)
	}
	for _, tc := range []struct {
		ct   []byte
		want string
	}{{old, "before rotation"}, {viaKey, "after rotation"}, {viaV1, "explicit v1"}} {
		pt, err := b.Decrypt(ctx, e.aes, tc.ct, []byte("aad"))
		if err != nil {
			t.Fatalf("Decrypt(%q) error: %v", tc.want, err)
		}
		if string(pt.Reveal()) != tc.want {
			t.Errorf("Decrypt = %q, want %q", pt.Reveal(), tc.want)
		}
	}
	// Disabling the old version makes its ciphertexts unusable, not the key.
	e.fake.Disable(e.aes + "/cryptoKeyVersions/1")
	_, err = b.Decrypt(ctx, e.aes, old, []byte("aad"))
	wantKind(t, "Decrypt under a disabled version", err, backends.ErrDisabled)
	if _, err := b.Decrypt(ctx, e.aes, viaKey, []byte("aad")); err != nil {
		t.Errorf("Decrypt under the new primary %s: %v", v2, err)
	}
	info, err := b.Describe(ctx, e.aes+"/cryptoKeyVersions/1")
	if err != nil || info.Enabled || info.Algorithm != backends.AES256 {
		t.Errorf("Describe(disabled version) = %+v, %v; want aes-256, disabled", info, err)
	}
}

func TestDisabledMACVersion(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	e.fake.Disable(e.hmac2)
	_, err := b.MAC(t.Context(), e.hmac2, []byte("x"))
	wantKind(t, "MAC with a disabled version", err, backends.ErrDisabled)
	err = b.VerifyMAC(t.Context(), e.hmac2, []byte("x"), make([]byte, 32))
	wantKind(t, "VerifyMAC with a disabled version", err, backends.ErrDisabled)
}

func TestDescribeMACCryptoKey(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	info, err := b.Describe(t.Context(), e.hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	want := backends.KeyInfo{Key: e.hmacKey, Algorithm: backends.HMAC256, Enabled: false}
	if info != want {
		t.Errorf("Describe(MAC CryptoKey) = %+v, want %+v", info, want)
	}
}

// recorder records the requests the backend sends.
type recorder struct {
	kmsClient
	mu   sync.Mutex
	reqs []any
}

func (r *recorder) add(req any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
}

func (r *recorder) Encrypt(ctx context.Context, req *kmspb.EncryptRequest, o ...gax.CallOption) (*kmspb.EncryptResponse, error) {
	r.add(req)
	return r.kmsClient.Encrypt(ctx, req, o...)
}

func (r *recorder) Decrypt(ctx context.Context, req *kmspb.DecryptRequest, o ...gax.CallOption) (*kmspb.DecryptResponse, error) {
	r.add(req)
	return r.kmsClient.Decrypt(ctx, req, o...)
}

func (r *recorder) MacSign(ctx context.Context, req *kmspb.MacSignRequest, o ...gax.CallOption) (*kmspb.MacSignResponse, error) {
	r.add(req)
	return r.kmsClient.MacSign(ctx, req, o...)
}

func (r *recorder) MacVerify(ctx context.Context, req *kmspb.MacVerifyRequest, o ...gax.CallOption) (*kmspb.MacVerifyResponse, error) {
	r.add(req)
	return r.kmsClient.MacVerify(ctx, req, o...)
}

func (r *recorder) AsymmetricSign(ctx context.Context, req *kmspb.AsymmetricSignRequest, o ...gax.CallOption) (*kmspb.AsymmetricSignResponse, error) {
	r.add(req)
	return r.kmsClient.AsymmetricSign(ctx, req, o...)
}

func (r *recorder) GenerateRandomBytes(ctx context.Context, req *kmspb.GenerateRandomBytesRequest, o ...gax.CallOption) (*kmspb.GenerateRandomBytesResponse, error) {
	r.add(req)
	return r.kmsClient.GenerateRandomBytes(ctx, req, o...)
}

// TestRequestChecksums proves every checksum field is sent, and right, with
// and without additional authenticated data.
func TestRequestChecksums(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{}
	b := e.openWith(t, e.config(), func(c kmsClient) kmsClient { rec.kmsClient = c; return rec })
	ctx := t.Context()
	for _, in := range []struct{ data, aad []byte }{{[]byte("x"), nil}, {[]byte("data"), []byte("aad")}} {
		ct, err := b.Encrypt(ctx, e.aes, in.data, in.aad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Decrypt(ctx, e.aes, ct, in.aad); err != nil {
			t.Fatal(err)
		}
		tag, err := b.MAC(ctx, e.hmac, in.data)
		if err != nil {
			t.Fatal(err)
		}
		// A copy: the recorded request outlives tag, whose memory is zeroed
		// when it is collected.
		if err := b.VerifyMAC(ctx, e.hmac, in.data, bytes.Clone(tag.Reveal())); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Sign(ctx, e.ecdsa, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	check := func(what string, data []byte, sum interface{ GetValue() int64 }) {
		t.Helper()
		want := gcpfake.CRC32C(data).GetValue()
		if sum == nil || sum.GetValue() != want {
			t.Errorf("%s = %v, want %d", what, sum, want)
		}
	}
	for _, req := range rec.reqs {
		switch r := req.(type) {
		case *kmspb.EncryptRequest:
			check("EncryptRequest.plaintext_crc32c", r.Plaintext, r.PlaintextCrc32C)
			check("EncryptRequest.additional_authenticated_data_crc32c", r.AdditionalAuthenticatedData, r.AdditionalAuthenticatedDataCrc32C)
		case *kmspb.DecryptRequest:
			check("DecryptRequest.ciphertext_crc32c", r.Ciphertext, r.CiphertextCrc32C)
			check("DecryptRequest.additional_authenticated_data_crc32c", r.AdditionalAuthenticatedData, r.AdditionalAuthenticatedDataCrc32C)
		case *kmspb.MacSignRequest:
			check("MacSignRequest.data_crc32c", r.Data, r.DataCrc32C)
		case *kmspb.MacVerifyRequest:
			check("MacVerifyRequest.data_crc32c", r.Data, r.DataCrc32C)
			check("MacVerifyRequest.mac_crc32c", r.Mac, r.MacCrc32C)
		case *kmspb.AsymmetricSignRequest:
			check("AsymmetricSignRequest.digest_crc32c", r.GetDigest().GetSha256(), r.DigestCrc32C)
		}
	}
	if len(rec.reqs) != 9 {
		t.Errorf("recorded %d requests, want 9", len(rec.reqs))
	}
}

func TestGenerateRandomBelowServiceMinimum(t *testing.T) {
	e := newEnv(t)
	rec := &recorder{}
	b := e.openWith(t, e.config(), func(c kmsClient) kmsClient { rec.kmsClient = c; return rec })
	for _, n := range []int{1, 7, 8, 9} {
		got, err := b.GenerateRandom(t.Context(), n)
		if err != nil || len(got) != n || cap(got) != n {
			t.Errorf("GenerateRandom(%d) = %d bytes (cap %d), %v; want %d bytes", n, len(got), cap(got), err, n)
		}
	}
	for i, want := range []int32{8, 8, 8, 9} {
		r := rec.reqs[i].(*kmspb.GenerateRandomBytesRequest)
		if r.LengthBytes != want || r.Location != "projects/keybroker-test/locations/europe-west1" || r.ProtectionLevel != kmspb.ProtectionLevel_HSM {
			t.Errorf("request %d = %v, want length %d at the key ring's location, HSM", i, r, want)
		}
	}
}

func TestCreateKeySoftware(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.ProtectionLevel = kmspb.ProtectionLevel_SOFTWARE
	b := e.open(t, cfg)
	info, err := b.CreateKey(t.Context(), "soft-mac", backends.HMAC256)
	if err != nil {
		t.Fatal(err)
	}
	if want := testRing + "/cryptoKeys/soft-mac/cryptoKeyVersions/1"; info.Key != want {
		t.Errorf("CreateKey key = %q, want %q", info.Key, want)
	}
	_, err = b.CreateKey(t.Context(), "bad/name", backends.AES256)
	wantKind(t, "CreateKey with an invalid id", err, backends.ErrInvalidArgument)
	_, err = b.CreateKey(t.Context(), "ed", backends.Ed25519)
	wantKind(t, "CreateKey(ed25519)", err, backends.ErrUnsupported)
}

func TestPublicKeyCached(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	p1, err := b.PublicKey(t.Context(), e.ecdsa)
	if err != nil {
		t.Fatal(err)
	}
	e.fake.ResetCalls()
	p2, err := b.PublicKey(t.Context(), e.ecdsa)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.fake.Calls("GetPublicKey"); n != 0 {
		t.Errorf("second PublicKey sent %d GetPublicKey calls, want 0 (cached)", n)
	}
	if p1 != p2 {
		t.Error("cached public key differs")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{KeyRing: testRing}, true},
		{"endpoint", Config{KeyRing: testRing, Endpoint: "kms.internal:8443"}, true},
		{"no key ring", Config{}, false},
		{"key ring is a key", Config{KeyRing: testRing + "/cryptoKeys/k"}, false},
		{"endpoint without port", Config{KeyRing: testRing, Endpoint: "kms.internal"}, false},
		{"endpoint URL", Config{KeyRing: testRing, Endpoint: "https://kms.internal:443"}, false},
		{"external protection", Config{KeyRing: testRing, ProtectionLevel: kmspb.ProtectionLevel_EXTERNAL}, false},
		{"negative attempts", Config{KeyRing: testRing, Retry: RetryConfig{MaxAttempts: -1}}, false},
		{"backoff above max", Config{KeyRing: testRing, Retry: RetryConfig{InitialBackoff: time.Second, MaxBackoff: time.Millisecond}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				_, err := New(t.Context(), tc.cfg)
				wantKind(t, "New with an invalid config", err, backends.ErrInvalidArgument)
			}
		})
	}
}

func TestOpenURI(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, tc := range []struct {
		uri  string
		want Config
	}{
		{"gcpkms:" + testRing, Config{KeyRing: testRing}},
		{"gcpkms:" + testRing + ";endpoint=127.0.0.1:8443", Config{KeyRing: testRing, Endpoint: "127.0.0.1:8443"}},
		{"gcpkms:" + testRing + "/cryptoKeys/k", Config{KeyRing: testRing}},
		{"gcpkms:" + testRing + "/cryptoKeys/k/cryptoKeyVersions/3;endpoint=kms:443", Config{KeyRing: testRing, Endpoint: "kms:443"}},
	} {
		got, err := configFromURI(tc.uri, backends.Options{Metrics: reg})
		if err != nil {
			t.Errorf("configFromURI(%q) error: %v", tc.uri, err)
			continue
		}
		if got.KeyRing != tc.want.KeyRing || got.Endpoint != tc.want.Endpoint || got.Metrics != reg {
			t.Errorf("configFromURI(%q) = %+v, want %+v", tc.uri, got, tc.want)
		}
	}
	for _, uri := range []string{
		"gcpkms:projects/p",
		"gcpkms:" + testRing + ";region=x",
		"awskms:region=eu-west-1",
		"gcpkms:" + testRing + ";endpoint=nope",
	} {
		_, err := Open(t.Context(), uri, backends.Options{})
		wantKind(t, fmt.Sprintf("Open(%q)", uri), err, backends.ErrInvalidArgument)
	}
}

// TestClosedBackend proves calls after Close fail as unavailable without
// reaching the service.
func TestClosedBackend(t *testing.T) {
	e := newEnv(t)
	b := e.open(t, e.config())
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"Encrypt", func() error { _, err := b.Encrypt(t.Context(), e.aes, []byte("x"), nil); return err }()},
		{"MAC", func() error { _, err := b.MAC(t.Context(), e.hmac, []byte("x")); return err }()},
		{"PublicKey", func() error { _, err := b.PublicKey(t.Context(), e.ecdsa); return err }()},
		{"GenerateRandom", func() error { _, err := b.GenerateRandom(t.Context(), 8); return err }()},
		{"Health", b.Health(t.Context())},
	} {
		wantKind(t, tc.name+" after Close", tc.err, backends.ErrUnavailable)
	}
}

func TestSecretsScrubbedOnIntegrityFailure(t *testing.T) {
	e := newEnv(t)
	var kept [][]byte
	var mu sync.Mutex
	b := e.openWith(t, e.config(), func(c kmsClient) kmsClient {
		return &keepResponses{kmsClient: c, keep: func(p []byte) { mu.Lock(); kept = append(kept, p); mu.Unlock() }}
	})
	ct, err := b.Encrypt(t.Context(), e.aes, bytes.Repeat([]byte{0xaa}, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.fake.SetFaults(gcpfake.Faults{CorruptResponseCRC: true})
	if pt, err := b.Decrypt(t.Context(), e.aes, ct, nil); err == nil || pt != nil {
		t.Fatalf("Decrypt with a corrupted checksum = %v, %v; want no plaintext and an error", pt, err)
	}
	if tag, err := b.MAC(t.Context(), e.hmac, []byte("x")); err == nil || tag != nil {
		t.Fatalf("MAC with a corrupted checksum = %v, %v; want no tag and an error", tag, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(kept) == 0 {
		t.Fatal("no responses seen")
	}
	for i, p := range kept {
		if !bytes.Equal(p, make([]byte, len(p))) {
			t.Errorf("discarded response %d still holds its secret: %x", i, p)
		}
	}
}

// keepResponses remembers the secret slices of Decrypt and MacSign
// responses.
type keepResponses struct {
	kmsClient
	keep func([]byte)
}

func (k *keepResponses) Decrypt(ctx context.Context, req *kmspb.DecryptRequest, o ...gax.CallOption) (*kmspb.DecryptResponse, error) {
	r, err := k.kmsClient.Decrypt(ctx, req, o...)
	if err == nil {
		k.keep(r.Plaintext)
	}
	return r, err
}

func (k *keepResponses) MacSign(ctx context.Context, req *kmspb.MacSignRequest, o ...gax.CallOption) (*kmspb.MacSignResponse, error) {
	r, err := k.kmsClient.MacSign(ctx, req, o...)
	if err == nil {
		k.keep(r.Mac)
	}
	return r, err
}
