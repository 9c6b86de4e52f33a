// Package gcpkms is keybroker's GCP Cloud KMS root of trust: root keys are
// Cloud KMS CryptoKeys, used through the official gRPC client
// (cloud.google.com/go/kms/apiv1), and never leave the service.
//
// # Key names
//
// Keys are named by Cloud KMS resource names, each operation taking the form
// the service takes:
//
//   - Encrypt takes a CryptoKey (projects/P/locations/L/keyRings/R/cryptoKeys/K;
//     its primary version encrypts) or a CryptoKeyVersion (…/cryptoKeyVersions/N).
//   - Decrypt takes a CryptoKey; the ciphertext names the version that made it.
//   - MAC, VerifyMAC, Sign and PublicKey take a CryptoKeyVersion. MAC and
//     signing keys have no primary version in Cloud KMS, so the backend does
//     not guess one: given a CryptoKey it refuses with ErrInvalidArgument
//     naming the expected form (or ErrNotFound when the CryptoKey does not
//     exist, found by one GetCryptoKey on that error path). The same holds for
//     Decrypt given a CryptoKeyVersion.
//   - Describe takes either. A CryptoKey reports its primary version's
//     algorithm and state; a CryptoKey without a primary (MAC and signing
//     keys) reports its template's algorithm and Enabled false, since it
//     must be used through a version.
//
// CreateKey creates a CryptoKey in Config.KeyRing with the name hint as its
// id (protection level HSM unless configured otherwise) and returns the name
// to use: the CryptoKey for aes-256, version 1 for hmac-256 and ecdsa-p256,
// after waiting for the service to finish generating it.
//
// # Integrity
//
// Every request carries the CRC32C of every field that has a *_crc32c
// companion (plaintext, additional_authenticated_data, ciphertext, data,
// mac, digest). Every response is checked before any of it is used: each
// verified_* flag for a checksum sent must be true, each response checksum
// (ciphertext_crc32c, plaintext_crc32c, mac_crc32c, signature_crc32c,
// pem_crc32c, data_crc32c) must be present and match its data,
// verified_success_integrity must agree with MacVerify's success, and the
// resource name in the response must be the one asked for (for Encrypt of a
// CryptoKey, a version of that CryptoKey). A failure discards the response —
// secrets in it are zeroed — and is retried like an unavailable service; if
// the retries run out the error wraps [ErrIntegrity] and is classified
// backends.ErrUnavailable.
//
// # Retries and errors
//
// The client library's retries are turned off per call and replaced by the
// backend's own loop ([RetryConfig]): UNAVAILABLE, DEADLINE_EXCEEDED, a
// request checksum the service rejected and an integrity failure are retried
// with jittered exponential backoff, up to MaxAttempts and never past the
// caller's deadline. Every method retries, not only Encrypt and Decrypt;
// only Health makes a single attempt, to report the service as it is. There
// is no per-attempt timeout (the library's 60s default is turned off too):
// deadlines come from the caller's context. INTERNAL is not retried.
// Throttling (RESOURCE_EXHAUSTED) is not retried here: it is returned as
// backends.ErrThrottled for the caller to back off. CreateKey is retried
// too: when a retry finds the name taken by a key of the requested purpose,
// algorithm and protection level, it takes it as the one its lost first
// attempt created.
//
// Errors are *backends.Error whose cause keeps the gRPC status reachable
// (status.FromError, or errors.As to interface{ GRPCStatus() *status.Status }).
// NOT_FOUND is ErrNotFound; PERMISSION_DENIED and UNAUTHENTICATED are
// ErrPermissionDenied; INVALID_ARGUMENT is ErrDecryptionFailed from Decrypt
// (the service's answer to a wrong AAD, a tampered or a foreign ciphertext)
// and ErrInvalidArgument elsewhere, as are ALREADY_EXISTS and a
// FAILED_PRECONDITION about the key's purpose; any other FAILED_PRECONDITION
// (a version not ENABLED) is ErrDisabled; RESOURCE_EXHAUSTED is
// ErrThrottled; UNAVAILABLE, DEADLINE_EXCEEDED and INTERNAL are
// ErrUnavailable. Arguments are checked by backends.Instrument, which every
// opened backend is behind (backends.Registry.Open, the central tier's
// roots), before any request is sent; the backend itself does not repeat
// the checks.
//
// # Concurrency
//
// A Backend is safe for concurrent use: it holds one client (a gRPC
// connection pool) and a cache of public keys, which are immutable per
// CryptoKeyVersion. Close closes the client; calls after Close, and calls
// in flight when it happens, fail with ErrUnavailable.
//
// # Metrics
//
// With Config.Metrics set, the backend counts operations by op and result
// code (keybroker_gcpkms_calls_total), retries
// (keybroker_gcpkms_retries_total), discarded responses
// (keybroker_gcpkms_integrity_failures_total) and observes operation
// durations. Key names are never labels.
//
// # Limitations
//
// Signing supports EC_SIGN_P256_SHA256 only (a 32-byte SHA-256 digest);
// PublicKey also parses Ed25519 and other PKIX keys it can represent. There
// is no DataKeyGenerator: Cloud KMS has no data-key call. A URI cannot carry
// credentials or transport options: Open uses Application Default
// Credentials; use New for anything else.
package gcpkms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

