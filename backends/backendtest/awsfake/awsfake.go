// Package awsfake is an in-process fake of AWS KMS that speaks the service's
// awsJson1_1 wire protocol, so tests run the real aws-sdk-go-v2 KMS client
// (serializers, SigV4 signing, retryer, error deserializers) against it.
//
//	fake := awsfake.New(t)
//	client := kms.New(kms.Options{
//		Region:       awsfake.Region,
//		BaseEndpoint: aws.String(fake.URL()),
//		Credentials:  credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
//	})
//
// # Protocol
//
// Every request is POST / with X-Amz-Target: TrentService.<Operation> and
// Content-Type application/x-amz-json-1.1; blobs travel as base64 in JSON.
// Errors are HTTP 400 (500 and 503 for server faults) with a body
// {"__type":"NotFoundException","message":"..."}, the shape the SDK's error
// deserializer decodes into *types.NotFoundException and friends. A request
// needs a SigV4 Authorization header scoped to Region and the kms service;
// the signature itself is not checked.
//
// # Behaviour
//
// The fake implements CreateKey (SYMMETRIC_DEFAULT, HMAC_256 and
// ECC_NIST_P256 keys), CreateAlias, DescribeKey, ListKeys, EnableKey,
// DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, Encrypt, Decrypt,
// GenerateDataKey, GenerateMac, VerifyMac, Sign, GetPublicKey and
// GenerateRandom, with real cryptography: every symmetric key has its own
// random AES-256-GCM secret, HMAC keys their own 32-byte secret, ECC keys a
// P-256 private key. A ciphertext blob names the key that made it and is
// authenticated together with the canonical encoding of the encryption
// context, so Decrypt works without a KeyId, a different context or a
// tampered blob is InvalidCiphertextException and an explicit KeyId other
// than the blob's key is IncorrectKeyException. Key ids are UUIDs, ARNs are
// arn:aws:kms:us-east-1:111122223333:key/<id>, and aliases and alias ARNs
// resolve wherever the service accepts them. Disabled keys answer
// DisabledException, keys pending deletion KMSInvalidStateException, unknown
// keys NotFoundException, the wrong key usage InvalidKeyUsageException, and
// out-of-range inputs (an empty or over-4096-byte plaintext or message,
// GenerateRandom outside 1..1024) ValidationException, as the service does.
//
// # Faults
//
// [Fake.SetFaults] injects throttling (a fraction of calls answered
// ThrottlingException, decided by a seeded generator so a serial test sees
// the same pattern every run), a full outage (HTTP 503), a short run of
// failures (the next N calls answer HTTP 500 KMSInternalException) and added
// latency (cut short when the client gives up). [Fake.Calls] counts the
// requests each operation received, faulted ones included, so a test can
// assert how many calls and retries a client made. A Fake is safe for
// concurrent use.
package awsfake

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/backends/backendtest"
)

// The fake's fixed identity.
const (
	Region  = "us-east-1"
	Account = "111122223333"
)

// Key specs the fake can create.
const (
	SymmetricDefault = "SYMMETRIC_DEFAULT"
	HMAC256          = "HMAC_256"
	ECCNISTP256      = "ECC_NIST_P256"
)

// maxBody bounds a request body; the largest legitimate request (a 6 KiB
// ciphertext plus an 8 KiB encryption context, base64) is far below it.
const maxBody = 1 << 20

// Faults are the failures the fake injects. The zero value injects none.
type Faults struct {
	// ThrottleFraction is the fraction (0..1) of calls answered with
	// ThrottlingException.
	ThrottleFraction float64
	// Seed seeds the generator that picks which calls are throttled.
	Seed uint64
	// Outage answers every call with HTTP 503 ServiceUnavailableException.
	Outage bool
	// FailNext answers the next FailNext calls with HTTP 500
	// KMSInternalException.
	FailNext int
	// Latency delays every answer, or until the client gives up.
	Latency time.Duration
}

// Fake is a fake AWS KMS endpoint.
type Fake struct {
	srv *httptest.Server

	mu      sync.RWMutex
	keys    map[string]*key   // by key id
	aliases map[string]string // alias name ("alias/x") to key id

	fmu                     sync.Mutex
	faults                  Faults
	rng                     *mrand.Rand
	backendtest.CallCounter // calls by operation
}

// New starts a fake on a local httptest server, closed when tb's test ends.
func New(tb testing.TB) *Fake {
	tb.Helper()
	f := &Fake{
		keys:    map[string]*key{},
		aliases: map[string]string{},
		rng:     newRand(0),
	}
	f.srv = httptest.NewServer(f)
	tb.Cleanup(f.srv.Close)
	return f
}

// URL is the endpoint to give the SDK as its BaseEndpoint.
func (f *Fake) URL() string { return f.srv.URL }

// ARN returns the ARN of a key id.
func ARN(keyID string) string {
	return "arn:aws:kms:" + Region + ":" + Account + ":key/" + keyID
}

