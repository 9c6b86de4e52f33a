package gcpkms

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/kms/apiv1/kmspb"
	gax "github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest/gcpfake"
)

// integrityOp is one backend operation run under a damaging fault. run
// reports whether any data came back.
type integrityOp struct {
	name   string
	method string   // the RPC it makes
	faults []string // the response faults that apply to it
	run    func(b *Backend) (bool, error)
}

var responseFaults = map[string]gcpfake.Faults{
	"CorruptResponseCRC": {CorruptResponseCRC: true},
	"DropVerified":       {DropVerified: true},
	"WrongName":          {WrongName: true},
}

func integrityOps(t *testing.T, e *env) []integrityOp {
	ctx := t.Context()
	setup := e.open(t, e.config())
	ct, err := setup.Encrypt(ctx, e.aes, []byte("payload"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	tag, err := setup.MAC(ctx, e.hmac, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	all := []string{"CorruptResponseCRC", "DropVerified", "WrongName"}
	seq := 0
	return []integrityOp{
		{"Encrypt", "Encrypt", all, func(b *Backend) (bool, error) {
			ct, err := b.Encrypt(ctx, e.aes, []byte("payload"), []byte("aad"))
			return ct != nil, err
		}},
		{"EncryptVersion", "Encrypt", all, func(b *Backend) (bool, error) {
			ct, err := b.Encrypt(ctx, e.aes+"/cryptoKeyVersions/1", []byte("payload"), nil)
			return ct != nil, err
		}},
		{"Decrypt", "Decrypt", []string{"CorruptResponseCRC"}, func(b *Backend) (bool, error) {
			pt, err := b.Decrypt(ctx, e.aes, ct, []byte("aad"))
			return pt != nil, err
		}},
		{"MAC", "MacSign", all, func(b *Backend) (bool, error) {
			tag, err := b.MAC(ctx, e.hmac, []byte("data"))
			return tag != nil, err
		}},
		{"VerifyMAC", "MacVerify", all, func(b *Backend) (bool, error) {
			return false, b.VerifyMAC(ctx, e.hmac, []byte("data"), tag.Reveal())
		}},
		{"Sign", "AsymmetricSign", all, func(b *Backend) (bool, error) {
			sig, err := b.Sign(ctx, e.ecdsa, make([]byte, 32))
			return sig != nil, err
		}},
		{"PublicKey", "GetPublicKey", []string{"CorruptResponseCRC", "WrongName"}, func(b *Backend) (bool, error) {
			pub, err := b.PublicKey(ctx, e.ecdsa)
			return pub != nil, err
		}},
		{"GenerateRandom", "GenerateRandomBytes", []string{"CorruptResponseCRC"}, func(b *Backend) (bool, error) {
			r, err := b.GenerateRandom(ctx, 16)
			return r != nil, err
		}},
		{"DescribeKey", "GetCryptoKey", []string{"WrongName"}, func(b *Backend) (bool, error) {
			info, err := b.Describe(ctx, e.aes)
			return info != backends.KeyInfo{}, err
		}},
		{"DescribeVersion", "GetCryptoKeyVersion", []string{"WrongName"}, func(b *Backend) (bool, error) {
			info, err := b.Describe(ctx, e.hmac)
			return info != backends.KeyInfo{}, err
		}},
		{"CreateKey", "CreateCryptoKey", []string{"WrongName"}, func(b *Backend) (bool, error) {
			seq++
			info, err := b.CreateKey(ctx, "integrity-"+string(rune('a'+seq)), backends.AES256)
			return info != backends.KeyInfo{}, err
		}},
	}
}

// TestIntegrityFaults proves that each damaged response is refused, retried
// up to the limit, and reported as a retryable integrity failure with no
// data.
func TestIntegrityFaults(t *testing.T) {
	e := newEnv(t)
	for _, op := range integrityOps(t, e) {
		for _, fault := range op.faults {
			t.Run(op.name+"/"+fault, func(t *testing.T) {
				b := e.open(t, e.config()) // fresh: no cached public key
				e.fake.SetFaults(responseFaults[fault])
				defer e.fake.SetFaults(gcpfake.Faults{})
				e.fake.ResetCalls()
				got, err := op.run(b)
				if got {
					t.Errorf("%s under %s returned data", op.name, fault)
				}
				wantKind(t, op.name+" under "+fault, err, backends.ErrUnavailable)
				if !errors.Is(err, ErrIntegrity) {
					t.Errorf("%s under %s: err = %v, want ErrIntegrity", op.name, fault, err)
				}
				if !backends.Retryable(err) {
					t.Errorf("backends.Retryable(%v) = false, want true", err)
				}
				if n := e.fake.Calls(op.method); n < fastRetry.MaxAttempts {
					t.Errorf("%s under %s: %d %s calls, want at least %d (retried)", op.name, fault, n, op.method, fastRetry.MaxAttempts)
				}
			})
		}
	}
}

// TestCorruptedRequest proves that a request damaged on the way is caught by
// the checksums the backend sends: the service refuses it, the backend
// retries, and the final error is an integrity failure — for Decrypt too,
// where INVALID_ARGUMENT otherwise means a bad ciphertext.
func TestCorruptedRequest(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	b := e.open(t, e.config())
	ct, err := b.Encrypt(ctx, e.aes, []byte("payload"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := b.MAC(ctx, e.hmac, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	e.fake.SetFaults(gcpfake.Faults{CorruptRequest: true})
	defer e.fake.SetFaults(gcpfake.Faults{})
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"Encrypt", func() error { _, err := b.Encrypt(ctx, e.aes, []byte("payload"), nil); return err }},
		{"Decrypt", func() error { _, err := b.Decrypt(ctx, e.aes, ct, nil); return err }},
		{"MAC", func() error { _, err := b.MAC(ctx, e.hmac, []byte("data")); return err }},
		{"VerifyMAC", func() error { return b.VerifyMAC(ctx, e.hmac, []byte("data"), tag.Reveal()) }},
		{"Sign", func() error { _, err := b.Sign(ctx, e.ecdsa, make([]byte, 32)); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.fake.ResetCalls()
			err := tc.run()
			wantKind(t, tc.name+" with a damaged request", err, backends.ErrUnavailable)
			if !errors.Is(err, ErrIntegrity) || errors.Is(err, backends.ErrDecryptionFailed) {
				t.Errorf("err = %v, want an integrity failure and not a decryption failure", err)
			}
			if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument {
				t.Errorf("status.FromError(err).Code() = %v, want InvalidArgument (the service's answer)", st.Code())
			}
			if n := e.fake.TotalCalls(); n != fastRetry.MaxAttempts {
				t.Errorf("%d calls, want %d (retried)", n, fastRetry.MaxAttempts)
			}
		})
	}
}

// TestIntegrityRecovers proves a transient integrity failure is retried
// into success.
func TestIntegrityRecovers(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	b := e.openWith(t, e.config(), func(c kmsClient) kmsClient {
		return &damageOnce{kmsClient: c, n: &calls}
	})
	tag, err := b.MAC(t.Context(), e.hmac, []byte("data"))
	if err != nil {
		t.Fatalf("MAC after one damaged response: %v", err)
	}
	if calls.Load() != 2 || tag.Len() != 32 {
		t.Errorf("%d MacSign calls, tag %d bytes; want 2 (one damaged, one good) and 32", calls.Load(), tag.Len())
	}
}

// damageOnce corrupts the first MacSign response's tag (after the service
// computed its checksum), as a flaky network path would.
type damageOnce struct {
	kmsClient
	n *atomic.Int32
}

func (d *damageOnce) MacSign(ctx context.Context, req *kmspb.MacSignRequest, o ...gax.CallOption) (*kmspb.MacSignResponse, error) {
	r, err := d.kmsClient.MacSign(ctx, req, o...)
	if err == nil && d.n.Add(1) == 1 {
		r.Mac[0] ^= 1
	}
	return r, err
}

// TestCreateKeyLostResponse proves a CreateKey whose first answer was lost
// takes the key its first attempt made, while a real clash still fails.
func TestCreateKeyLostResponse(t *testing.T) {
	e := newEnv(t)
	b := e.openWith(t, e.config(), func(c kmsClient) kmsClient { return &loseFirstCreate{kmsClient: c} })
	info, err := b.CreateKey(t.Context(), "lost-answer", backends.HMAC256)
	if err != nil {
		t.Fatalf("CreateKey with a lost first answer: %v", err)
	}
	if want := testRing + "/cryptoKeys/lost-answer/cryptoKeyVersions/1"; info.Key != want || !info.Enabled {
		t.Errorf("CreateKey = %+v, want key %q enabled", info, want)
	}
	// A clash with a key of another purpose is not mistaken for ours.
	e.fake.CreateKey(testRing, "taken", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	b2 := e.openWith(t, e.config(), func(c kmsClient) kmsClient { return &loseFirstCreate{kmsClient: c, fail: true} })
	_, err = b2.CreateKey(t.Context(), "taken", backends.HMAC256)
	wantKind(t, "CreateKey of a name taken by another kind of key", err, backends.ErrInvalidArgument)
}

// loseFirstCreate lets the first CreateCryptoKey reach the service but
// answers UNAVAILABLE, as a dropped connection would (or, with fail, does
// not send it at all).
type loseFirstCreate struct {
	kmsClient
	fail bool
	n    atomic.Int32
}

func (l *loseFirstCreate) CreateCryptoKey(ctx context.Context, req *kmspb.CreateCryptoKeyRequest, o ...gax.CallOption) (*kmspb.CryptoKey, error) {
	if l.n.Add(1) == 1 {
		if !l.fail {
			_, _ = l.kmsClient.CreateCryptoKey(ctx, req, o...)
		}
		return nil, status.Error(codes.Unavailable, "connection reset")
	}
	return l.kmsClient.CreateCryptoKey(ctx, req, o...)
}
