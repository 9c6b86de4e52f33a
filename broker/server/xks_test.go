package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/xks"
)

const xksPrefix = "/kb/xks-1"

// xksEnv is a central node's XKS proxy with access keys.
type xksEnv struct {
	e     *testEnv
	front *xks.Server
	clock *xksClock
}

type xksClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *xksClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *xksClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// newXKS starts a central node with AES keys "demo" (derive mode) and
// "wrapped" (wrap mode), an HMAC key "hmac", a backend-mode AES key "hsm"
// and a disabled AES key "off", all labelled app=billing, and its XKS
// proxy under xksPrefix with health key "demo".
func newXKS(t *testing.T) *xksEnv {
	t.Helper()
	e := start(t)
	ctx := t.Context()
	ops := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	billing := map[string]string{"app": "billing"}
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "demo", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
		{KeyId: "wrapped", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP, RootKey: "softkms:aes"},
		{KeyId: "hmac", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
		{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: "softkms:hsm-aes"},
		{KeyId: "off", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
	} {
		k.Labels = billing
		if _, err := ops.CreateKey(ctx, k); err != nil {
			t.Fatalf("CreateKey %s: %v", k.KeyId, err)
		}
	}
	if _, err := ops.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "off"}); err != nil {
		t.Fatal(err)
	}
	clock := &xksClock{now: time.Unix(1_800_000_000, 0)}
	front, err := xks.New(xks.Config{Pipeline: e.srv.Pipeline(), Status: e.srv.Status, Credentials: e.svc, Region: "eu-west-1",
		Prefix: xksPrefix, HealthKey: "demo", Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &xksEnv{e: e, front: front, clock: clock}
}

// accessKey makes an access key for a client principal.
func (x *xksEnv) accessKey(t *testing.T, client string) (id, secret string) {
	return x.accessKeyOf(t, identity.Client, client)
}

func (x *xksEnv) accessKeyOf(t *testing.T, kind identity.Kind, name string) (id, secret string) {
	t.Helper()
	rec, sec, err := x.e.svc.CreateAccessKey(t.Context(), identity.Identity{TrustDomain: x.e.srv.td, Kind: kind, Name: name}, nil, "xks test")
	if err != nil {
		t.Fatal(err)
	}
	return rec.ID, sec
}

// xksSigned is a POST of body to path signed as AWS KMS signs XKS calls:
// aws-sdk-go-v2's SigV4 signer, service kms-xks-proxy, at time at.
func xksSigned(t *testing.T, method, path string, body []byte, id, secret, service string, at time.Time) *http.Request {
	t.Helper()
	r := httptest.NewRequest(method, "https://xks.example"+path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}, r, hex.EncodeToString(sum[:]), service, "eu-west-1", at); err != nil {
		t.Fatal(err)
	}
	return r
}

// xksAnswer is an answer's status and JSON body.
type xksAnswer struct {
	code int
	body map[string]any
	raw  []byte
}

func (a xksAnswer) errorName() string { s, _ := a.body["errorName"].(string); return s }

func (a xksAnswer) bytes(t *testing.T, field string) []byte {
	t.Helper()
	s, _ := a.body[field].(string)
	var b []byte
	if err := json.Unmarshal([]byte(`"`+s+`"`), &b); err != nil {
		t.Fatalf("%s = %q: %v", field, s, err)
	}
	return b
}

