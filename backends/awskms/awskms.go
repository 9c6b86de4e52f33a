// Package awskms is keybroker's AWS KMS root of trust: root keys are KMS
// keys that never leave the service, and every operation is one KMS API
// call made with the AWS SDK for Go v2.
//
// # What is used
//
// Encrypt and Decrypt use symmetric (SYMMETRIC_DEFAULT) keys; the aad is
// carried as the encryption context {"keybroker-aad": base64(aad)}, and only
// when it is non-empty, so a ciphertext is a plain KMS ciphertext blob that
// the AWS CLI can also open. Decrypt always names the key, so a ciphertext
// made under another key is refused (IncorrectKeyException) rather than
// silently opened with it. GenerateDataKey (AES_256) produces data keys.
// MAC and VerifyMAC use HMAC_256 keys with HMAC_SHA_256 (GenerateMac,
// VerifyMac: the tag is checked inside KMS). Sign uses ECC_NIST_P256 keys
// with ECDSA_SHA_256 over a 32-byte DIGEST and returns the DER signature;
// PublicKey parses GetPublicKey's SubjectPublicKeyInfo and caches it for
// keys named by id or ARN (an alias may be re-pointed, so aliases are not
// cached). CreateKey calls CreateKey and, for the name hint, CreateAlias
// "alias/<name>"; it returns the key ARN. Describe maps DescribeKey's
// KeySpec and KeyUsage to an algorithm and KeyState to Enabled. Health asks
// for one random byte (GenerateRandom), which exercises credentials, the
// network path and the quota without naming a key. The SDK calls used are
// listed by the unexported kmsAPI interface.
//
// Key arguments are anything KMS accepts as a KeyId: a key id, a key ARN, an
// alias name ("alias/keybroker-root") or an alias ARN.
//
// # Rate limiting
//
// Every attempt — first tries and retries alike — takes a token from one
// outbound token bucket (Config.RateLimit, Config.Burst) before it is
// signed and sent. The wait happens under the caller's context; when the
// deadline would pass before a token is due the call fails at once with
// ErrThrottled and context.DeadlineExceeded reachable, rather than waiting
// in vain. The default (DefaultRateLimit) leaves most of the account's
// smallest regional quota to other clients; see its documentation.
//
// # Retries
//
// The SDK's standard retryer retries throttling, HTTP 5xx,
// KMSInternalException, DependencyTimeoutException, KeyUnavailableException
// and connection failures, up to Config.MaxAttempts attempts, sleeping a
// full-jitter exponential delay (from 50ms, doubling, capped at
// Config.MaxBackoff) between them. Every attempt waits for a token of the
// backend's rate limit, which bounds retry storms; the SDK's client-side
// retry quota is off, since under sustained throttling it stops retrying
// altogether. The caller's context bounds everything: no attempt
// starts and no backoff sleep outlasts its deadline, and an expired context
// ends the call with ErrUnavailable (context.DeadlineExceeded reachable).
//
// # Errors
//
// Every error is a *backends.Error naming the operation and key, with the
// SDK's error (smithy.APIError, *types.NotFoundException, ...) reachable
// through errors.As. NotFoundException is ErrNotFound; DisabledException and
// KMSInvalidStateException are ErrDisabled; InvalidCiphertextException,
// IncorrectKeyException and KMSInvalidMacException are ErrDecryptionFailed;
// AccessDeniedException and signature or token failures are
// ErrPermissionDenied; ThrottlingException and LimitExceededException are
// ErrThrottled; 5xx answers, KMSInternalException, DependencyTimeoutException,
// unreachable custom key stores and network failures are ErrUnavailable;
// ValidationException, InvalidKeyUsageException (a key of the wrong type)
// and UnsupportedOperationException are ErrInvalidArgument. A cancelled
// context gives an error matching context.Canceled. Arguments are checked
// by backends.Instrument, which every opened backend is behind
// (backends.Registry.Open, the central tier's roots), against limits no
// larger than the service's own, before any request is sent; the backend
// itself does not repeat the checks.
//
// # Metrics
//
// With Config.Metrics set, the backend counts calls by operation and result
// code (keybroker_awskms_calls_total), retries by operation
// (keybroker_awskms_retries_total), and records the rate-limiter wait
// (keybroker_awskms_ratelimit_wait_seconds) apart from the whole call's
// duration (keybroker_awskms_call_duration_seconds). No label carries a key
// name.
//
// # Limitations
//
// KMS refuses empty inputs and caps them at 4096 bytes: Encrypt needs a
// plaintext of 1..4096 bytes and MAC and VerifyMAC a message of 1..4096
// bytes. These are the limits of the backends contract itself
// (backends.MaxEncryptInput, backends.MaxMACInput), chosen so that every
// backend behaves as this one must. Sign accepts only
// ecdsa-p256 keys and 32-byte digests. The aad travels as the encryption
// context, which KMS writes in clear to CloudTrail: it must not be secret
// (keybroker's aad names keys and versions). Plaintexts that KMS returns
// (Decrypt, GenerateDataKey, GenerateMac) pass through the SDK's response
// buffers, which this package cannot zero. Calls are not interruptible once
// KMS has performed them: a cancelled Encrypt may still have happened.
package awskms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