const scheme = "gcpkms"

// Resource kinds, as backends.GCPResourceKind names them.
const (
	kindKey     = "cryptoKey"
	kindVersion = "cryptoKeyVersion"
)

// minRandom is GenerateRandomBytes' smallest length.
const minRandom = 8

// Backend is a GCP Cloud KMS root of trust.
type Backend struct {
	api        kmsClient
	keyRing    string
	location   string
	protection kmspb.ProtectionLevel
	retry      RetryConfig
	logger     *slog.Logger
	metrics    *metrics
	closed     atomic.Bool
	pubs       sync.Map // CryptoKeyVersion name -> crypto.PublicKey
}

var (
	_ backends.Backend           = (*Backend)(nil)
	_ backends.MACer             = (*Backend)(nil)
	_ backends.Signer            = (*Backend)(nil)
	_ backends.KeyCreator        = (*Backend)(nil)
	_ backends.CreatesAlgorithms = (*Backend)(nil)
	_ backends.HealthChecker     = (*Backend)(nil)

	_ backends.OpenFunc = Open
)

// Open opens the backend a gcpkms: URI names:
//
//	gcpkms:projects/p/locations/europe-west1/keyRings/r
//	gcpkms:projects/p/locations/europe-west1/keyRings/r;endpoint=kms.internal:8443
//	gcpkms:projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k
//	gcpkms:projects/p/locations/europe-west1/keyRings/r/cryptoKeys/m/cryptoKeyVersions/1
//
// The key ring (of the resource, or containing it) becomes Config.KeyRing;
// a CryptoKey or CryptoKeyVersion is accepted and otherwise ignored, since
// keys are named per call. endpoint sets Config.Endpoint. Credentials are
// Application Default Credentials and retries use the defaults.
func Open(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
	cfg, err := configFromURI(uri, opts)
	if err != nil {
		return nil, err
	}
	b, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func configFromURI(uri string, opts backends.Options) (Config, error) {
	u, err := backends.ParseGCPKMSURI(uri)
	if err != nil {
		return Config{}, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	return Config{
		KeyRing:  u.KeyRing(),
		Endpoint: u.Endpoint,
		Logger:   opts.Logger,
		Metrics:  opts.Metrics,
	}, nil
}

// New builds a backend. It sends no request: the client connects lazily,
// so a wrong endpoint or credential shows on the first call (or Health).
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	if err := backends.ContextError(scheme, "open", "", ctx); err != nil {
		return nil, err
	}
	var opts []option.ClientOption
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	opts = append(opts, cfg.ClientOptions...)
	c, err := kms.NewKeyManagementClient(ctx, opts...)
	if err != nil {
		// Almost always credentials that cannot be found or loaded.
		return nil, backends.Errorf(scheme, "open", "", backends.ErrPermissionDenied, "building the Cloud KMS client: %w", err)
	}
	b, err := newBackend(cfg, c)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return b, nil
}

// newBackend builds a backend over any client; cfg must be valid.
func newBackend(cfg Config, c kmsClient) (*Backend, error) {
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	protection := cfg.ProtectionLevel
	if protection == kmspb.ProtectionLevel_PROTECTION_LEVEL_UNSPECIFIED {
		protection = kmspb.ProtectionLevel_HSM
	}
	return &Backend{
		api:        c,
		keyRing:    cfg.KeyRing,
		location:   location(cfg.KeyRing),
		protection: protection,
		retry:      cfg.Retry.withDefaults(),
		logger:     logger,
		metrics:    m,
	}, nil
}

// Close closes the client. It is safe to call more than once.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	if err := b.api.Close(); err != nil {
		return backends.NewError(scheme, "close", "", backends.ErrUnavailable, err)
	}
	return nil
}

