// Package xks serves the AWS KMS External Key Store (XKS) proxy API v1
// (spec v1.0.3), so that AWS KMS can use keybroker AES keys as the
// external keys of an XKS key store:
//
//	POST <prefix>/kms/xks/v1/keys/{externalKeyId}/metadata
//	POST <prefix>/kms/xks/v1/keys/{externalKeyId}/encrypt
//	POST <prefix>/kms/xks/v1/keys/{externalKeyId}/decrypt
//	POST <prefix>/kms/xks/v1/health
//
// with JSON bodies, base64 binary fields, and errors as
// {"errorName", "errorMessage"} with the spec's HTTP statuses.
//
// # A request's path
//
// In the order the spec sets: the path must be under the configured
// prefix and name an operation (else InvalidUriPathException, 404, even
// with a valid signature); the method must be POST (405); the body is
// read up to MaxBody; the request is authenticated by Signature Version 4
// with service "kms-xks-proxy" (package sigv4; the access key names a
// keybroker principal, package accesskey, and each principal may hold two
// or more keys, for rotation) — any refusal is
// AuthenticationFailedException, 401; then the JSON is decoded
// (ValidationException on anything malformed) and the operation runs
// through the one request pipeline: authorized by the caller's Cedar
// policy as Encrypt, Decrypt or DescribeKey on the external key (a
// keybroker key id), and audited, with the request's kmsRequestId as the
// client request id and the rest of requestMetadata (kmsOperation,
// awsPrincipalArn, kmsKeyArn, kmsViaService, the VPC and endpoint) in the
// audit line's detail.
//
// # Cryptography
//
// Encrypt is AES-256-GCM with a random 12-byte IV and a 16-byte tag under
// a per-version subkey of the key's material (managed.Ops.XKSEncrypt),
// authenticating the AAD the spec builds from additionalAuthenticatedData
// and ciphertextMetadata. ciphertextMetadata names the key version
// (5 bytes), so a decrypt after a rotation opens with the version that
// sealed, within the key's minimum decryption version.
// ciphertextDataIntegrityValue (SHA-256 of AAD ‖ metadata ‖ IV ‖
// ciphertext ‖ tag) is returned when asked for. Plaintexts of up to
// managed.MaxXKSPlaintext bytes and AADs of up to managed.MaxXKSAAD bytes
// are served (the spec asks for 4300 and 8192).
//
// # Health
//
// health performs one real encrypt and decrypt on Config.HealthKey,
// through the pipeline (authorized and audited as the signer: the policy
// must let the key store's access keys Encrypt and Decrypt with it), and
// keeps the result for HealthTTL, so AWS's polling costs one pair per
// 30 s. It answers ACTIVE or UNAVAILABLE in ekmFleetDetails, with HTTP
// 200 either way; the spec exempts health from secondary authorization,
// which here means only that any authenticated principal may poll.
//
// # Limitations
//
// Backend-mode keys are refused (InvalidKeyUsageException): their root of
// trust has no operation that derives the XKS subkey. The operations are
// performed where the pipeline's performer implements
// managed.XKSOperations (the central tier, and edges over the material
// they hold); elsewhere they are refused with InvalidStateException.
//
// # At an edge
//
// An edge serves the API as package awsjson describes under Serving at an
// edge (Config.Relay, ServeForwarded): requests signed with an access key
// scoped to the edge are verified there and served from the key's
// material when the edge holds it (the health check too, on its health
// key); the rest are relayed whole, as signed, to the central tier, which
// verifies each, runs it once, and answers for it. The edge's prefix and
// region must be the central tier's: a relayed request keeps its path and
// its signature's scope.
package xks

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// Service is the SigV4 service name of the XKS proxy API.
const Service = "kms-xks-proxy"

// MaxBody bounds a request body: the largest plaintext and AAD in base64,
// and the metadata, fit.
const MaxBody = 4 * (managed.MaxXKSPlaintext + managed.MaxXKSAAD) / 3 * 11 / 10

// HealthTTL is how long a health check's result is kept.
const HealthTTL = 30 * time.Second

// MaxPrefix bounds the path prefix, as the spec does.
const MaxPrefix = 128