func (x *xksEnv) do(t *testing.T, r *http.Request) xksAnswer {
	t.Helper()
	w := httptest.NewRecorder()
	x.front.ServeHTTP(w, r)
	a := xksAnswer{code: w.Code, raw: w.Body.Bytes()}
	if err := json.Unmarshal(w.Body.Bytes(), &a.body); err != nil {
		t.Fatalf("answer %d %q is not JSON: %v", w.Code, w.Body, err)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return a
}

// call POSTs req (JSON-encoded) to the operation op of key (op "health":
// no key) signed with id and secret now.
func (x *xksEnv) call(t *testing.T, id, secret, key, op string, req any) xksAnswer {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	path := xksPrefix + "/kms/xks/v1/keys/" + key + "/" + op
	if op == "health" {
		path = xksPrefix + "/kms/xks/v1/health"
	}
	return x.do(t, xksSigned(t, http.MethodPost, path, body, id, secret, xks.Service, time.Now()))
}

func meta(op, rid, key string) map[string]any {
	return map[string]any{"awsPrincipalArn": "arn:aws:iam::111122223333:role/app", "kmsOperation": op, "kmsRequestId": rid,
		"kmsKeyArn": "arn:aws:kms:eu-west-1:111122223333:key/" + key, "kmsViaService": "ebs"}
}

// TestXKSOperations: metadata, encrypt and decrypt of the spec, signed by
// aws-sdk-go-v2's SigV4 signer, on derive- and wrap-mode AES keys with
// both of a principal's access keys (rotation): a 4300-byte plaintext with
// an 8192-byte AAD round-trips; the ciphertext is the plaintext's length,
// the IV 12 bytes, the tag 16, the metadata at most 20, and the integrity
// value is SHA-256 over AAD ‖ metadata ‖ IV ‖ ciphertext ‖ tag; a wrong
// AAD, metadata, IV or tag is InvalidCiphertextException; after a rotation
// the old ciphertext still opens and new ones name the new version; the
// audit line carries kmsRequestId and the request metadata.
func TestXKSOperations(t *testing.T) {
	x := newXKS(t)
	id1, sec1 := x.accessKey(t, "billing")
	id2, sec2 := x.accessKey(t, "billing")
	pt := bytes.Repeat([]byte("p"), 4300)
	aad := bytes.Repeat([]byte("a"), 8192)
	for _, key := range []string{"demo", "wrapped"} {
		t.Run(key, func(t *testing.T) {
			md := x.call(t, id1, sec1, key, "metadata", map[string]any{"requestMetadata": meta("DescribeKey", "md-"+key, key)})
			if md.code != 200 || md.body["keySpec"] != "AES_256" || md.body["keyStatus"] != "ENABLED" || len(md.body["keyUsage"].([]any)) != 2 {
				t.Fatalf("metadata = %d %s", md.code, md.raw)
			}
			enc := x.call(t, id1, sec1, key, "encrypt", map[string]any{"requestMetadata": meta("Encrypt", "enc-"+key, key), "plaintext": pt,
				"encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": aad, "ciphertextDataIntegrityValueAlgorithm": "SHA_256"})
			if enc.code != 200 {
				t.Fatalf("encrypt = %d %s", enc.code, enc.raw)
			}
			ct, iv, tag, cmd, civ := enc.bytes(t, "ciphertext"), enc.bytes(t, "initializationVector"), enc.bytes(t, "authenticationTag"), enc.bytes(t, "ciphertextMetadata"), enc.bytes(t, "ciphertextDataIntegrityValue")
			if len(ct) != len(pt) || len(iv) != 12 || len(tag) != 16 || len(cmd) == 0 || len(cmd) > 20 || bytes.Equal(ct, pt) {
				t.Fatalf("encrypt: ciphertext %d bytes (plaintext %d), IV %d, tag %d, metadata %d", len(ct), len(pt), len(iv), len(tag), len(cmd))
			}
			if want := xks.IntegrityValue(aad, cmd, iv, ct, tag); !bytes.Equal(civ, want) {
				t.Errorf("ciphertextDataIntegrityValue = %x, want %x", civ, want)
			}
			h := sha256.New()
			for _, b := range [][]byte{aad, cmd, iv, ct, tag} {
				h.Write(b)
			}
			if !bytes.Equal(civ, h.Sum(nil)) {
				t.Error("ciphertextDataIntegrityValue is not SHA-256 of AAD ‖ metadata ‖ IV ‖ ciphertext ‖ tag")
			}
			decReq := func(aad, cmd, iv, ct, tag []byte) map[string]any {
				return map[string]any{"requestMetadata": meta("Decrypt", "dec-"+key, key), "encryptionAlgorithm": "AES_GCM",
					"ciphertext": ct, "initializationVector": iv, "authenticationTag": tag, "additionalAuthenticatedData": aad, "ciphertextMetadata": cmd}
			}
			// The second access key of the principal decrypts what the first encrypted.
			dec := x.call(t, id2, sec2, key, "decrypt", decReq(aad, cmd, iv, ct, tag))
			if dec.code != 200 || !bytes.Equal(dec.bytes(t, "plaintext"), pt) {
				t.Fatalf("decrypt = %d %.200s", dec.code, dec.raw)
			}
			flip := func(b []byte) []byte { c := bytes.Clone(b); c[0] ^= 1; return c }
			for name, req := range map[string]map[string]any{
				"wrong AAD":           decReq(flip(aad), cmd, iv, ct, tag),
				"no AAD":              decReq(nil, cmd, iv, ct, tag),
				"tampered ciphertext": decReq(aad, cmd, iv, flip(ct), tag),
				"tampered tag":        decReq(aad, cmd, iv, ct, flip(tag)),
				"wrong IV":            decReq(aad, cmd, flip(iv), ct, tag),
				"16-byte IV":          decReq(aad, cmd, append(bytes.Clone(iv), 1, 2, 3, 4), ct, tag),
				"no metadata":         decReq(aad, nil, iv, ct, tag),
				"foreign metadata":    decReq(aad, []byte("other-proxy"), iv, ct, tag),
				"version 9":           decReq(aad, []byte{1, 0, 0, 0, 9}, iv, ct, tag),
			} {
				if a := x.call(t, id1, sec1, key, "decrypt", req); a.code != 400 || a.errorName() != xks.InvalidCiphertextException {
					t.Errorf("%s: %d %s, want 400 InvalidCiphertextException", name, a.code, a.raw)
				}
			}
			other := map[string]string{"demo": "wrapped", "wrapped": "demo"}[key]
			if a := x.call(t, id1, sec1, other, "decrypt", decReq(aad, cmd, iv, ct, tag)); a.code != 400 || a.errorName() != xks.InvalidCiphertextException {
				t.Errorf("under the other key: %d %s, want 400 InvalidCiphertextException", a.code, a.raw)
			}

			// Rotation: the old ciphertext opens with the version its metadata names.
			ops := kbv1.NewKeyAdminClient(x.e.conn(t, identity.Admin, "ops"))
			if _, err := ops.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: key}); err != nil {
				t.Fatal(err)
			}
			if a := x.call(t, id1, sec1, key, "decrypt", decReq(aad, cmd, iv, ct, tag)); a.code != 200 || !bytes.Equal(a.bytes(t, "plaintext"), pt) {
				t.Errorf("decrypt after rotation = %d %.200s", a.code, a.raw)
			}
			enc2 := x.call(t, id1, sec1, key, "encrypt", map[string]any{"requestMetadata": meta("Encrypt", "enc2-"+key, key), "plaintext": []byte("x"), "encryptionAlgorithm": "AES_GCM"})
			if enc2.code != 200 || bytes.Equal(enc2.bytes(t, "ciphertextMetadata"), cmd) || enc2.body["ciphertextDataIntegrityValue"] != nil {
				t.Errorf("encrypt after rotation = %d %s: want new metadata and no integrity value unasked", enc2.code, enc2.raw)
			}
		})
	}
	var found bool
	for _, r := range auditLines(t, x.e.auditPath) {
		if r.ClientRequestID == "enc-demo" {
			found = true
			if r.Operation != "Encrypt" || r.Key != "demo" || r.Outcome != "ok" || r.Version != 1 || !strings.Contains(r.Principal, "client/billing") ||
				!strings.Contains(r.Detail, `kmsOperation="Encrypt"`) || !strings.Contains(r.Detail, "arn:aws:iam::111122223333:role/app") {
				t.Errorf("the XKS encrypt's audit line = %+v", r)
			}
		}
	}
	if !found {
		t.Error("no audit line has kmsRequestId enc-demo as its client request id")
	}
}