// misnamed answers an operation given a resource of the wrong kind: the
// resource's absence is ErrNotFound, as for any unknown key; otherwise the
// form is wrong and the error says which one op takes.
func (b *Backend) misnamed(ctx context.Context, op, key, kind, want string) error {
	var err error
	switch kind {
	case kindKey:
		_, err = call(ctx, b, op, key, b.retry.MaxAttempts,
			func(ctx context.Context) (*kmspb.CryptoKey, error) {
				return b.api.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key}, oneShot...)
			},
			func(r *kmspb.CryptoKey) error { return checkName(r.GetName(), key) })
	case kindVersion:
		_, err = call(ctx, b, op, key, b.retry.MaxAttempts,
			func(ctx context.Context) (*kmspb.CryptoKeyVersion, error) {
				return b.api.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: key}, oneShot...)
			},
			func(r *kmspb.CryptoKeyVersion) error { return checkName(r.GetName(), key) })
	default:
		return backends.Errorf(scheme, op, key, backends.ErrInvalidArgument,
			"not a Cloud KMS %s resource name", want)
	}
	if errors.Is(err, backends.ErrNotFound) || errors.Is(err, context.Canceled) || ctx.Err() != nil || b.closed.Load() {
		return err
	}
	form := map[string]string{kindKey: "a CryptoKey", kindVersion: "a CryptoKeyVersion"}[kind]
	hint := ""
	if kind == kindKey {
		hint = " (name one: …/cryptoKeyVersions/N)"
	}
	return backends.Errorf(scheme, op, key, backends.ErrInvalidArgument,
		"%s takes a %s%s, not %s", op, want, hint, form)
}

// Encrypt implements backends.Backend. key is a CryptoKey (its primary
// version encrypts) or a CryptoKeyVersion.
func (b *Backend) Encrypt(ctx context.Context, key string, plaintext, aad []byte) (_ []byte, err error) {
	const op = "encrypt"
	defer b.metrics.observe(op, time.Now(), &err)
	kind := backends.GCPResourceKind(key)
	if kind != kindKey && kind != kindVersion {
		return nil, b.misnamed(ctx, op, key, kind, "CryptoKey or CryptoKeyVersion")
	}
	req := &kmspb.EncryptRequest{
		Name:                              key,
		Plaintext:                         plaintext,
		AdditionalAuthenticatedData:       aad,
		PlaintextCrc32C:                   crc32c(plaintext),
		AdditionalAuthenticatedDataCrc32C: crc32c(aad),
	}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.EncryptResponse, error) { return b.api.Encrypt(ctx, req, oneShot...) },
		func(r *kmspb.EncryptResponse) error {
			if kind == kindKey {
				// The service encrypts with the primary version and says which.
				v, ok := strings.CutPrefix(r.GetName(), key+"/cryptoKeyVersions/")
				if !ok || strings.Contains(v, "/") || backends.GCPResourceKind(r.GetName()) != kindVersion {
					return integrityf("response names %q, not a version of %q", r.GetName(), key)
				}
			} else if err := checkName(r.GetName(), key); err != nil {
				return err
			}
			return errors.Join(
				checkVerified("plaintext_crc32c", r.GetVerifiedPlaintextCrc32C()),
				checkVerified("additional_authenticated_data_crc32c", r.GetVerifiedAdditionalAuthenticatedDataCrc32C()),
				checkSum("ciphertext_crc32c", r.GetCiphertext(), r.GetCiphertextCrc32C()))
		})
	if err != nil {
		return nil, err
	}
	return resp.GetCiphertext(), nil
}

