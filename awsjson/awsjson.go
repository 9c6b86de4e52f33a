// Package awsjson serves the AWS KMS JSON API (awsJson1_1), so that an
// unmodified AWS SDK, the AWS CLI or the AWS Encryption SDK can use
// keybroker keys: `POST /` with `X-Amz-Target: TrentService.<Operation>`,
// base64 blobs in JSON, and errors as HTTP 400 (or 5xx) with AWS's own
// exception names in `__type` and `X-Amzn-ErrorType`, which the SDKs turn
// into their typed errors.
//
// It is a front-end of the one request pipeline: a request is
// authenticated by Signature Version 4 (package sigv4; the access key
// names a keybroker client or admin, package accesskey), turned into a
// pipeline.Caller and an input, and performed, authorized and audited
// exactly as the same call over gRPC — the caller's Cedar policy, the
// audit line (with the AWS SDK's invocation id as the client request id,
// and the request id returned in `x-amzn-RequestId`). CiphertextBlob is
// keybroker's own versioned ciphertext, so Decrypt needs no KeyId and a
// blob made here opens over gRPC and the reverse; the encryption context
// binds exactly as keybroker's does.
//
// Key names: a key id and its ARN (`arn:aws:kms:<region>:<account>:key/<id>`)
// name keybroker key <id>; `alias/<name>` and its ARN (`…:alias/<name>`)
// name the key a named alias of that name points at (CreateAlias; the
// pipeline resolves it: the central tier's alias records, an edge's
// replica), else key <name> — every key is also alias/<its id>. ARNs must
// be of the configured region and account. Answers always carry the key
// ARN in KeyId (the AWS Encryption SDK requires it).
//
// Served: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
// GenerateDataKeyWithoutPlaintext, GenerateRandom, DescribeKey, Sign,
// Verify, GetPublicKey, GenerateMac, VerifyMac, ListKeys; and the
// key-management calls AWS tooling makes (admin.go, aliases.go), on the
// pipeline's admin operations, so authorized and audited as KeyAdmin's
// over gRPC: CreateKey, EnableKey, DisableKey, ScheduleKeyDeletion,
// CancelKeyDeletion, TagResource, UntagResource, ListResourceTags,
// CreateAlias, UpdateAlias, DeleteAlias, ListAliases, EnableKeyRotation,
// DisableKeyRotation and GetKeyRotationStatus. Every other
// operation answers UnsupportedOperationException; an edge relays the
// key-management calls to the central tier (below).
//
// # Key management as AWS's, and where it differs
//
// CreateKey makes a derive-mode key on the default derive root, named by
// a random UUID; KeySpec SYMMETRIC_DEFAULT, HMAC_256, ECC_NIST_P256 or
// ECC_NIST_EDWARDS25519 with its one KeyUsage; Tags become labels (AWS's
// tag limits, then keybroker's label rules: TagException). Key policies
// (Cedar decides), imported or custom-key-store material and multi-Region
// keys are UnsupportedOperationException. DisableKey of a disabled key
// and EnableKey of an enabled one are KMSInvalidStateException
// (keybroker's state machine; AWS may take them as no-ops, and Terraform
// reads the state before it asks). CancelKeyDeletion leaves the key Disabled, as AWS
// does. ListResourceTags is authorized as DescribeKey, TagResource and
// UntagResource as UpdateKey (on the key as it is and as it will be);
// alias changes as UpdateKey on every key they touch. ListAliases lists
// each key's named aliases and alias/<id>; its Limit bounds keys, so a
// page can hold more entries than Limit. EnableKeyRotation sets the key's
// rotation period (90 to 2560 days, 365 by default) and
// DisableKeyRotation clears it, both as UpdateKey; GetKeyRotationStatus is
// authorized as DescribeKey; all three refuse any key but a symmetric
// encryption key, as AWS does. GetKeyPolicy and PutKeyPolicy stay
// unsupported: no key policy decides anything here.
//
// # Serving at an edge
//
// A node that verifies SigV4 holds the signing key and could sign as the
// access key's principal, which an edge must never be able to do at the
// central tier. So an edge verifies only keys scoped to it (package
// accesskey, Edge-scoped keys), whose signing keys the central tier seals
// to it and refuses on its own listeners, and relays everything else
// (Config.Relay):
//
//   - a request signed with a key the edge does not verify — its
//     Credentials answer sigv4.ErrElsewhere — is relayed unverified: the
//     edge holds nothing to forge such a request with;
//   - a verified request is served here only when its operation is one an
//     edge serves and every key it names is one the edge serves from what
//     it holds (Relay.Local, decided whole and up front, as gRPC batches
//     are); otherwise it is relayed;
//   - a relayed request goes to the central tier exactly as the client
//     sent it (Relay.Forward), and the central tier answers it through
//     ServeForwarded: verified as its own listener would, except that keys
//     scoped to the relaying edge are accepted, and its signature claimed
//     once (ClaimFunc), so the edge can neither alter it (the signature
//     fails) nor run it twice.
//
// What an edge serves itself is authorized and audited at the edge, as
// its gRPC calls are; what it relays, at the central tier as the signer,
// with the edge named as via. A replay of a request the edge served
// itself, within SigV4's five minutes, is served again, as AWS would.
//
// # Cost
//
// Encrypt, Decrypt and ReEncrypt — the calls applications make at rate —
// are read and answered without reflection (fastjson.go): the plain JSON
// the SDKs send is read in one pass, and anything else (escapes, other
// members, differently cased names, repeated ones, nulls) goes to
// encoding/json from scratch, so what a body means and every error it
// gets are encoding/json's (FuzzFastDecode compares the two). The body is
// read in one allocation of its declared length. What remains of a call's
// cost beside the pipeline's is SigV4 (two SHA-256 and an HMAC) and the
// HTTP server's; docs/benchmarks.md ("Cutting the AWS path's cost") has
// the figures.
package awsjson

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// Service is the SigV4 service name of the AWS KMS API.
const Service = "kms"

