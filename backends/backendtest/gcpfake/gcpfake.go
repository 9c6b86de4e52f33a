// Package gcpfake is an in-process fake of the GCP Cloud KMS gRPC service
// (google.cloud.kms.v1.KeyManagementService), so tests run the real
// cloud.google.com/go/kms client — its gRPC stubs, call options and error
// wrapping — against it:
//
//	fake := gcpfake.New(t)
//	client, err := kms.NewKeyManagementClient(ctx, fake.ClientOptions()...)
//
// ClientOptions is option.WithEndpoint(fake.Addr()),
// option.WithoutAuthentication() and an insecure gRPC dial: the fake listens
// on 127.0.0.1 without TLS.
//
// # Behaviour
//
// The fake implements CreateKeyRing, GetKeyRing, CreateCryptoKey,
// GetCryptoKey, GetCryptoKeyVersion, UpdateCryptoKeyVersion (the state
// field: ENABLED or DISABLED), Encrypt, Decrypt, MacSign, MacVerify,
// AsymmetricSign, GetPublicKey and GenerateRandomBytes for three kinds of
// keys: ENCRYPT_DECRYPT (GOOGLE_SYMMETRIC_ENCRYPTION), MAC (HMAC_SHA256) and
// ASYMMETRIC_SIGN (EC_SIGN_P256_SHA256). The cryptography is real: every
// CryptoKeyVersion has its own random AES-256-GCM secret, HMAC secret or
// P-256 private key. A ciphertext names the CryptoKey (by a random per-key
// identifier) and the version that made it, and is authenticated together
// with that header and the additional_authenticated_data, so Decrypt picks
// the version from the ciphertext; a wrong AAD, a tampered ciphertext or one
// from another CryptoKey is INVALID_ARGUMENT, as the service answers.
//
// Errors follow the service: a malformed resource name or an out-of-range
// argument is INVALID_ARGUMENT; an unknown key ring, key or version is
// NOT_FOUND; an existing CryptoKey id is ALREADY_EXISTS; a version that is
// not ENABLED ("is not enabled, current state is: DISABLED") and a key of
// the wrong purpose ("has incorrect key purpose") are FAILED_PRECONDITION.
// GenerateRandomBytes needs a location, 8..1024 bytes and the HSM protection
// level. HSM keys limit plaintext plus AAD to 8 KiB, SOFTWARE keys each to
// 64 KiB.
//
// # Integrity fields
//
// Every *_crc32c a request carries (CRC32C, Castagnoli) is checked; a
// mismatch is INVALID_ARGUMENT naming the field. Every verified_* flag of the
// response is true exactly when the matching checksum was supplied and
// checked, and every response checksum (ciphertext_crc32c, plaintext_crc32c,
// mac_crc32c, signature_crc32c, pem_crc32c, data_crc32c) is set, as is
// MacVerifyResponse.verified_success_integrity.
//
// # Faults
//
// [Fake.SetFaults] injects transport failures (a deterministic fraction of
// calls, a full outage or the next N calls answered UNAVAILABLE), added
// latency (cut short when the client gives up), requests damaged in transit
// (a payload bit flipped before the checksum is checked) and damaged
// responses (a response checksum off by one, verified_* flags dropped, a
// response naming another resource), so a client's retry and integrity
// checks can be proven. [Fake.Calls] counts the RPCs each method received,
// faulted ones included. A Fake is safe for concurrent use.
package gcpfake

import (
	"context"
	"fmt"
	"hash/crc32"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keybroker/keybroker/backends/backendtest"
)

// Faults are the failures the fake injects. The zero value injects none.
// Faults apply to RPCs only; the Go helpers (CreateKey, Disable...) never
// fail.
type Faults struct {
	// UnavailableFraction is the fraction (0..1) of calls answered
	// UNAVAILABLE. The choice is deterministic: an accumulator adds the
	// fraction on every call and fails the call each time it reaches one, so
	// 0.5 fails every second call and 0.25 every fourth.
	UnavailableFraction float64
	// Outage answers every call UNAVAILABLE.
	Outage bool
	// FailNext answers the next FailNext calls UNAVAILABLE.
	FailNext int
	// Latency delays every call, or until the client gives up.
	Latency time.Duration
	// CorruptRequest flips one bit of the request's payload (plaintext,
	// ciphertext, data, digest) on arrival, as if damaged in transit, so
	// the checksum the client supplied no longer matches.
	CorruptRequest bool
	// CorruptResponseCRC adds one to every checksum in the response (and
	// inverts MacVerifyResponse.verified_success_integrity); the data stays
	// intact.
	CorruptResponseCRC bool
	// DropVerified sets every verified_* flag of the response to false, as
	// if the request's checksums never reached the service.
	DropVerified bool
	// WrongName makes every resource name in the response name another
	// CryptoKey.
	WrongName bool
}

// Fake is a fake Cloud KMS service on a local gRPC server.
type Fake struct {
	tb   testing.TB
	lis  net.Listener
	srv  *grpc.Server
	addr string

	mu    sync.RWMutex
	rings map[string]bool
	keys  map[string]*cryptoKey // by CryptoKey name

	fmu                     sync.Mutex
	faults                  Faults
	acc                     float64 // UnavailableFraction accumulator
	backendtest.CallCounter         // calls by operation
}

// New starts a fake on 127.0.0.1, stopped when tb's test ends.
func New(tb testing.TB) *Fake {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("gcpfake: listen: %v", err)
	}
	f := &Fake{
		tb:    tb,
		lis:   lis,
		addr:  lis.Addr().String(),
		rings: make(map[string]bool),
		keys:  make(map[string]*cryptoKey),
	}
	f.srv = grpc.NewServer(grpc.UnaryInterceptor(f.intercept))
	kmspb.RegisterKeyManagementServiceServer(f.srv, &server{Fake: f})
	go func() { _ = f.srv.Serve(lis) }()
	tb.Cleanup(f.srv.Stop)
	return f
}