const scheme = "awskms"

// aadContextKey is the encryption-context entry that carries the aad.
const aadContextKey = "keybroker-aad"

// maxMessage is KMS's limit on Encrypt plaintexts and GenerateMac, VerifyMac
// and Sign messages.
const maxMessage = 4096

// cryptoAPI is the data plane of *kms.Client that the backend uses.
type cryptoAPI interface {
	Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(context.Context, *kms.DecryptInput, ...func(*kms.Options)) (*kms.DecryptOutput, error)
	GenerateDataKey(context.Context, *kms.GenerateDataKeyInput, ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
	GenerateMac(context.Context, *kms.GenerateMacInput, ...func(*kms.Options)) (*kms.GenerateMacOutput, error)
	VerifyMac(context.Context, *kms.VerifyMacInput, ...func(*kms.Options)) (*kms.VerifyMacOutput, error)
	Sign(context.Context, *kms.SignInput, ...func(*kms.Options)) (*kms.SignOutput, error)
	GenerateRandom(context.Context, *kms.GenerateRandomInput, ...func(*kms.Options)) (*kms.GenerateRandomOutput, error)
}

// keyAPI is the key-management part of *kms.Client that the backend uses.
// ScheduleKeyDeletion only removes a key CreateKey made but could not alias.
type keyAPI interface {
	DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error)
	GetPublicKey(context.Context, *kms.GetPublicKeyInput, ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	CreateKey(context.Context, *kms.CreateKeyInput, ...func(*kms.Options)) (*kms.CreateKeyOutput, error)
	CreateAlias(context.Context, *kms.CreateAliasInput, ...func(*kms.Options)) (*kms.CreateAliasOutput, error)
	ScheduleKeyDeletion(context.Context, *kms.ScheduleKeyDeletionInput, ...func(*kms.Options)) (*kms.ScheduleKeyDeletionOutput, error)
}

// kmsAPI is everything the backend asks of AWS KMS.
type kmsAPI interface {
	cryptoAPI
	keyAPI
}

var _ kmsAPI = (*kms.Client)(nil)

// Backend is an AWS KMS root of trust in one region. It is safe for
// concurrent use; the SDK client, rate limiter and public-key cache are
// shared by all calls.
type Backend struct {
	api     kmsAPI
	limiter *rate.Limiter
	metrics *metrics
	logger  *slog.Logger
	idle    func() // closes idle connections of a client we built
	closed  atomic.Bool
	pubs    sync.Map // key id or key ARN -> crypto.PublicKey
}

var (
	_ backends.Backend           = (*Backend)(nil)
	_ backends.MACer             = (*Backend)(nil)
	_ backends.Signer            = (*Backend)(nil)
	_ backends.KeyCreator        = (*Backend)(nil)
	_ backends.CreatesAlgorithms = (*Backend)(nil)
	_ backends.DataKeyGenerator  = (*Backend)(nil)
	_ backends.HealthChecker     = (*Backend)(nil)
)

// Open opens the backend an awskms: URI names:
//
//	awskms:region=eu-west-1
//	awskms:region=eu-west-1;endpoint=https://kms.internal:8443;rate-limit=500;burst=50
//	awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	awskms:key-id=alias/keybroker-root;region=eu-west-1
//
// region (or a key ARN's region) is required; endpoint, rate-limit and burst
// set the Config fields of the same names; a key-id is accepted and
// ignored, since keys are named per call. Credentials come from the SDK's
// default chain; retries use the defaults.
func Open(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
	u, err := backends.ParseAWSKMSURI(uri)
	if err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	return New(ctx, Config{
		Region:    u.Region,
		Endpoint:  u.Endpoint,
		RateLimit: u.RateLimit,
		Burst:     u.Burst,
		Logger:    opts.Logger,
		Metrics:   opts.Metrics,
	})
}

// New builds a backend. It sends no request: a wrong region, endpoint or
// credential shows on the first call (or Health). Without cfg.Credentials it
// resolves the SDK's default credential chain, reading the environment and
// shared config files.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	if err := backends.ContextError(scheme, "open", "", ctx); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	creds := cfg.Credentials
	if creds == nil {
		awsCfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(cfg.Region))
		if err != nil {
			return nil, backends.Errorf(scheme, "open", "", backends.ErrInvalidArgument, "loading the default AWS credential chain: %w", err)
		}
		creds = awsCfg.Credentials
	} else if !aws.IsCredentialsProvider(creds, (*aws.CredentialsCache)(nil)) {
		creds = aws.NewCredentialsCache(creds)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	b := &Backend{metrics: m, logger: cfg.Logger, idle: func() {}}
	limit := rate.Limit(cfg.RateLimit)
	if math.IsInf(cfg.RateLimit, 1) {
		limit = rate.Inf
	}
	b.limiter = rate.NewLimiter(limit, cfg.Burst)

	httpClient := cfg.HTTPClient
	if httpClient == nil {
		burst := cfg.Burst
		hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			// Keep a connection per concurrent request instead of the
			// default handful, so bursts do not churn TLS handshakes.
			t.MaxIdleConnsPerHost = max(burst, awshttp.DefaultHTTPTransportMaxIdleConnsPerHost)
			t.MaxIdleConns = max(burst, awshttp.DefaultHTTPTransportMaxIdleConns)
		}).Freeze()
		httpClient = hc
		if c, ok := hc.(interface{ CloseIdleConnections() }); ok {
			b.idle = c.CloseIdleConnections
		}
	}
	mw := &attemptMiddleware{limiter: b.limiter, metrics: m}
	opts := kms.Options{
		Region:      cfg.Region,
		Credentials: creds,
		HTTPClient:  httpClient,
		Retryer:     newRetryer(cfg),
		APIOptions: []func(*middleware.Stack) error{func(s *middleware.Stack) error {
			return s.Finalize.Insert(mw, "Retry", middleware.After)
		}},
	}
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
	}
	b.api = kms.New(opts)
	return b, nil
}