// TestXKSErrors: every error of the spec the proxy answers, with its HTTP
// status and errorName, including the SigV4 refusals (wrong secret, stale
// date, unsigned header, other service, unknown key) and the path prefix
// checked before authentication.
func TestXKSErrors(t *testing.T) {
	x := newXKS(t)
	id, sec := x.accessKey(t, "billing")
	nid, nsec := x.accessKey(t, "nobody")
	rid, rsec := x.accessKey(t, "reader") // may Encrypt and Decrypt any key
	aid, asec := x.accessKeyOf(t, identity.Admin, "ops")
	base := xksPrefix + "/kms/xks/v1/keys/"
	encBody := func(key string) []byte {
		b, _ := json.Marshal(map[string]any{"requestMetadata": meta("Encrypt", "r1", key), "plaintext": []byte("hello"), "encryptionAlgorithm": "AES_GCM"})
		return b
	}
	mdBody, _ := json.Marshal(map[string]any{"requestMetadata": meta("DescribeKey", "r2", "demo")})
	now := time.Now()
	unsigned := func(r *http.Request) {
		auth := r.Header.Get("Authorization")
		if !strings.Contains(auth, ";x-amz-date") {
			t.Fatalf("the signer did not sign x-amz-date: %s", auth)
		}
		r.Header.Set("Authorization", strings.Replace(auth, ";x-amz-date", "", 1))
	}
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		id, secret, svc    string
		at                 time.Time
		mutate             func(*http.Request)
		code               int
		want               string
	}{
		{"wrong prefix, valid signature", "POST", "/other/kms/xks/v1/keys/demo/encrypt", encBody("demo"), id, sec, xks.Service, now, nil, 404, xks.InvalidURIPathException},
		{"no prefix", "POST", "/kms/xks/v1/keys/demo/encrypt", encBody("demo"), id, sec, xks.Service, now, nil, 404, xks.InvalidURIPathException},
		{"unknown operation", "POST", base + "demo/sign", encBody("demo"), id, sec, xks.Service, now, nil, 404, xks.InvalidURIPathException},
		{"key id not of the spec", "POST", base + "de%20mo/encrypt", encBody("demo"), id, sec, xks.Service, now, nil, 404, xks.InvalidURIPathException},
		{"wrong prefix, unsigned", "POST", "/other/kms/xks/v1/health", nil, "", "", "", now, nil, 404, xks.InvalidURIPathException},
		{"GET", "GET", base + "demo/metadata", nil, id, sec, xks.Service, now, nil, 405, "MethodNotAllowed"},
		{"wrong secret", "POST", base + "demo/encrypt", encBody("demo"), id, "not-the-secret", xks.Service, now, nil, 401, xks.AuthenticationFailedException},
		{"stale date", "POST", base + "demo/encrypt", encBody("demo"), id, sec, xks.Service, now.Add(-10 * time.Minute), nil, 401, xks.AuthenticationFailedException},
		{"future date", "POST", base + "demo/encrypt", encBody("demo"), id, sec, xks.Service, now.Add(10 * time.Minute), nil, 401, xks.AuthenticationFailedException},
		{"unsigned x-amz-date", "POST", base + "demo/encrypt", encBody("demo"), id, sec, xks.Service, now, unsigned, 401, xks.AuthenticationFailedException},
		{"service kms", "POST", base + "demo/encrypt", encBody("demo"), id, sec, "kms", now, nil, 401, xks.AuthenticationFailedException},
		{"unknown access key", "POST", base + "demo/encrypt", encBody("demo"), "AKIDUNKNOWN0000000000", sec, xks.Service, now, nil, 401, xks.AuthenticationFailedException},
		{"no signature", "POST", base + "demo/encrypt", encBody("demo"), "", "", "", now, nil, 401, xks.AuthenticationFailedException},
		{"body changed after signing", "POST", base + "demo/encrypt", encBody("demo"), id, sec, xks.Service, now, func(r *http.Request) {
			r.Body = http.NoBody
			r.ContentLength = 0
		}, 401, xks.AuthenticationFailedException},
		{"malformed JSON", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"wrong type", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"plaintext":5,"encryptionAlgorithm":"AES_GCM"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"not base64", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"plaintext":"***","encryptionAlgorithm":"AES_GCM"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"no requestMetadata", "POST", base + "demo/encrypt", []byte(`{"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"no plaintext", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"encryptionAlgorithm":"AES_GCM"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"algorithm", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"plaintext":"aGk=","encryptionAlgorithm":"AES_CBC"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"integrity algorithm", "POST", base + "demo/encrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM","ciphertextDataIntegrityValueAlgorithm":"MD5"}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"decrypt: 8-byte tag", "POST", base + "demo/decrypt", []byte(`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Decrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"encryptionAlgorithm":"AES_GCM","ciphertext":"aGk=","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAA="}`), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"body too large", "POST", base + "demo/encrypt", bytes.Repeat([]byte(" "), xks.MaxBody+1), id, sec, xks.Service, now, nil, 400, xks.ValidationException},
		{"unknown key", "POST", base + "no-such-key/encrypt", encBody("no-such-key"), rid, rsec, xks.Service, now, nil, 404, xks.KeyNotFoundException},
		{"unknown key, metadata", "POST", base + "no-such-key/metadata", mdBody, aid, asec, xks.Service, now, nil, 404, xks.KeyNotFoundException},
		{"principal the policy refuses", "POST", base + "demo/encrypt", encBody("demo"), nid, nsec, xks.Service, now, nil, 403, xks.AccessDeniedException},
		{"refused principal, unknown key", "POST", base + "no-such-key/encrypt", encBody("no-such-key"), nid, nsec, xks.Service, now, nil, 403, xks.AccessDeniedException},
		{"disabled key", "POST", base + "off/encrypt", encBody("off"), id, sec, xks.Service, now, nil, 400, xks.InvalidStateException},
		{"HMAC key", "POST", base + "hmac/encrypt", encBody("hmac"), id, sec, xks.Service, now, nil, 400, xks.InvalidKeyUsageException},
		{"HMAC key, metadata", "POST", base + "hmac/metadata", mdBody, id, sec, xks.Service, now, nil, 400, xks.InvalidKeyUsageException},
		{"backend-mode key", "POST", base + "hsm/encrypt", encBody("hsm"), id, sec, xks.Service, now, nil, 400, xks.InvalidKeyUsageException},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r *http.Request
			if tc.id == "" {
				r = httptest.NewRequest(tc.method, "https://xks.example"+tc.path, bytes.NewReader(tc.body))
			} else {
				r = xksSigned(t, tc.method, tc.path, tc.body, tc.id, tc.secret, tc.svc, tc.at)
			}
			if tc.mutate != nil {
				tc.mutate(r)
			}
			a := x.do(t, r)
			if a.code != tc.code || a.errorName() != tc.want || a.body["errorMessage"] == "" {
				t.Errorf("%d %s; want %d %s", a.code, a.raw, tc.code, tc.want)
			}
			if tc.name == "unsigned x-amz-date" && !strings.Contains(string(a.raw), "IncompleteSignatureException") {
				t.Errorf("%s: want the refusal to name IncompleteSignatureException", a.raw)
			}
		})
	}
	// A disabled key's metadata says so.
	if a := x.call(t, id, sec, "off", "metadata", map[string]any{"requestMetadata": meta("DescribeKey", "r3", "off")}); a.code != 200 || a.body["keyStatus"] != "DISABLED" {
		t.Errorf("metadata of a disabled key = %d %s, want keyStatus DISABLED", a.code, a.raw)
	}
	// An unknown kmsOperation is accepted, as the spec requires.
	if a := x.call(t, id, sec, "demo", "metadata", map[string]any{"requestMetadata": meta("SomeFutureOperation", "r4", "demo")}); a.code != 200 {
		t.Errorf("an unknown kmsOperation: %d %s, want 200", a.code, a.raw)
	}
}

// TestXKSHealth: the health check encrypts and decrypts on the health key
// for real — ACTIVE — and keeps its result for xks.HealthTTL on the
// proxy's clock: with the key disabled it still answers ACTIVE within the
// TTL, and UNAVAILABLE once the TTL has passed; it is authenticated and
// under the prefix like every operation.
func TestXKSHealth(t *testing.T) {
	x := newXKS(t)
	id, sec := x.accessKey(t, "billing")
	req := map[string]any{"requestMetadata": map[string]any{"kmsRequestId": "h1", "kmsOperation": "KmsHealthCheck"}}
	status := func() string {
		t.Helper()
		a := x.call(t, id, sec, "", "health", req)
		if a.code != 200 || a.body["xksProxyVendor"] != "keybroker" {
			t.Fatalf("health = %d %s", a.code, a.raw)
		}
		fleet, _ := a.body["ekmFleetDetails"].([]any)
		if len(fleet) != 1 {
			t.Fatalf("health's ekmFleetDetails = %s", a.raw)
		}
		return fleet[0].(map[string]any)["healthStatus"].(string)
	}
	if got := status(); got != "ACTIVE" {
		t.Fatalf("healthStatus = %s, want ACTIVE", got)
	}
	var probes int
	for _, r := range auditLines(t, x.e.auditPath) {
		if r.Key == "demo" && r.Detail == "xks health" && r.Outcome == "ok" {
			probes++
		}
	}
	if probes != 2 {
		t.Errorf("%d audited health probes, want 2 (an encrypt and a decrypt)", probes)
	}
	ops := kbv1.NewKeyAdminClient(x.e.conn(t, identity.Admin, "ops"))
	if _, err := ops.DisableKey(t.Context(), &kbv1.KeyRequest{KeyId: "demo"}); err != nil {
		t.Fatal(err)
	}
	x.clock.advance(xks.HealthTTL - time.Second)
	if got := status(); got != "ACTIVE" {
		t.Errorf("healthStatus within the TTL = %s, want the cached ACTIVE", got)
	}
	x.clock.advance(2 * time.Second)
	if got := status(); got != "UNAVAILABLE" {
		t.Errorf("healthStatus past the TTL with the key disabled = %s, want UNAVAILABLE", got)
	}
	body, _ := json.Marshal(req)
	if a := x.do(t, xksSigned(t, "POST", xksPrefix+"/kms/xks/v1/health", body, id, "wrong", xks.Service, time.Now())); a.code != 401 || a.errorName() != xks.AuthenticationFailedException {
		t.Errorf("health with a wrong secret = %d %s", a.code, a.raw)
	}
	if a := x.call(t, id, sec, "", "health", map[string]any{}); a.code != 400 || a.errorName() != xks.ValidationException {
		t.Errorf("health without requestMetadata = %d %s", a.code, a.raw)
	}
}