// ContentType is the awsJson1_1 media type.
const ContentType = "application/x-amz-json-1.1"

// MaxBody bounds a request body. AWS KMS bounds plaintext to 4 KiB and a
// ciphertext blob to 6 KiB; base64 and the other fields fit many times.
const MaxBody = 64 << 10

// MaxPlaintext is AWS KMS's bound on Encrypt's plaintext.
const MaxPlaintext = 4096

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
	// mapping (rpc.Server.Status) — which the server names as AWS does.
	Status      func(error) *status.Status
	Credentials Credentials
	// Region and Account make the ARNs of keys and aliases; Region is also
	// the SigV4 scope's.
	Region, Account string
	// TrustDomain is the access keys' principals' trust domain.
	TrustDomain string
	// Relay, at an edge, takes what the edge does not serve itself to the
	// central tier (see Relay); nil at the central tier.
	Relay  Relay
	Logger *slog.Logger
}

// Server is the AWS KMS JSON API as an http.Handler.
type Server struct {
	cfg      Config
	verifier *sigv4.Verifier
	log      *slog.Logger
}

var (
	regionRe  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	accountRe = regexp.MustCompile(`^[0-9]{12}$`)
)

// New checks c and returns a Server.
func New(c Config) (*Server, error) {
	switch {
	case c.Pipeline == nil || c.Status == nil || c.Credentials == nil:
		return nil, errors.New("awsjson: a pipeline, a status mapping and credentials are required")
	case !regionRe.MatchString(c.Region):
		return nil, fmt.Errorf("awsjson: region %q is not an AWS region name such as eu-west-1", c.Region)
	case !accountRe.MatchString(c.Account):
		return nil, fmt.Errorf("awsjson: account %q is not 12 digits", c.Account)
	}
	s := &Server{cfg: c, log: c.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.verifier = &sigv4.Verifier{Service: Service, Region: c.Region, Required: []string{"x-amz-target"}}
	return s, nil
}

// operations are the served operations by X-Amz-Target's name.
var operations = map[string]func(*Server, context.Context, pipeline.Caller, []byte) (any, error){
	"Encrypt":                         handle((*Server).encrypt),
	"Decrypt":                         handle((*Server).decrypt),
	"ReEncrypt":                       handle((*Server).reEncrypt),
	"GenerateDataKey":                 handle((*Server).generateDataKey),
	"GenerateDataKeyWithoutPlaintext": handle((*Server).generateDataKeyWithoutPlaintext),
	"GenerateRandom":                  handle((*Server).generateRandom),
	"DescribeKey":                     handle((*Server).describeKey),
	"Sign":                            handle((*Server).sign),
	"Verify":                          handle((*Server).verify),
	"GetPublicKey":                    handle((*Server).getPublicKey),
	"GenerateMac":                     handle((*Server).generateMac),
	"VerifyMac":                       handle((*Server).verifyMac),
	"ListKeys":                        handle((*Server).listKeys),
	"ListAliases":                     handle((*Server).listAliases),
	"CreateKey":                       handle((*Server).createKey),
	"EnableKey":                       handle((*Server).enableKey),
	"DisableKey":                      handle((*Server).disableKey),
	"ScheduleKeyDeletion":             handle((*Server).scheduleKeyDeletion),
	"CancelKeyDeletion":               handle((*Server).cancelKeyDeletion),
	"TagResource":                     handle((*Server).tagResource),
	"UntagResource":                   handle((*Server).untagResource),
	"ListResourceTags":                handle((*Server).listResourceTags),
	"CreateAlias":                     handle((*Server).createAlias),
	"UpdateAlias":                     handle((*Server).updateAlias),
	"DeleteAlias":                     handle((*Server).deleteAlias),
	"EnableKeyRotation":               handle((*Server).enableKeyRotation),
	"DisableKeyRotation":              handle((*Server).disableKeyRotation),
	"GetKeyRotationStatus":            handle((*Server).getKeyRotationStatus),
}

// handle decodes an operation's request body for op: in the fast reader
// when the request has one and the body is in its plain form (fastjson.go),
// else by decode.
func handle[Req any](op func(*Server, context.Context, pipeline.Caller, *Req) (any, error)) func(*Server, context.Context, pipeline.Caller, []byte) (any, error) {
	return func(s *Server, ctx context.Context, caller pipeline.Caller, body []byte) (any, error) {
		in := new(Req)
		if f, ok := any(in).(fastDecoder); !ok || !fastDecode(body, f.fastFields()) {
			*in = *new(Req) // the fast reader may have filled part of it
			if err := decode(body, in); err != nil {
				return nil, err
			}
		}
		return op(s, ctx, caller, in)
	}
}

// SigningKeyFunc gives the signing key of an access key for a scope and
// the principal it acts as (Credentials.SigningKey's shape).
type SigningKeyFunc = func(ctx context.Context, accessKeyID, date, region, service string) ([]byte, identity.Identity, error)

// ClaimFunc spends a verified signature once (a relayed request must not
// run twice); it fails with ErrReplayed when it was spent before.
type ClaimFunc = func(ctx context.Context, v sigv4.Verified) error

// ErrReplayed is a relayed request whose signature ran before.
var ErrReplayed = errors.New("awsjson: this signed request was relayed before")

// ErrRelayRefused is a relayed request the policy does not let the edge
// relay: answered AccessDeniedException.
var ErrRelayRefused = errors.New("awsjson: the edge may not relay this request")

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	s.serve(w, r, body, s.cfg.Credentials.SigningKey, nil, s.cfg.Relay)
}