// Decrypt implements backends.Backend. key is the CryptoKey; the
// ciphertext names the version.
func (b *Backend) Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (_ *secret.Bytes, err error) {
	const op = "decrypt"
	defer b.metrics.observe(op, time.Now(), &err)
	if kind := backends.GCPResourceKind(key); kind != kindKey {
		return nil, b.misnamed(ctx, op, key, kind, "CryptoKey")
	}
	req := &kmspb.DecryptRequest{
		Name:                              key,
		Ciphertext:                        ciphertext,
		AdditionalAuthenticatedData:       aad,
		CiphertextCrc32C:                  crc32c(ciphertext),
		AdditionalAuthenticatedDataCrc32C: crc32c(aad),
	}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.DecryptResponse, error) { return b.api.Decrypt(ctx, req, oneShot...) },
		func(r *kmspb.DecryptResponse) error {
			// DecryptResponse names no resource and has no verified_* flags:
			// the service fails the call when a request checksum is wrong.
			if err := checkSum("plaintext_crc32c", r.GetPlaintext(), r.GetPlaintextCrc32C()); err != nil {
				clear(r.GetPlaintext())
				return err
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return secret.New(resp.GetPlaintext()), nil
}

// GenerateRandom implements backends.Backend with GenerateRandomBytes at
// the key ring's location, protection level HSM. The service returns at
// least 8 bytes; shorter requests are cut from 8.
func (b *Backend) GenerateRandom(ctx context.Context, n int) (_ []byte, err error) {
	const op = "generate-random"
	defer b.metrics.observe(op, time.Now(), &err)
	data, err := b.random(ctx, op, max(n, minRandom), b.retry.MaxAttempts)
	if err != nil {
		return nil, err
	}
	clear(data[n:])
	return data[:n:n], nil
}

func (b *Backend) random(ctx context.Context, op string, n, attempts int) ([]byte, error) {
	req := &kmspb.GenerateRandomBytesRequest{
		Location:        b.location,
		LengthBytes:     int32(n),
		ProtectionLevel: kmspb.ProtectionLevel_HSM,
	}
	resp, err := call(ctx, b, op, "", attempts,
		func(ctx context.Context) (*kmspb.GenerateRandomBytesResponse, error) {
			return b.api.GenerateRandomBytes(ctx, req, oneShot...)
		},
		func(r *kmspb.GenerateRandomBytesResponse) error {
			if len(r.GetData()) != n {
				return integrityf("asked for %d random bytes, got %d", n, len(r.GetData()))
			}
			return checkSum("data_crc32c", r.GetData(), r.GetDataCrc32C())
		})
	if err != nil {
		return nil, err
	}
	return resp.GetData(), nil
}

// algorithms maps the Cloud KMS algorithms keybroker uses to its own.
var algorithms = map[kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm]backends.Algorithm{
	kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION: backends.AES256,
	kmspb.CryptoKeyVersion_HMAC_SHA256:                 backends.HMAC256,
	kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:         backends.ECDSAP256,
	kmspb.CryptoKeyVersion_EC_SIGN_ED25519:             backends.Ed25519,
}

// Describe implements backends.Backend for a CryptoKey or a
// CryptoKeyVersion. An algorithm keybroker does not use is ErrUnsupported.
func (b *Backend) Describe(ctx context.Context, key string) (_ backends.KeyInfo, err error) {
	const op = "describe"
	defer b.metrics.observe(op, time.Now(), &err)
	if key == "" {
		return backends.KeyInfo{}, backends.Errorf(scheme, op, key, backends.ErrInvalidArgument, "empty key name")
	}
	var (
		alg     kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
		enabled bool
	)
	switch kind := backends.GCPResourceKind(key); kind {
	case kindKey:
		ck, err := call(ctx, b, op, key, b.retry.MaxAttempts,
			func(ctx context.Context) (*kmspb.CryptoKey, error) {
				return b.api.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key}, oneShot...)
			},
			func(r *kmspb.CryptoKey) error { return checkName(r.GetName(), key) })
		if err != nil {
			return backends.KeyInfo{}, err
		}
		alg = ck.GetVersionTemplate().GetAlgorithm()
		if p := ck.GetPrimary(); p != nil {
			alg, enabled = p.GetAlgorithm(), p.GetState() == kmspb.CryptoKeyVersion_ENABLED
		}
	case kindVersion:
		v, err := b.getVersion(ctx, op, key)
		if err != nil {
			return backends.KeyInfo{}, err
		}
		alg, enabled = v.GetAlgorithm(), v.GetState() == kmspb.CryptoKeyVersion_ENABLED
	default:
		return backends.KeyInfo{}, b.misnamed(ctx, op, key, kind, "CryptoKey or CryptoKeyVersion")
	}
	a, ok := algorithms[alg]
	if !ok {
		return backends.KeyInfo{}, backends.Errorf(scheme, op, key, backends.ErrUnsupported, "algorithm %s is not one keybroker uses", alg)
	}
	return backends.KeyInfo{Key: key, Algorithm: a, Enabled: enabled}, nil
}