// call runs one SDK call for a backend operation: it refuses a closed
// backend and a done context before sending, follows the call through the
// retry loop for metrics, and turns any error into a *backends.Error.
func call[T any](ctx context.Context, b *Backend, op, key string, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	if b.closed.Load() {
		return zero, backends.Errorf(scheme, op, key, backends.ErrUnavailable, "backend is closed")
	}
	if err := backends.ContextError(scheme, op, key, ctx); err != nil {
		return zero, err
	}
	st := &callState{op: op}
	start := time.Now()
	out, err := fn(context.WithValue(ctx, callStateKey{}, st))
	retries := max(int(st.attempts.Load())-1, 0)
	if err != nil {
		kind, cause := classify(ctx, err)
		err = backends.NewError(scheme, op, key, kind, cause)
	}
	code := backends.CodeOf(err)
	b.metrics.observeCall(op, string(code), retries, time.Since(start))
	if retries > 0 {
		b.logger.LogAttrs(ctx, slog.LevelDebug, "awskms call retried",
			slog.String("op", op), slog.Int("retries", retries), slog.String("code", string(code)))
	}
	return out, err
}

// encryptionContext carries aad; an empty aad gives no context at all.
func encryptionContext(aad []byte) map[string]string {
	if len(aad) == 0 {
		return nil
	}
	return map[string]string{aadContextKey: base64.StdEncoding.EncodeToString(aad)}
}