// ServeForwarded answers a request an edge relayed (EdgeSync's ForwardAWS
// at the central tier) exactly as ServeHTTP would, except that signingKey
// verifies it — accepting keys scoped to the relaying edge — and claim
// spends its signature once it verifies, before it runs.
func (s *Server) ServeForwarded(w http.ResponseWriter, r *http.Request, body []byte, signingKey SigningKeyFunc, claim ClaimFunc) {
	s.serve(w, r, body, signingKey, claim, nil)
}

// readBody reads the bounded body of a POST /; anything else is answered.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		w.Header().Set("x-amzn-RequestId", callinfo.NewRequestID())
		s.fail(w, &Error{Status: http.StatusBadRequest, Type: "UnknownOperationException", Message: "the AWS KMS API is POST / with X-Amz-Target"})
		return nil, false
	}
	var body []byte
	var err error
	if n := r.ContentLength; n >= 0 && n <= MaxBody {
		// The length is known (the SDKs send it) and the server reads no
		// more than it: one allocation of the right size.
		body = make([]byte, n)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	}
	if err != nil {
		w.Header().Set("x-amzn-RequestId", callinfo.NewRequestID())
		s.fail(w, validation("the request body is larger than %d bytes", MaxBody))
		return nil, false
	}
	return body, true
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, body []byte, signingKey SigningKeyFunc, claim ClaimFunc, relay Relay) {
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		w.Header().Set("x-amzn-RequestId", callinfo.NewRequestID())
		s.fail(w, &Error{Status: http.StatusBadRequest, Type: "UnknownOperationException", Message: "the AWS KMS API is POST / with X-Amz-Target"})
		return
	}
	// The principal comes with the signing key that verified the request.
	var who identity.Identity
	verifier := *s.verifier
	verifier.SigningKey = func(ctx context.Context, id, date, region, service string) ([]byte, error) {
		key, w, err := signingKey(ctx, id, date, region, service)
		who = w
		return key, err
	}
	verified, err := verifier.Verify(r.Context(), r, body)
	if relay != nil && errors.Is(err, sigv4.ErrElsewhere) {
		// Not a key this edge verifies: the central tier does, and
		// this edge holds nothing to forge it with.
		s.relay(w, r, body, relay)
		return
	}
	rid := callinfo.NewRequestID()
	if id := callinfo.RequestID(r.Context()); claim != nil && id != "" {
		rid = id // relayed: the request id the edge's and this tier's audit lines share
	}
	w.Header()[requestIDHeader] = []string{rid}
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			s.fail(w, &Error{Status: http.StatusBadRequest, Type: se.Code, Message: se.Message})
			return
		}
		s.log.Warn("verifying a request's signature", "err", err)
		s.fail(w, &Error{Status: http.StatusServiceUnavailable, Type: "KMSInternalException", Message: "the access key could not be checked; retry"})
		return
	}
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	run := operations[op]
	if relay != nil && (!ok || run == nil || !s.servesHere(r.Context(), relay, op, body)) {
		w.Header().Del("x-amzn-RequestId")
		s.relay(w, r, body, relay)
		return
	}
	if !ok || run == nil {
		s.fail(w, &Error{Status: http.StatusBadRequest, Type: "UnsupportedOperationException", Message: fmt.Sprintf("operation %q is not supported here", clipText(r.Header.Get("X-Amz-Target")))})
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != ContentType {
		s.fail(w, &Error{Status: http.StatusBadRequest, Type: "SerializationException", Message: "Content-Type must be " + ContentType})
		return
	}
	if claim != nil {
		if err := claim(r.Context(), verified); errors.Is(err, ErrReplayed) {
			s.fail(w, &Error{Status: http.StatusBadRequest, Type: sigv4.InvalidSignature, Message: "this signed request was already relayed once: sign it again"})
			return
		} else if errors.Is(err, ErrRelayRefused) {
			s.fail(w, &Error{Status: http.StatusBadRequest, Type: "AccessDeniedException", Message: "the edge that relayed this request may not relay it (policy)"})
			return
		} else if err != nil {
			s.log.Warn("claiming a relayed request's signature", "err", err)
			s.fail(w, &Error{Status: http.StatusServiceUnavailable, Type: "DependencyTimeoutException", Message: "the relayed request could not be recorded across the central tier; retry"})
			return
		}
	}
	caller := pipeline.Caller{Who: who, RequestID: rid, ClientRequestID: invocationID(r), Via: callinfo.Forwarder(r.Context())}
	out, err := run(s, r.Context(), caller, body)
	if err != nil {
		s.fail(w, s.awsError(err))
		return
	}
	if fe, ok := out.(fastEncoder); ok {
		buf := answerBuffers.Get().(*[]byte)
		*buf = fe.appendJSON((*buf)[:0])
		w.Header().Set("Content-Type", ContentType)
		w.Write(*buf) // the ResponseWriter copies it
		if cap(*buf) <= 64<<10 {
			answerBuffers.Put(buf)
		}
		return
	}
	data, err := json.Marshal(out)
	if err != nil {
		s.fail(w, &Error{Status: http.StatusInternalServerError, Type: "KMSInternalException", Message: "encoding the answer failed"})
		return
	}
	w.Header().Set("Content-Type", ContentType)
	w.Write(data)
}