// Credentials gives the signing key of an access key for a scope, and the
// principal the key acts as (broker.Service.SigningKey at the central
// tier); sigv4.ErrUnknownKey for a key it does not know or that is revoked.
type Credentials interface {
	SigningKey(ctx context.Context, accessKeyID, date, region, service string) ([]byte, identity.Identity, error)
}

// Config is what a Server needs.
type Config struct {
	Pipeline *pipeline.Pipeline
	// Status maps the pipeline's errors to gRPC statuses — the node's one
	// mapping (rpc.Server.Status) — which the server names as the spec
	// does.
	Status      func(error) *status.Status
	Credentials Credentials
	// Region is the SigV4 scope's region (the AWS region of the key store).
	Region string
	// Prefix is the URI path prefix before /kms/xks/v1: "" or up to
	// MaxPrefix characters of [A-Za-z0-9/_-] starting with "/" and not
	// ending with one.
	Prefix string
	// HealthKey is the AES key the health check encrypts and decrypts with.
	HealthKey string
	// Vendor and Model name the proxy in health answers (defaults
	// "keybroker" and "keybroker XKS proxy").
	Vendor, Model string
	Logger        *slog.Logger
	// Now is the clock of the health cache (time.Now when nil).
	Now func() time.Time
	// Relay, at an edge, takes what the edge does not serve itself to the
	// central tier (awsjson.Relay); nil at the central tier.
	Relay awsjson.Relay
}

// Server is the XKS proxy API as an http.Handler. It is safe for
// concurrent use.
type Server struct {
	cfg      Config
	verifier sigv4.Verifier
	log      *slog.Logger
	base     string

	healthMu   sync.Mutex
	healthAt   time.Time
	healthy    bool
	healthSeen bool
}

var (
	prefixRe = regexp.MustCompile(`^(/[A-Za-z0-9_-]+)*$`)
	regionRe = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	keyIDRe  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
)