func invalid(op, key, format string, args ...any) error {
	return backends.Errorf(scheme, op, key, backends.ErrInvalidArgument, format, args...)
}

// Encrypt implements backends.Backend with KMS Encrypt. KMS needs 1..4096
// bytes of plaintext.
func (b *Backend) Encrypt(ctx context.Context, key string, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) == 0 {
		return nil, invalid("encrypt", key, "AWS KMS cannot encrypt an empty plaintext")
	}
	out, err := call(ctx, b, "encrypt", key, func(ctx context.Context) (*kms.EncryptOutput, error) {
		return b.api.Encrypt(ctx, &kms.EncryptInput{
			KeyId:               aws.String(key),
			Plaintext:           plaintext,
			EncryptionContext:   encryptionContext(aad),
			EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
		})
	})
	if err != nil {
		return nil, err
	}
	return out.CiphertextBlob, nil
}

// Decrypt implements backends.Backend with KMS Decrypt, naming the key so
// that a ciphertext of another key is refused.
func (b *Backend) Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (*secret.Bytes, error) {
	out, err := call(ctx, b, "decrypt", key, func(ctx context.Context) (*kms.DecryptOutput, error) {
		return b.api.Decrypt(ctx, &kms.DecryptInput{
			KeyId:               aws.String(key),
			CiphertextBlob:      ciphertext,
			EncryptionContext:   encryptionContext(aad),
			EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
		})
	})
	if err != nil {
		return nil, err
	}
	return secret.New(out.Plaintext), nil
}

// GenerateDataKey implements backends.DataKeyGenerator with KMS
// GenerateDataKey (AES_256).
func (b *Backend) GenerateDataKey(ctx context.Context, key string, aad []byte) (*secret.Bytes, []byte, error) {
	out, err := call(ctx, b, "generate-data-key", key, func(ctx context.Context) (*kms.GenerateDataKeyOutput, error) {
		return b.api.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{
			KeyId:             aws.String(key),
			KeySpec:           types.DataKeySpecAes256,
			EncryptionContext: encryptionContext(aad),
		})
	})
	if err != nil {
		return nil, nil, err
	}
	if len(out.Plaintext) != 32 {
		clear(out.Plaintext)
		return nil, nil, backends.Errorf(scheme, "generate-data-key", key, backends.ErrUnavailable,
			"KMS returned a %d-byte data key, want 32", len(out.Plaintext))
	}
	return secret.New(out.Plaintext), out.CiphertextBlob, nil
}

// GenerateRandom implements backends.Backend with KMS GenerateRandom.
func (b *Backend) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	out, err := call(ctx, b, "generate-random", "", func(ctx context.Context) (*kms.GenerateRandomOutput, error) {
		return b.api.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(int32(n))})
	})
	if err != nil {
		return nil, err
	}
	if len(out.Plaintext) != n {
		return nil, backends.Errorf(scheme, "generate-random", "", backends.ErrUnavailable,
			"KMS returned %d random bytes, want %d", len(out.Plaintext), n)
	}
	return out.Plaintext, nil
}