// answerBuffers hold the answers the hot operations write themselves.
var answerBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// requestIDHeader is x-amzn-RequestId as net/http keeps it, set without
// canonicalizing the name each time.
var requestIDHeader = http.CanonicalHeaderKey("x-amzn-RequestId")

// invocationID is the AWS SDK's id of the call (kept in the audit line as
// the client request id), when it is a sane one.
func invocationID(r *http.Request) string {
	id := r.Header.Get("Amz-Sdk-Invocation-Id")
	if len(id) > 64 || strings.ContainsFunc(id, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
		return ""
	}
	return id
}

// Error is an answer in AWS's error shape.
type Error struct {
	Status  int
	Type    string
	Message string
}

func (e *Error) Error() string { return e.Type + ": " + e.Message }

func validation(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "ValidationException", Message: fmt.Sprintf(format, args...)}
}

func (s *Server) fail(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("X-Amzn-ErrorType", e.Type)
	w.WriteHeader(e.Status)
	data, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}{e.Type, e.Message})
	w.Write(data)
}

// awsError names an operation's error as AWS KMS would.
func (s *Server) awsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st := s.cfg.Status(err)
	msg := st.Message()
	var se *managed.StateError
	switch {
	case errors.Is(err, pipeline.ErrNoAdmin):
		return &Error{http.StatusBadRequest, "UnsupportedOperationException", msg}
	case errors.As(err, &se) && se.State == managed.StateDisabled:
		return &Error{http.StatusBadRequest, "DisabledException", msg}
	case errors.As(err, &se):
		return &Error{http.StatusBadRequest, "KMSInvalidStateException", msg}
	case errors.Is(err, managed.ErrBadCiphertext), errors.Is(err, envelope.ErrDecrypt), errors.Is(err, envelope.ErrMalformed):
		return &Error{http.StatusBadRequest, "InvalidCiphertextException", msg}
	}
	switch st.Code() {
	case codes.NotFound:
		return &Error{http.StatusBadRequest, "NotFoundException", msg}
	case codes.PermissionDenied:
		return &Error{http.StatusBadRequest, "AccessDeniedException", msg}
	case codes.InvalidArgument:
		return &Error{http.StatusBadRequest, "ValidationException", msg}
	case codes.FailedPrecondition:
		return &Error{http.StatusBadRequest, "KMSInvalidStateException", msg}
	case codes.ResourceExhausted:
		return &Error{http.StatusBadRequest, "ThrottlingException", msg}
	case codes.Unavailable, codes.DeadlineExceeded:
		return &Error{http.StatusServiceUnavailable, "DependencyTimeoutException", msg}
	case codes.AlreadyExists:
		return &Error{http.StatusBadRequest, "AlreadyExistsException", msg}
	case codes.Aborted:
		return &Error{http.StatusBadRequest, "ConflictException", msg}
	}
	return &Error{http.StatusInternalServerError, "KMSInternalException", msg}
}