// Addr is the fake's host:port.
func (f *Fake) Addr() string { return f.addr }

// ClientOptions are the options that point the real client at the fake:
// its endpoint, no authentication and an insecure (plaintext) dial.
func (f *Fake) ClientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(f.addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// SetFaults replaces the injected faults and resets the
// UnavailableFraction accumulator.
func (f *Fake) SetFaults(fl Faults) {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.faults = fl
	f.acc = 0
}

// admit counts a call and decides its transport-level fate. It returns the
// faults in force for the rest of the call.
func (f *Fake) admit(method string) (Faults, error) {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.Count(method)
	fl := f.faults
	switch {
	case fl.Outage:
		return fl, status.Error(codes.Unavailable, "The service is currently unavailable.")
	case f.faults.FailNext > 0:
		f.faults.FailNext--
		return fl, status.Error(codes.Unavailable, "The service is currently unavailable.")
	case fl.UnavailableFraction > 0:
		f.acc += fl.UnavailableFraction
		if f.acc >= 1 {
			f.acc--
			return fl, status.Error(codes.Unavailable, "The service is currently unavailable.")
		}
	}
	return fl, nil
}

func (f *Fake) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	fl, err := f.admit(method)
	if fl.Latency > 0 {
		t := time.NewTimer(fl.Latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if err != nil {
		return nil, err
	}
	if fl.CorruptRequest {
		corruptRequest(req)
	}
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, err
	}
	tamper(resp, fl)
	return resp, nil
}

// ---- integrity fields ----

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC32C checksum of b in the form the API carries it.
func CRC32C(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, castagnoli)))
}

// checkCRC verifies an optional request checksum. It reports whether one
// was supplied (and so verified).
func checkCRC(field, dataField string, data []byte, sum *wrapperspb.Int64Value) (bool, error) {
	if sum == nil {
		return false, nil
	}
	if sum.GetValue() != int64(crc32.Checksum(data, castagnoli)) {
		return false, status.Errorf(codes.InvalidArgument,
			"The checksum in field %s did not match the data in field %s.", field, dataField)
	}
	return true, nil
}

func flip(b []byte) {
	if len(b) > 0 {
		b[len(b)/2] ^= 0x10
	}
}

func corruptRequest(req any) {
	switch r := req.(type) {
	case *kmspb.EncryptRequest:
		flip(r.Plaintext)
	case *kmspb.DecryptRequest:
		flip(r.Ciphertext)
	case *kmspb.MacSignRequest:
		flip(r.Data)
	case *kmspb.MacVerifyRequest:
		flip(r.Data)
	case *kmspb.AsymmetricSignRequest:
		flip(r.GetDigest().GetSha256())
		flip(r.Data)
	}
}

func bump(v *wrapperspb.Int64Value) *wrapperspb.Int64Value {
	if v == nil {
		return nil
	}
	return wrapperspb.Int64((v.GetValue() + 1) & 0xffffffff)
}

// otherName names another CryptoKey (or a version of it) than name does.
func otherName(name string) string {
	const seg = "/cryptoKeys/"
	i := strings.Index(name, seg)
	if i < 0 {
		return name + "-other"
	}
	j := i + len(seg)
	k := strings.IndexByte(name[j:], '/')
	if k < 0 {
		return name + "-other"
	}
	return name[:j+k] + "-other" + name[j+k:]
}

// tamper applies the response faults to a handler's fresh response.
func tamper(resp any, fl Faults) {
	switch r := resp.(type) {
	case *kmspb.EncryptResponse:
		if fl.CorruptResponseCRC {
			r.CiphertextCrc32C = bump(r.CiphertextCrc32C)
		}
		if fl.DropVerified {
			r.VerifiedPlaintextCrc32C, r.VerifiedAdditionalAuthenticatedDataCrc32C = false, false
		}
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.DecryptResponse:
		if fl.CorruptResponseCRC {
			r.PlaintextCrc32C = bump(r.PlaintextCrc32C)
		}
	case *kmspb.MacSignResponse:
		if fl.CorruptResponseCRC {
			r.MacCrc32C = bump(r.MacCrc32C)
		}
		if fl.DropVerified {
			r.VerifiedDataCrc32C = false
		}
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.MacVerifyResponse:
		if fl.CorruptResponseCRC {
			r.VerifiedSuccessIntegrity = !r.VerifiedSuccessIntegrity
		}
		if fl.DropVerified {
			r.VerifiedDataCrc32C, r.VerifiedMacCrc32C = false, false
		}
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.AsymmetricSignResponse:
		if fl.CorruptResponseCRC {
			r.SignatureCrc32C = bump(r.SignatureCrc32C)
		}
		if fl.DropVerified {
			r.VerifiedDigestCrc32C, r.VerifiedDataCrc32C = false, false
		}
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.PublicKey:
		if fl.CorruptResponseCRC {
			r.PemCrc32C = bump(r.PemCrc32C)
		}
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.GenerateRandomBytesResponse:
		if fl.CorruptResponseCRC {
			r.DataCrc32C = bump(r.DataCrc32C)
		}
	case *kmspb.CryptoKey:
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	case *kmspb.CryptoKeyVersion:
		if fl.WrongName {
			r.Name = otherName(r.Name)
		}
	}
}

func errorf(c codes.Code, format string, args ...any) error {
	return status.Error(c, fmt.Sprintf(format, args...))
}