// Describe implements backends.Backend with KMS DescribeKey. Info.Key is the
// key ARN. A key keybroker cannot use (RSA, SM2, key agreement...) is
// ErrUnsupported.
func (b *Backend) Describe(ctx context.Context, key string) (backends.KeyInfo, error) {
	if key == "" {
		return backends.KeyInfo{}, invalid("describe", key, "empty key name")
	}
	out, err := call(ctx, b, "describe", key, func(ctx context.Context) (*kms.DescribeKeyOutput, error) {
		return b.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(key)})
	})
	if err != nil {
		return backends.KeyInfo{}, err
	}
	md := out.KeyMetadata
	if md == nil || md.Arn == nil {
		return backends.KeyInfo{}, backends.Errorf(scheme, "describe", key, backends.ErrUnavailable, "DescribeKey returned no key metadata")
	}
	alg, ok := algorithmOf(md.KeySpec, md.KeyUsage)
	if !ok {
		return backends.KeyInfo{}, backends.Errorf(scheme, "describe", key, backends.ErrUnsupported,
			"key spec %s with usage %s is not an algorithm keybroker uses", md.KeySpec, md.KeyUsage)
	}
	return backends.KeyInfo{Key: *md.Arn, Algorithm: alg, Enabled: md.KeyState == types.KeyStateEnabled}, nil
}

// keyTypes pairs each algorithm with the KMS key spec and usage holding it.
var keyTypes = []struct {
	alg   backends.Algorithm
	spec  types.KeySpec
	usage types.KeyUsageType
}{
	{backends.AES256, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt},
	{backends.HMAC256, types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac},
	{backends.ECDSAP256, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify},
}

func algorithmOf(spec types.KeySpec, usage types.KeyUsageType) (backends.Algorithm, bool) {
	for _, t := range keyTypes {
		if t.spec == spec && t.usage == usage {
			return t.alg, true
		}
	}
	return "", false
}

// MAC implements backends.MACer with KMS GenerateMac (HMAC_SHA_256). KMS
// needs 1..4096 bytes of data.
func (b *Backend) MAC(ctx context.Context, key string, data []byte) (*secret.Bytes, error) {
	if err := b.checkMAC("mac", key, data); err != nil {
		return nil, err
	}
	out, err := call(ctx, b, "mac", key, func(ctx context.Context) (*kms.GenerateMacOutput, error) {
		return b.api.GenerateMac(ctx, &kms.GenerateMacInput{
			KeyId:        aws.String(key),
			Message:      data,
			MacAlgorithm: types.MacAlgorithmSpecHmacSha256,
		})
	})
	if err != nil {
		return nil, err
	}
	if len(out.Mac) != sha256.Size {
		clear(out.Mac)
		return nil, backends.Errorf(scheme, "mac", key, backends.ErrUnavailable, "KMS returned a %d-byte tag, want 32", len(out.Mac))
	}
	return secret.New(out.Mac), nil
}

// VerifyMAC implements backends.MACer with KMS VerifyMac: the expected tag
// is computed and compared inside KMS.
func (b *Backend) VerifyMAC(ctx context.Context, key string, data, tag []byte) error {
	if err := b.checkMAC("verify-mac", key, data); err != nil {
		return err
	}
	if len(tag) == 0 {
		return invalid("verify-mac", key, "empty tag")
	}
	out, err := call(ctx, b, "verify-mac", key, func(ctx context.Context) (*kms.VerifyMacOutput, error) {
		return b.api.VerifyMac(ctx, &kms.VerifyMacInput{
			KeyId:        aws.String(key),
			Message:      data,
			Mac:          tag,
			MacAlgorithm: types.MacAlgorithmSpecHmacSha256,
		})
	})
	if err != nil {
		return err
	}
	if !out.MacValid {
		return backends.Errorf(scheme, "verify-mac", key, backends.ErrDecryptionFailed, "KMS reports the tag invalid")
	}
	return nil
}