func (b *Backend) getVersion(ctx context.Context, op, key string) (*kmspb.CryptoKeyVersion, error) {
	return call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.CryptoKeyVersion, error) {
			return b.api.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: key}, oneShot...)
		},
		func(r *kmspb.CryptoKeyVersion) error { return checkName(r.GetName(), key) })
}

// MAC implements backends.MACer with MacSign; key is a CryptoKeyVersion.
func (b *Backend) MAC(ctx context.Context, key string, data []byte) (_ *secret.Bytes, err error) {
	const op = "mac"
	defer b.metrics.observe(op, time.Now(), &err)
	if kind := backends.GCPResourceKind(key); kind != kindVersion {
		return nil, b.misnamed(ctx, op, key, kind, "CryptoKeyVersion")
	}
	req := &kmspb.MacSignRequest{Name: key, Data: data, DataCrc32C: crc32c(data)}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.MacSignResponse, error) { return b.api.MacSign(ctx, req, oneShot...) },
		func(r *kmspb.MacSignResponse) error {
			err := errors.Join(
				checkName(r.GetName(), key),
				checkVerified("data_crc32c", r.GetVerifiedDataCrc32C()),
				checkSum("mac_crc32c", r.GetMac(), r.GetMacCrc32C()))
			if err != nil {
				clear(r.GetMac())
			}
			return err
		})
	if err != nil {
		return nil, err
	}
	return secret.New(resp.GetMac()), nil
}

// VerifyMAC implements backends.MACer with MacVerify; key is a
// CryptoKeyVersion. A tag that does not verify is ErrDecryptionFailed.
func (b *Backend) VerifyMAC(ctx context.Context, key string, data, tag []byte) (err error) {
	const op = "verify-mac"
	defer b.metrics.observe(op, time.Now(), &err)
	if kind := backends.GCPResourceKind(key); kind != kindVersion {
		return b.misnamed(ctx, op, key, kind, "CryptoKeyVersion")
	}
	req := &kmspb.MacVerifyRequest{Name: key, Data: data, DataCrc32C: crc32c(data), Mac: tag, MacCrc32C: crc32c(tag)}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.MacVerifyResponse, error) {
			return b.api.MacVerify(ctx, req, oneShot...)
		},
		func(r *kmspb.MacVerifyResponse) error {
			var integrity error
			if r.GetVerifiedSuccessIntegrity() != r.GetSuccess() {
				integrity = integrityf("verified_success_integrity contradicts success")
			}
			return errors.Join(
				checkName(r.GetName(), key),
				checkVerified("data_crc32c", r.GetVerifiedDataCrc32C()),
				checkVerified("mac_crc32c", r.GetVerifiedMacCrc32C()),
				integrity)
		})
	if err != nil {
		return err
	}
	if !resp.GetSuccess() {
		return backends.Errorf(scheme, op, key, backends.ErrDecryptionFailed, "MAC does not verify")
	}
	return nil
}