// CreateKey creates an enabled key of the given spec (SymmetricDefault,
// HMAC256 or ECCNISTP256) with its natural usage and returns its key id. It
// panics on any other spec.
func (f *Fake) CreateKey(spec string) string {
	k, aerr := newKey(spec, usageOf(spec), "")
	if aerr != nil {
		panic("awsfake: CreateKey: " + aerr.Error())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[k.id] = k
	return k.id
}

// Alias points alias name ("alias/...") at a key id, as CreateAlias would.
// It panics when the alias exists or the key does not.
func (f *Fake) Alias(name, keyID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.aliases[name]; dup || f.keys[keyID] == nil {
		panic(fmt.Sprintf("awsfake: Alias(%q, %q): alias exists or key unknown", name, keyID))
	}
	f.aliases[name] = keyID
}

// Disable disables a key, as DisableKey would. It panics on an unknown key.
func (f *Fake) Disable(keyID string) { f.setState(keyID, stateDisabled) }

// Enable enables a key, as EnableKey would. It panics on an unknown key.
func (f *Fake) Enable(keyID string) { f.setState(keyID, stateEnabled) }

func (f *Fake) setState(keyID, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.keys[keyID]
	if k == nil {
		panic(fmt.Sprintf("awsfake: unknown key %q", keyID))
	}
	k.state = state
}

// KeyState reports a key's state (Enabled, Disabled, PendingDeletion), or
// "" for an unknown key id.
func (f *Fake) KeyState(keyID string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if k := f.keys[keyID]; k != nil {
		return k.state
	}
	return ""
}

// Keys lists the ids of every key, sorted.
func (f *Fake) Keys() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ids := make([]string, 0, len(f.keys))
	for id := range f.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// SetFaults replaces the injected faults and restarts the throttling
// sequence from fl.Seed.
func (f *Fake) SetFaults(fl Faults) {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.faults = fl
	f.rng = newRand(fl.Seed)
}

func newRand(seed uint64) *mrand.Rand {
	return mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// apiError is an error answer in the service's shape.
type apiError struct {
	status int
	typ    string
	msg    string
}

func (e *apiError) Error() string { return e.typ + ": " + e.msg }

func errorf(typ, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: typ, msg: fmt.Sprintf(format, args...)}
}

// credentialScope matches a SigV4 Authorization header and captures the
// credential scope's region and service.
var credentialScope = regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=[^/,]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request,`)

// ServeHTTP implements the wire protocol.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/":
		writeError(w, &apiError{http.StatusNotFound, "UnknownOperationException", "the service is served at POST /"})
		return
	case !ok || handlers[op] == nil:
		writeError(w, errorf("UnknownOperationException", "unknown X-Amz-Target %q", r.Header.Get("X-Amz-Target")))
		return
	}
	// Read the body first: only then does the server watch the connection
	// and cancel r.Context() when the client hangs up.
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		writeError(w, errorf("SerializationException", "request body unreadable or over %d bytes", maxBody))
		return
	}
	latency, fault := f.admit(op)
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	switch fault {
	case outage:
		writeError(w, &apiError{http.StatusServiceUnavailable, "ServiceUnavailableException", "injected outage"})
		return
	case internalFailure:
		writeError(w, &apiError{http.StatusInternalServerError, "KMSInternalException", "injected internal failure"})
		return
	case throttled:
		writeError(w, errorf("ThrottlingException", "Rate exceeded"))
		return
	}
	if aerr := checkRequest(r); aerr != nil {
		writeError(w, aerr)
		return
	}
	out, aerr := handlers[op](f, body)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(out); err != nil {
		writeError(w, &apiError{http.StatusInternalServerError, "KMSInternalException", err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", newUUID())
	_, _ = w.Write(buf.Bytes())
}

// fault is what the fake does to one call instead of answering it.
type fault int

const (
	noFault fault = iota
	outage
	internalFailure
	throttled
)

// admit records a call to op and decides its fate: the latency to add and
// the fault to inject, if any.
func (f *Fake) admit(op string) (time.Duration, fault) {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.Count(op)
	switch {
	case f.faults.Outage:
		return f.faults.Latency, outage
	case f.faults.FailNext > 0:
		f.faults.FailNext--
		return f.faults.Latency, internalFailure
	case f.faults.ThrottleFraction > 0 && f.rng.Float64() < f.faults.ThrottleFraction:
		return f.faults.Latency, throttled
	}
	return f.faults.Latency, noFault
}

// checkRequest enforces what the service enforces before looking at the
// body: a SigV4 Authorization header for this region and service, and the
// protocol's content type.
func checkRequest(r *http.Request) *apiError {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return errorf("MissingAuthenticationTokenException", "Missing Authentication Token")
	}
	m := credentialScope.FindStringSubmatch(auth)
	switch {
	case m == nil:
		return errorf("IncompleteSignatureException", "Authorization header is not a SigV4 signature")
	case m[1] != Region:
		return errorf("InvalidSignatureException", "Credential should be scoped to a valid region, not '%s'", m[1])
	case m[2] != "kms":
		return errorf("InvalidSignatureException", "Credential should be scoped to correct service: 'kms'")
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		return errorf("SerializationException", "Content-Type %q is not application/x-amz-json-1.1", ct)
	}
	return nil
}

func writeError(w http.ResponseWriter, e *apiError) {
	body, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}{e.typ, e.msg})
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", newUUID())
	w.WriteHeader(cmp.Or(e.status, http.StatusBadRequest))
	_, _ = w.Write(body)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