func (b *Backend) checkMAC(op, key string, data []byte) error {
	if len(data) == 0 || len(data) > maxMessage {
		return invalid(op, key, "data is %d bytes; AWS KMS takes 1..%d", len(data), maxMessage)
	}
	return nil
}

// Sign implements backends.Signer with KMS Sign (ECDSA_SHA_256 over a
// 32-byte DIGEST); the signature is ASN.1 DER.
func (b *Backend) Sign(ctx context.Context, key string, digest []byte) ([]byte, error) {
	if len(digest) != sha256.Size {
		return nil, invalid("sign", key, "digest is %d bytes; ECDSA_SHA_256 signs a 32-byte SHA-256 digest", len(digest))
	}
	out, err := call(ctx, b, "sign", key, func(ctx context.Context) (*kms.SignOutput, error) {
		return b.api.Sign(ctx, &kms.SignInput{
			KeyId:            aws.String(key),
			Message:          digest,
			MessageType:      types.MessageTypeDigest,
			SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
		})
	})
	if err != nil {
		return nil, err
	}
	return out.Signature, nil
}

// immutableKeyRe matches key names that always denote the same key: key ids
// and key ARNs (not aliases).
var immutableKeyRe = regexp.MustCompile(`^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/)?([0-9a-fA-F-]{36}|mrk-[0-9a-f]{32})$`)

// PublicKey implements backends.Signer with KMS GetPublicKey. The result is
// an *ecdsa.PublicKey on P-256.
func (b *Backend) PublicKey(ctx context.Context, key string) (crypto.PublicKey, error) {
	if key == "" {
		return nil, invalid("public-key", key, "empty key name")
	}
	if pub, ok := b.pubs.Load(key); ok {
		if b.closed.Load() {
			return nil, backends.Errorf(scheme, "public-key", key, backends.ErrUnavailable, "backend is closed")
		}
		return pub, nil
	}
	out, err := call(ctx, b, "public-key", key, func(ctx context.Context) (*kms.GetPublicKeyOutput, error) {
		return b.api.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(key)})
	})
	if err != nil {
		return nil, err
	}
	if out.KeySpec != types.KeySpecEccNistP256 || out.KeyUsage != types.KeyUsageTypeSignVerify {
		return nil, invalid("public-key", key, "key spec %s with usage %s is not an ecdsa-p256 signing key", out.KeySpec, out.KeyUsage)
	}
	parsed, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, backends.NewError(scheme, "public-key", key, backends.ErrUnavailable, fmt.Errorf("parsing the public key KMS returned: %w", err))
	}
	pub, ok := parsed.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, backends.Errorf(scheme, "public-key", key, backends.ErrUnavailable, "KMS returned a %T, want a P-256 key", parsed)
	}
	if immutableKeyRe.MatchString(key) {
		b.pubs.Store(key, pub)
	}
	return pub, nil
}

// CreatableAlgorithms implements backends.CreatesAlgorithms.
func (b *Backend) CreatableAlgorithms() []backends.Algorithm {
	algs := make([]backends.Algorithm, len(keyTypes))
	for i, t := range keyTypes {
		algs[i] = t.alg
	}
	return algs
}

// aliasNameRe is what KMS accepts after "alias/"; names under "aws/" are
// reserved for AWS managed keys.
var aliasNameRe = regexp.MustCompile(`^[a-zA-Z0-9/_-]{1,250}$`)