// Sign implements backends.Signer with AsymmetricSign over a SHA-256
// digest; key is an EC_SIGN_P256_SHA256 CryptoKeyVersion.
func (b *Backend) Sign(ctx context.Context, key string, digest []byte) (_ []byte, err error) {
	const op = "sign"
	defer b.metrics.observe(op, time.Now(), &err)
	if len(digest) != sha256.Size {
		return nil, backends.Errorf(scheme, op, key, backends.ErrInvalidArgument,
			"digest is %d bytes; ecdsa-p256 keys sign a %d-byte SHA-256 digest", len(digest), sha256.Size)
	}
	if kind := backends.GCPResourceKind(key); kind != kindVersion {
		return nil, b.misnamed(ctx, op, key, kind, "CryptoKeyVersion")
	}
	req := &kmspb.AsymmetricSignRequest{
		Name:         key,
		Digest:       &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest}},
		DigestCrc32C: crc32c(digest),
	}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.AsymmetricSignResponse, error) {
			return b.api.AsymmetricSign(ctx, req, oneShot...)
		},
		func(r *kmspb.AsymmetricSignResponse) error {
			return errors.Join(
				checkName(r.GetName(), key),
				checkVerified("digest_crc32c", r.GetVerifiedDigestCrc32C()),
				checkSum("signature_crc32c", r.GetSignature(), r.GetSignatureCrc32C()))
		})
	if err != nil {
		return nil, err
	}
	return resp.GetSignature(), nil
}

// PublicKey implements backends.Signer with GetPublicKey; key is a
// CryptoKeyVersion. Public keys are cached: a version's key never changes.
func (b *Backend) PublicKey(ctx context.Context, key string) (_ crypto.PublicKey, err error) {
	const op = "public-key"
	defer b.metrics.observe(op, time.Now(), &err)
	if key == "" {
		return nil, backends.Errorf(scheme, op, key, backends.ErrInvalidArgument, "empty key name")
	}
	if b.closed.Load() {
		return nil, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "backend is closed")
	}
	if pub, ok := b.pubs.Load(key); ok {
		return pub, nil
	}
	if kind := backends.GCPResourceKind(key); kind != kindVersion {
		return nil, b.misnamed(ctx, op, key, kind, "CryptoKeyVersion")
	}
	resp, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.PublicKey, error) {
			return b.api.GetPublicKey(ctx, &kmspb.GetPublicKeyRequest{Name: key}, oneShot...)
		},
		func(r *kmspb.PublicKey) error {
			return errors.Join(
				checkName(r.GetName(), key),
				checkSum("pem_crc32c", []byte(r.GetPem()), r.GetPemCrc32C()))
		})
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(resp.GetPem()))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "%w: response holds no PEM PUBLIC KEY block", ErrIntegrity)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "%w: parsing the public key: %w", ErrIntegrity, err)
	}
	switch pub.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
	default:
		return nil, backends.Errorf(scheme, op, key, backends.ErrUnsupported, "public key is %T, not ECDSA or Ed25519", pub)
	}
	b.pubs.Store(key, pub)
	return pub, nil
}

// createSpec is how a keybroker algorithm is created in Cloud KMS.
type createSpec struct {
	purpose   kmspb.CryptoKey_CryptoKeyPurpose
	algorithm kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
}

var createSpecs = map[backends.Algorithm]createSpec{
	backends.AES256:    {kmspb.CryptoKey_ENCRYPT_DECRYPT, kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION},
	backends.HMAC256:   {kmspb.CryptoKey_MAC, kmspb.CryptoKeyVersion_HMAC_SHA256},
	backends.ECDSAP256: {kmspb.CryptoKey_ASYMMETRIC_SIGN, kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256},
}

// CreatableAlgorithms implements backends.CreatesAlgorithms.
func (b *Backend) CreatableAlgorithms() []backends.Algorithm {
	return []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256}
}

var cryptoKeyID = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)