// decode reads a request's JSON into v: malformed JSON or a field of the
// wrong type is a SerializationException; unknown fields are ignored, as
// AWS does.
func decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return &Error{Status: http.StatusBadRequest, Type: "SerializationException", Message: "the request is not the operation's JSON: " + clipText(err.Error())}
	}
	return nil
}

// keyID is the keybroker key a KeyId names: an id, alias/<id>, or a key or
// alias ARN of this region and account.
func (s *Server) keyID(name string) (string, error) {
	if name == "" {
		return "", validation("KeyId is required")
	}
	if rest, ok := strings.CutPrefix(name, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 5)
		if len(parts) != 5 || parts[0] != "aws" || parts[1] != "kms" {
			return "", &Error{http.StatusBadRequest, "NotFoundException", fmt.Sprintf("%s is not a KMS key or alias ARN", clipText(name))}
		}
		if parts[2] != s.cfg.Region || parts[3] != s.cfg.Account {
			return "", &Error{http.StatusBadRequest, "NotFoundException", fmt.Sprintf("%s is not in region %s of account %s", clipText(name), s.cfg.Region, s.cfg.Account)}
		}
		name = parts[4]
		if id, ok := strings.CutPrefix(name, "key/"); ok {
			return checkID(id)
		}
		if !strings.HasPrefix(name, "alias/") {
			return "", &Error{http.StatusBadRequest, "NotFoundException", fmt.Sprintf("%s names neither a key/ nor an alias/", clipText(name))}
		}
	}
	if id, ok := strings.CutPrefix(name, "alias/"); ok {
		return checkID(id)
	}
	return checkID(name)
}

func checkID(id string) (string, error) {
	if !envelope.ValidKeyID(id) {
		return "", validation("%s is not a key id: 1-128 of [A-Za-z0-9._:/-]", clipText(id))
	}
	return id, nil
}

// arn is the key ARN of key id.
func (s *Server) arn(id string) string {
	return "arn:aws:kms:" + s.cfg.Region + ":" + s.cfg.Account + ":key/" + id
}

// clipText bounds request text an answer repeats.
func clipText(s string) string {
	if len(s) > 96 {
		return s[:96] + "…"
	}
	return s
}