// CreateKey implements backends.KeyCreator. The key gets the alias
// "alias/<name>" (name may already carry the "alias/" prefix; an empty name
// creates a key without alias) and its ARN is returned. An existing alias is
// ErrInvalidArgument. The alias is checked first; if another client takes it
// between that check and CreateAlias, the new key is scheduled for deletion
// (after the 7-day minimum) and the call fails.
func (b *Backend) CreateKey(ctx context.Context, name string, alg backends.Algorithm) (backends.KeyInfo, error) {
	const op = "create-key"
	i := 0
	for i < len(keyTypes) && keyTypes[i].alg != alg {
		i++
	}
	if i == len(keyTypes) {
		return backends.KeyInfo{}, backends.Errorf(scheme, op, name, backends.ErrUnsupported, "AWS KMS keys of algorithm %q are not supported", alg)
	}
	kt := keyTypes[i]
	alias := ""
	if name != "" {
		short := strings.TrimPrefix(name, "alias/")
		if !aliasNameRe.MatchString(short) || strings.HasPrefix(short, "aws/") {
			return backends.KeyInfo{}, invalid(op, name, "name %q is not a valid alias name (1..250 of a-z A-Z 0-9 / _ -, not under aws/)", name)
		}
		alias = "alias/" + short
		_, err := call(ctx, b, op+"/describe-alias", name, func(ctx context.Context) (*kms.DescribeKeyOutput, error) {
			return b.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(alias)})
		})
		switch {
		case err == nil:
			return backends.KeyInfo{}, invalid(op, name, "alias %s already exists", alias)
		case !errors.Is(err, backends.ErrNotFound):
			return backends.KeyInfo{}, err
		}
	}
	out, err := call(ctx, b, op, name, func(ctx context.Context) (*kms.CreateKeyOutput, error) {
		return b.api.CreateKey(ctx, &kms.CreateKeyInput{
			KeySpec:     kt.spec,
			KeyUsage:    kt.usage,
			Description: aws.String(strings.TrimSpace("keybroker root key " + name)),
		})
	})
	if err != nil {
		return backends.KeyInfo{}, err
	}
	md := out.KeyMetadata
	if md == nil || md.Arn == nil || md.KeyId == nil {
		return backends.KeyInfo{}, backends.Errorf(scheme, op, name, backends.ErrUnavailable, "CreateKey returned no key metadata")
	}
	if alias != "" {
		_, err := call(ctx, b, op+"/create-alias", name, func(ctx context.Context) (*kms.CreateAliasOutput, error) {
			return b.api.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: md.KeyId})
		})
		if err != nil {
			// AlreadyExistsException (another client took the alias since
			// the check) is ErrInvalidArgument like the check's answer.
			b.discard(ctx, *md.Arn, alias)
			return backends.KeyInfo{}, err
		}
	}
	return backends.KeyInfo{Key: *md.Arn, Algorithm: alg, Enabled: md.KeyState == types.KeyStateEnabled}, nil
}

// discard schedules the deletion of a key CreateKey made but could not
// alias, so it does not linger unnamed. It uses the caller's context: if
// that is gone the key stays, and the log says which.
func (b *Backend) discard(ctx context.Context, arn, alias string) {
	_, err := call(ctx, b, "create-key/schedule-deletion", arn, func(ctx context.Context) (*kms.ScheduleKeyDeletionOutput, error) {
		return b.api.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(7)})
	})
	if err != nil {
		b.logger.LogAttrs(ctx, slog.LevelWarn, "awskms: a key created without its alias could not be scheduled for deletion",
			slog.String("key", arn), slog.String("alias", alias), slog.Any("error", err))
	}
}

// Health implements backends.HealthChecker: one GenerateRandom of a byte.
func (b *Backend) Health(ctx context.Context) error {
	_, err := call(ctx, b, "health", "", func(ctx context.Context) (*kms.GenerateRandomOutput, error) {
		return b.api.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(1)})
	})
	return err
}

// Close implements backends.Backend. Later calls fail with ErrUnavailable;
// calls in flight finish. Idle connections of a client New built are
// closed. Close is idempotent.
func (b *Backend) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	b.idle()
	b.pubs.Clear()
	return nil
}