// CreateKey implements backends.KeyCreator: it creates CryptoKey name in
// Config.KeyRing. The returned KeyInfo.Key is the CryptoKey for aes-256 and
// its version 1 for hmac-256 and ecdsa-p256, returned once the service has
// generated it. An existing id is ErrInvalidArgument.
func (b *Backend) CreateKey(ctx context.Context, name string, alg backends.Algorithm) (_ backends.KeyInfo, err error) {
	const op = "create-key"
	defer b.metrics.observe(op, time.Now(), &err)
	spec, ok := createSpecs[alg]
	switch {
	case !alg.Valid():
		return backends.KeyInfo{}, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument, "unknown algorithm %q", alg)
	case !ok:
		return backends.KeyInfo{}, backends.Errorf(scheme, op, name, backends.ErrUnsupported, "cannot create %s keys", alg)
	case !cryptoKeyID.MatchString(name):
		return backends.KeyInfo{}, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument, "CryptoKey id must match %s", cryptoKeyID)
	}
	key := b.keyRing + "/cryptoKeys/" + name
	req := &kmspb.CreateCryptoKeyRequest{
		Parent:      b.keyRing,
		CryptoKeyId: name,
		CryptoKey: &kmspb.CryptoKey{
			Purpose: spec.purpose,
			VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
				Algorithm:       spec.algorithm,
				ProtectionLevel: b.protection,
			},
		},
	}
	attempt := 0
	ck, err := call(ctx, b, op, key, b.retry.MaxAttempts,
		func(ctx context.Context) (*kmspb.CryptoKey, error) {
			attempt++
			ck, err := b.api.CreateCryptoKey(ctx, req, oneShot...)
			if attempt == 1 || status.Code(err) != codes.AlreadyExists {
				return ck, err
			}
			// An earlier attempt may have created the key and lost the
			// answer (or had it fail its integrity check). A key of the
			// same purpose, algorithm and protection level is taken as
			// that one; any other is a real name clash.
			got, gerr := b.api.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key}, oneShot...)
			if gerr != nil {
				return nil, gerr
			}
			if t := got.GetVersionTemplate(); got.GetPurpose() != spec.purpose ||
				t.GetAlgorithm() != spec.algorithm || t.GetProtectionLevel() != b.protection {
				return nil, err
			}
			return got, nil
		},
		func(r *kmspb.CryptoKey) error {
			if r.GetPurpose() != spec.purpose {
				return integrityf("created key has purpose %s, want %s", r.GetPurpose(), spec.purpose)
			}
			return checkName(r.GetName(), key)
		})
	if err != nil {
		return backends.KeyInfo{}, err
	}
	if alg == backends.AES256 {
		p := ck.GetPrimary()
		return backends.KeyInfo{Key: key, Algorithm: alg, Enabled: p.GetState() == kmspb.CryptoKeyVersion_ENABLED}, nil
	}
	// MAC and signing keys have no primary; their first version is 1, and
	// asymmetric versions start PENDING_GENERATION.
	version := key + "/cryptoKeyVersions/1"
	for n := 1; ; n++ {
		v, err := b.getVersion(ctx, op, version)
		if err != nil {
			return backends.KeyInfo{}, err
		}
		if v.GetAlgorithm() != spec.algorithm {
			return backends.KeyInfo{}, backends.Errorf(scheme, op, version, backends.ErrUnavailable,
				"%w: created version has algorithm %s, want %s", ErrIntegrity, v.GetAlgorithm(), spec.algorithm)
		}
		if v.GetState() != kmspb.CryptoKeyVersion_PENDING_GENERATION {
			return backends.KeyInfo{Key: version, Algorithm: alg, Enabled: v.GetState() == kmspb.CryptoKeyVersion_ENABLED}, nil
		}
		if err := sleep(ctx, b.backoff(n)); err != nil {
			return backends.KeyInfo{}, backends.ContextError(scheme, op, version, ctx)
		}
	}
}

// Health implements backends.HealthChecker: one GenerateRandomBytes of 8
// bytes at the key ring's location, without retries, so it reports the
// service as it is now. It needs the cloudkms.locations.generateRandomBytes
// permission.
func (b *Backend) Health(ctx context.Context) (err error) {
	const op = "health"
	defer b.metrics.observe(op, time.Now(), &err)
	data, err := b.random(ctx, op, minRandom, 1)
	clear(data)
	return err
}