// New checks c and returns a Server.
func New(c Config) (*Server, error) {
	switch {
	case c.Pipeline == nil || c.Status == nil || c.Credentials == nil:
		return nil, errors.New("xks: a pipeline, a status mapping and credentials are required")
	case !regionRe.MatchString(c.Region):
		return nil, fmt.Errorf("xks: region %q is not an AWS region name such as eu-west-1", c.Region)
	case len(c.Prefix) > MaxPrefix || !prefixRe.MatchString(c.Prefix):
		return nil, fmt.Errorf("xks: prefix %q must be empty or /-separated segments of [A-Za-z0-9_-], at most %d characters", c.Prefix, MaxPrefix)
	case c.HealthKey == "" || !envelope.ValidKeyID(c.HealthKey):
		return nil, fmt.Errorf("xks: health key %q is not a key id", c.HealthKey)
	}
	if c.Vendor == "" {
		c.Vendor = "keybroker"
	}
	if c.Model == "" {
		c.Model = "keybroker XKS proxy"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	s := &Server{cfg: c, log: c.Logger, base: c.Prefix + "/kms/xks/v1/"}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.verifier = sigv4.Verifier{Service: Service, Region: c.Region}
	return s, nil
}

// Error is an answer in the spec's error shape.
type Error struct {
	Status  int
	Name    string
	Message string
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// The spec's errors.
const (
	ValidationException           = "ValidationException"
	InvalidStateException         = "InvalidStateException"
	InvalidCiphertextException    = "InvalidCiphertextException"
	InvalidKeyUsageException      = "InvalidKeyUsageException"
	AuthenticationFailedException = "AuthenticationFailedException"
	AccessDeniedException         = "AccessDeniedException"
	KeyNotFoundException          = "KeyNotFoundException"
	InvalidURIPathException       = "InvalidUriPathException"
	ThrottlingException           = "ThrottlingException"
	UnsupportedOperationException = "UnsupportedOperationException"
	DependencyTimeoutException    = "DependencyTimeoutException"
	InternalException             = "InternalException"
	methodNotAllowed              = "MethodNotAllowed"
)

func validation(format string, args ...any) *Error {
	return &Error{http.StatusBadRequest, ValidationException, fmt.Sprintf(format, args...)}
}

// route is what a path names: op "health", or "metadata", "encrypt",
// "decrypt" on key.
type route struct{ op, key string }

// parsePath is the operation a path names under the prefix.
func (s *Server) parsePath(p string) (route, bool) {
	rest, ok := strings.CutPrefix(p, s.base)
	if !ok {
		return route{}, false
	}
	if rest == "health" {
		return route{op: "health"}, true
	}
	rest, ok = strings.CutPrefix(rest, "keys/")
	if !ok {
		return route{}, false
	}
	key, op, ok := strings.Cut(rest, "/")
	if !ok || !keyIDRe.MatchString(key) {
		return route{}, false
	}
	switch op {
	case "metadata", "encrypt", "decrypt":
		return route{op: op, key: key}, true
	}
	return route{}, false
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, nil, s.cfg.Credentials.SigningKey, nil, s.cfg.Relay)
}

// ServeForwarded answers a request an edge relayed (EdgeSync's ForwardAWS
// at the central tier), whose body is body, exactly as ServeHTTP would,
// except that signingKey verifies it — accepting keys scoped to the
// relaying edge — and claim spends its signature once it verifies, before
// it runs.
func (s *Server) ServeForwarded(w http.ResponseWriter, r *http.Request, body []byte, signingKey awsjson.SigningKeyFunc, claim awsjson.ClaimFunc) {
	if body == nil {
		body = []byte{}
	}
	s.serve(w, r, body, signingKey, claim, nil)
}

// serve answers r; body nil reads it from r.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, body []byte, signingKey awsjson.SigningKeyFunc, claim awsjson.ClaimFunc, relay awsjson.Relay) {
	rt, ok := s.parsePath(r.URL.Path)
	if !ok {
		s.fail(w, &Error{http.StatusNotFound, InvalidURIPathException, fmt.Sprintf("%s is not an XKS proxy operation here", clipText(r.URL.Path))})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.fail(w, &Error{http.StatusMethodNotAllowed, methodNotAllowed, "the XKS proxy API is POST only"})
		return
	}
	if body == nil {
		var err error
		if body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody)); err != nil {
			s.fail(w, validation("the request body is larger than %d bytes", MaxBody))
			return
		}
	}
	var who identity.Identity
	verifier := s.verifier
	verifier.SigningKey = func(ctx context.Context, id, date, region, service string) ([]byte, error) {
		key, w, err := signingKey(ctx, id, date, region, service)
		who = w
		return key, err
	}
	verified, err := verifier.Verify(r.Context(), r, body)
	if relay != nil && errors.Is(err, sigv4.ErrElsewhere) {
		s.relay(w, r, body, relay) // a key the central tier verifies
		return
	}
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			s.fail(w, &Error{http.StatusUnauthorized, AuthenticationFailedException, se.Code + ": " + se.Message})
			return
		}
		s.log.Warn("verifying an XKS request's signature", "err", err)
		s.fail(w, &Error{http.StatusServiceUnavailable, DependencyTimeoutException, "the access key could not be checked; retry"})
		return
	}
	if relay != nil {
		key := rt.key
		if rt.op == "health" {
			key = s.cfg.HealthKey
		}
		if !relay.Local(r.Context(), []awsjson.KeyRef{{ID: key, PublicOnly: rt.op == "metadata"}}) {
			s.relay(w, r, body, relay)
			return
		}
	}
	if claim != nil {
		if err := claim(r.Context(), verified); errors.Is(err, awsjson.ErrReplayed) {
			s.fail(w, &Error{http.StatusUnauthorized, AuthenticationFailedException, sigv4.InvalidSignature + ": this signed request was already relayed once"})
			return
		} else if errors.Is(err, awsjson.ErrRelayRefused) {
			s.fail(w, &Error{http.StatusForbidden, AccessDeniedException, "the edge that relayed this request may not relay it (policy)"})
			return
		} else if err != nil {
			s.log.Warn("claiming a relayed XKS request's signature", "err", err)
			s.fail(w, &Error{http.StatusServiceUnavailable, DependencyTimeoutException, "the relayed request could not be recorded across the central tier; retry"})
			return
		}
	}
	out, err := s.run(r.Context(), who, rt, body)
	if err != nil {
		s.fail(w, s.xksError(err))
		return
	}
	data, err := json.Marshal(out)
	if err != nil {
		s.fail(w, &Error{http.StatusInternalServerError, InternalException, "encoding the answer failed"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(data)
}

// relay takes a request to the central tier as it came.
func (s *Server) relay(w http.ResponseWriter, r *http.Request, body []byte, relay awsjson.Relay) {
	if err := relay.Forward(r.Context(), w, r, body); err != nil {
		s.log.Warn("relaying an XKS request to the central tier", "err", err)
		s.fail(w, &Error{http.StatusServiceUnavailable, DependencyTimeoutException, "this edge cannot reach the central tier to relay the request; retry"})
	}
}

// run decodes and performs one authenticated request.
func (s *Server) run(ctx context.Context, who identity.Identity, rt route, body []byte) (any, error) {
	switch rt.op {
	case "health":
		var in healthRequest
		if err := decode(body, &in); err != nil {
			return nil, err
		}
		if err := in.RequestMetadata.check(false); err != nil {
			return nil, err
		}
		return s.health(ctx, in.RequestMetadata.caller(who)), nil
	case "metadata":
		var in metadataRequest
		if err := decode(body, &in); err != nil {
			return nil, err
		}
		if err := in.RequestMetadata.check(true); err != nil {
			return nil, err
		}
		return s.metadata(ctx, in.RequestMetadata.caller(who), rt.key)
	case "encrypt":
		var in encryptRequest
		if err := decode(body, &in); err != nil {
			return nil, err
		}
		if err := in.RequestMetadata.check(true); err != nil {
			return nil, err
		}
		return s.encrypt(ctx, in.RequestMetadata.caller(who), in.RequestMetadata.detail(), rt.key, &in)
	default:
		var in decryptRequest
		if err := decode(body, &in); err != nil {
			return nil, err
		}
		if err := in.RequestMetadata.check(true); err != nil {
			return nil, err
		}
		return s.decrypt(ctx, in.RequestMetadata.caller(who), in.RequestMetadata.detail(), rt.key, &in)
	}
}

// RequestMetadata is what AWS KMS says of every request.
type RequestMetadata struct {
	AWSPrincipalARN string `json:"awsPrincipalArn"`
	KMSOperation    string `json:"kmsOperation"`
	KMSRequestID    string `json:"kmsRequestId"`
	KMSKeyARN       string `json:"kmsKeyArn"`
	KMSViaService   string `json:"kmsViaService"`
	AWSSourceVPC    string `json:"awsSourceVpc"`
	AWSSourceVPCE   string `json:"awsSourceVpce"`
}

// check requires kmsRequestId and kmsOperation (any value: the spec says
// unknown ones must be accepted), and for key operations the principal
// and key ARN, all printable and bounded.
func (m *RequestMetadata) check(keyOp bool) error {
	if m.KMSRequestID == "" || m.KMSOperation == "" {
		return validation("requestMetadata.kmsRequestId and kmsOperation are required")
	}
	if keyOp && (m.AWSPrincipalARN == "" || m.KMSKeyARN == "") {
		return validation("requestMetadata.awsPrincipalArn and kmsKeyArn are required")
	}
	for _, f := range []string{m.AWSPrincipalARN, m.KMSOperation, m.KMSRequestID, m.KMSKeyARN, m.KMSViaService, m.AWSSourceVPC, m.AWSSourceVPCE} {
		if len(f) > 2048 || strings.ContainsFunc(f, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return validation("requestMetadata fields are printable text of at most 2048 bytes")
		}
	}
	return nil
}

// caller is who calls: the signer, with kmsRequestId as the client
// request id.
func (m *RequestMetadata) caller(who identity.Identity) pipeline.Caller {
	return pipeline.Caller{Who: who, RequestID: callinfo.NewRequestID(), ClientRequestID: clipText(m.KMSRequestID)}
}

// detail is the request metadata for the audit line.
func (m *RequestMetadata) detail() string {
	var b strings.Builder
	b.WriteString("xks")
	for _, kv := range [][2]string{{"kmsOperation", m.KMSOperation}, {"awsPrincipalArn", m.AWSPrincipalARN}, {"kmsKeyArn", m.KMSKeyARN},
		{"kmsViaService", m.KMSViaService}, {"awsSourceVpc", m.AWSSourceVPC}, {"awsSourceVpce", m.AWSSourceVPCE}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%q", kv[0], clipText(kv[1]))
		}
	}
	return b.String()
}

type healthRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

type metadataRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

type metadataResponse struct {
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

// metadata describes an AES key, authorized as DescribeKey.
func (s *Server) metadata(ctx context.Context, caller pipeline.Caller, key string) (any, error) {
	k, err := s.cfg.Pipeline.DescribeKey(ctx, caller, key)
	if err != nil {
		return nil, err
	}
	if k.Type != managed.AES256GCM || !k.Mode.HoldsMaterial() {
		return nil, &Error{http.StatusBadRequest, InvalidKeyUsageException, fmt.Sprintf("key %s is a %s %s-mode key; XKS needs a derive- or wrap-mode AES-256 key", key, k.Type, k.Mode)}
	}
	st := "ENABLED"
	if k.Usable() != nil {
		st = "DISABLED"
	}
	return metadataResponse{KeySpec: "AES_256", KeyUsage: []string{"ENCRYPT", "DECRYPT"}, KeyStatus: st}, nil
}

const (
	aesGCM          = "AES_GCM"
	sha256Integrity = "SHA_256"
)

type encryptRequest struct {
	RequestMetadata                       RequestMetadata `json:"requestMetadata"`
	Plaintext                             []byte          `json:"plaintext"`
	EncryptionAlgorithm                   string          `json:"encryptionAlgorithm"`
	AdditionalAuthenticatedData           []byte          `json:"additionalAuthenticatedData"`
	CiphertextDataIntegrityValueAlgorithm string          `json:"ciphertextDataIntegrityValueAlgorithm"`
}

type encryptResponse struct {
	AuthenticationTag            []byte `json:"authenticationTag"`
	Ciphertext                   []byte `json:"ciphertext"`
	InitializationVector         []byte `json:"initializationVector"`
	CiphertextMetadata           []byte `json:"ciphertextMetadata,omitempty"`
	CiphertextDataIntegrityValue []byte `json:"ciphertextDataIntegrityValue,omitempty"`
}

func checkAlgorithm(alg string) error {
	if alg != aesGCM {
		return validation("encryptionAlgorithm must be %s, not %q", aesGCM, clipText(alg))
	}
	return nil
}

func (s *Server) encrypt(ctx context.Context, caller pipeline.Caller, detail, key string, in *encryptRequest) (any, error) {
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if in.Plaintext == nil {
		return nil, validation("plaintext is required")
	}
	if len(in.Plaintext) > managed.MaxXKSPlaintext {
		return nil, validation("plaintext is %d bytes; at most %d are served", len(in.Plaintext), managed.MaxXKSPlaintext)
	}
	if len(in.AdditionalAuthenticatedData) > managed.MaxXKSAAD {
		return nil, validation("additionalAuthenticatedData is %d bytes; at most %d are served", len(in.AdditionalAuthenticatedData), managed.MaxXKSAAD)
	}
	switch in.CiphertextDataIntegrityValueAlgorithm {
	case "", sha256Integrity:
	default:
		return nil, validation("ciphertextDataIntegrityValueAlgorithm must be %s, not %q", sha256Integrity, clipText(in.CiphertextDataIntegrityValueAlgorithm))
	}
	out, err := s.cfg.Pipeline.XKSEncrypt(ctx, caller, pipeline.XKSEncryptInput{KeyID: key, Plaintext: in.Plaintext, AAD: in.AdditionalAuthenticatedData, Detail: detail})
	if err != nil {
		return nil, err
	}
	resp := encryptResponse{AuthenticationTag: out.Tag, Ciphertext: out.Ciphertext, InitializationVector: out.IV, CiphertextMetadata: out.Metadata}
	if in.CiphertextDataIntegrityValueAlgorithm == sha256Integrity {
		resp.CiphertextDataIntegrityValue = IntegrityValue(in.AdditionalAuthenticatedData, out.Metadata, out.IV, out.Ciphertext, out.Tag)
	}
	return resp, nil
}

// IntegrityValue is the spec's ciphertextDataIntegrityValue: SHA-256 of
// AAD ‖ ciphertextMetadata ‖ IV ‖ ciphertext ‖ tag.
func IntegrityValue(aad, metadata, iv, ciphertext, tag []byte) []byte {
	h := sha256.New()
	for _, b := range [][]byte{aad, metadata, iv, ciphertext, tag} {
		h.Write(b)
	}
	return h.Sum(nil)
}

type decryptRequest struct {
	RequestMetadata             RequestMetadata `json:"requestMetadata"`
	EncryptionAlgorithm         string          `json:"encryptionAlgorithm"`
	Ciphertext                  []byte          `json:"ciphertext"`
	InitializationVector        []byte          `json:"initializationVector"`
	AuthenticationTag           []byte          `json:"authenticationTag"`
	AdditionalAuthenticatedData []byte          `json:"additionalAuthenticatedData"`
	CiphertextMetadata          []byte          `json:"ciphertextMetadata"`
}

type decryptResponse struct {
	Plaintext []byte `json:"plaintext"`
}

func (s *Server) decrypt(ctx context.Context, caller pipeline.Caller, detail, key string, in *decryptRequest) (any, error) {
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	switch {
	case in.Ciphertext == nil || in.InitializationVector == nil || in.AuthenticationTag == nil:
		return nil, validation("ciphertext, initializationVector and authenticationTag are required")
	case len(in.Ciphertext) > managed.MaxXKSPlaintext:
		return nil, validation("ciphertext is %d bytes; at most %d are served", len(in.Ciphertext), managed.MaxXKSPlaintext)
	case len(in.AdditionalAuthenticatedData) > managed.MaxXKSAAD:
		return nil, validation("additionalAuthenticatedData is %d bytes; at most %d are served", len(in.AdditionalAuthenticatedData), managed.MaxXKSAAD)
	case len(in.InitializationVector) != 12 && len(in.InitializationVector) != 16:
		return nil, validation("initializationVector must be 12 or 16 bytes, not %d", len(in.InitializationVector))
	case len(in.AuthenticationTag) != managed.XKSTagSize:
		return nil, validation("authenticationTag must be %d bytes, not %d", managed.XKSTagSize, len(in.AuthenticationTag))
	case len(in.CiphertextMetadata) > 20:
		return nil, validation("ciphertextMetadata must be at most 20 bytes, not %d", len(in.CiphertextMetadata))
	}
	out, err := s.cfg.Pipeline.XKSDecrypt(ctx, caller, pipeline.XKSDecryptInput{KeyID: key, AAD: in.AdditionalAuthenticatedData,
		Metadata: in.CiphertextMetadata, IV: in.InitializationVector, Ciphertext: in.Ciphertext, Tag: in.AuthenticationTag, Detail: detail})
	if err != nil {
		return nil, err
	}
	return decryptResponse{Plaintext: out.Plaintext}, nil
}

type healthResponse struct {
	XKSProxyFleetSize int         `json:"xksProxyFleetSize"`
	XKSProxyVendor    string      `json:"xksProxyVendor"`
	XKSProxyModel     string      `json:"xksProxyModel"`
	EKMVendor         string      `json:"ekmVendor"`
	EKMFleetDetails   []ekmDetail `json:"ekmFleetDetails"`
}

type ekmDetail struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	HealthStatus string `json:"healthStatus"`
}

// health answers the health check: ACTIVE when an encrypt and decrypt on
// the health key worked within HealthTTL, UNAVAILABLE otherwise. Checks
// are made one at a time: concurrent polls wait for the one running.
func (s *Server) health(ctx context.Context, caller pipeline.Caller) any {
	st := "UNAVAILABLE"
	if s.checkHealth(ctx, caller) {
		st = "ACTIVE"
	}
	return healthResponse{XKSProxyFleetSize: 1, XKSProxyVendor: s.cfg.Vendor, XKSProxyModel: s.cfg.Model, EKMVendor: s.cfg.Vendor,
		EKMFleetDetails: []ekmDetail{{ID: "keybroker", Model: s.cfg.Model, HealthStatus: st}}}
}

func (s *Server) checkHealth(ctx context.Context, caller pipeline.Caller) bool {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	now := s.cfg.Now()
	if s.healthSeen && now.Sub(s.healthAt) < HealthTTL && now.Sub(s.healthAt) >= 0 {
		return s.healthy
	}
	probe := []byte("keybroker xks health")
	ok := func() bool {
		out, err := s.cfg.Pipeline.XKSEncrypt(ctx, caller, pipeline.XKSEncryptInput{KeyID: s.cfg.HealthKey, Plaintext: probe, Detail: "xks health"})
		if err != nil {
			s.log.Warn("XKS health check: encrypt", "key", s.cfg.HealthKey, "err", err)
			return false
		}
		dec, err := s.cfg.Pipeline.XKSDecrypt(ctx, caller, pipeline.XKSDecryptInput{KeyID: s.cfg.HealthKey, Metadata: out.Metadata, IV: out.IV,
			Ciphertext: out.Ciphertext, Tag: out.Tag, Detail: "xks health"})
		if err != nil || string(dec.Plaintext) != string(probe) {
			s.log.Warn("XKS health check: decrypt", "key", s.cfg.HealthKey, "err", err)
			return false
		}
		return true
	}()
	if ctx.Err() != nil {
		// The poller went away mid-check: its failure says nothing of
		// the keys, so it is not kept for the next poll.
		return ok
	}
	s.healthSeen, s.healthAt, s.healthy = true, s.cfg.Now(), ok
	return ok
}

func (s *Server) fail(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	data, _ := json.Marshal(struct {
		Name    string `json:"errorName"`
		Message string `json:"errorMessage"`
	}{e.Name, e.Message})
	w.Write(data)
}

// xksError names an operation's error as the spec does.
func (s *Server) xksError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st := s.cfg.Status(err)
	msg := st.Message()
	var se *managed.StateError
	switch {
	case errors.Is(err, managed.ErrXKSKeyUsage):
		return &Error{http.StatusBadRequest, InvalidKeyUsageException, msg}
	case errors.As(err, &se):
		return &Error{http.StatusBadRequest, InvalidStateException, msg}
	case errors.Is(err, managed.ErrBadCiphertext):
		return &Error{http.StatusBadRequest, InvalidCiphertextException, msg}
	case errors.Is(err, pipeline.ErrAuditDown):
		return &Error{http.StatusServiceUnavailable, DependencyTimeoutException, msg}
	}
	switch st.Code() {
	case codes.NotFound:
		return &Error{http.StatusNotFound, KeyNotFoundException, msg}
	case codes.PermissionDenied:
		return &Error{http.StatusForbidden, AccessDeniedException, msg}
	case codes.InvalidArgument:
		return &Error{http.StatusBadRequest, ValidationException, msg}
	case codes.FailedPrecondition:
		return &Error{http.StatusBadRequest, InvalidStateException, msg}
	case codes.ResourceExhausted:
		return &Error{http.StatusTooManyRequests, ThrottlingException, msg}
	case codes.Unavailable, codes.DeadlineExceeded:
		return &Error{http.StatusServiceUnavailable, DependencyTimeoutException, msg}
	case codes.Unimplemented:
		return &Error{http.StatusNotImplemented, UnsupportedOperationException, msg}
	}
	return &Error{http.StatusInternalServerError, InternalException, msg}
}

// decode reads a request's JSON into v: malformed JSON, a field of the
// wrong type or binary fields that are not base64 are a
// ValidationException; unknown fields are ignored.
func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return validation("the request is not the operation's JSON: %s", clipText(err.Error()))
	}
	return nil
}

// clipText bounds request text an answer or audit line repeats.
func clipText(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}

func (r *encryptRequest) meta() *RequestMetadata  { return &r.RequestMetadata }
func (r *decryptRequest) meta() *RequestMetadata  { return &r.RequestMetadata }
func (r *metadataRequest) meta() *RequestMetadata { return &r.RequestMetadata }
func (r *healthRequest) meta() *RequestMetadata   { return &r.RequestMetadata }
