package awsjson_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// centralPerformer is the central tier's performer without gRPC.
type centralPerformer struct{ *broker.Service }

func (centralPerformer) LookupKey(context.Context, *managed.Key, policy.Action, map[string]string) ([]placement.Candidate, error) {
	return nil, nil
}

func (centralPerformer) Served(*managed.Key, policy.Action) string { return "softkms" }

type staticPolicies struct{ s *policy.Set }

func (p staticPolicies) Current() *policy.Set { return p.s }

// benchFront is a central node's AWS KMS API without its listener: a real
// broker.Service on softkms with the derive-mode AES key "demo", a Cedar
// policy letting client/app use it, a real audit log, and an access key
// for client/app (its id and secret).
func benchFront(b *testing.B) (front *awsjson.Server, id, secret string) {
	b.Helper()
	dir := b.TempDir()
	ctx := b.Context()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("33", 32)), 0o600); err != nil {
		b.Fatal(err)
	}
	ks := filepath.Join(dir, "softkms.json")
	sb, err := softkms.New(ctx, softkms.Config{Path: ks, KEKFile: kek})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := sb.CreateKey(ctx, "prf", backends.HMAC256); err != nil {
		b.Fatal(err)
	}
	roots, err := broker.NewRoots(map[string]backends.Backend{"soft": sb}, map[string]string{"soft": "softkms:path=" + ks + ";kek-source=" + kek})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { roots.Close() })
	if err := roots.Declare([]broker.RootKey{{URI: "softkms:prf", Role: managed.RoleDerive}}); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(st, nil), Roots: roots,
		Materials: broker.NewMaterials(roots, 100, time.Hour, nil), DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf"}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := svc.CreateKey(ctx, broker.CreateParams{ID: "demo", Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
		b.Fatal(err)
	}
	pols, err := policy.Parse(map[string][]byte{"p.cedar": []byte(`permit (principal == Client::"app", action in [Action::"Encrypt", Action::"Decrypt"], resource);`)})
	if err != nil {
		b.Fatal(err)
	}
	log, err := audit.Open(filepath.Join(dir, "audit.jsonl"), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { log.Close() })
	p, err := pipeline.New(pipeline.Config{Performer: centralPerformer{svc}, Policy: staticPolicies{pols}, Audit: log, NodeID: "central-1"})
	if err != nil {
		b.Fatal(err)
	}
	const td = "kb.test"
	rec, secret, err := svc.CreateAccessKey(ctx, identity.Identity{TrustDomain: td, Kind: identity.Client, Name: "app"}, nil, "bench")
	if err != nil {
		b.Fatal(err)
	}
	front, err = awsjson.New(awsjson.Config{Pipeline: p, Status: status.Convert, Credentials: awsjson.NewCached(svc, 100),
		Region: "eu-west-1", Account: "111122223333", TrustDomain: td})
	if err != nil {
		b.Fatal(err)
	}
	return front, rec.ID, secret
}

// signed is a request to op with body, signed by the AWS SDK's signer as
// its KMS client signs (host, x-amz-date, x-amz-target, content-type,
// content-length, the SDK's invocation headers).
func signed(b *testing.B, op string, body []byte, id, secret string) *http.Request {
	b.Helper()
	r := httptest.NewRequest(http.MethodPost, "https://kms.eu-west-1.example/", bytes.NewReader(body))
	r.Header.Set("X-Amz-Target", "TrentService."+op)
	r.Header.Set("Content-Type", awsjson.ContentType)
	r.Header.Set("Amz-Sdk-Invocation-Id", "2b1c1d38-1f4a-4b43-9d0f-0d3b8a0c2a51")
	r.Header.Set("Amz-Sdk-Request", "attempt=1; max=3")
	r.Header.Set("User-Agent", "aws-sdk-go-v2/1.36.3 os/linux lang/go#1.26 md/GOOS#linux md/GOARCH#amd64 api/kms#1.38.1")
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}, r,
		hex.EncodeToString(sum[:]), "kms", "eu-west-1", time.Now()); err != nil {
		b.Fatal(err)
	}
	return r
}

// serveSigned serves r (whose body is body) b.N times, each with a fresh
// body reader and response, as a listener would hand it over, and checks
// each answer.
func serveSigned(b *testing.B, front http.Handler, r *http.Request, body []byte) {
	b.ReportAllocs()
	cpu0 := processCPU(b)
	n := 0
	for b.Loop() {
		rr := *r
		rr.Body = readCloser{bytes.NewReader(body)}
		w := httptest.NewRecorder()
		front.ServeHTTP(w, &rr)
		if w.Code != http.StatusOK {
			b.Fatalf("answer %d: %s", w.Code, w.Body)
		}
		n++
	}
	// Wall time per call on a shared machine counts the waits for a CPU;
	// the process's CPU time per call (the audit log's writer and the
	// garbage collector included) does not.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(n), "cpu-ns/op")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// BenchmarkServeEncrypt: one signed Encrypt of 1 KiB through ServeHTTP —
// SigV4 verification, JSON decoding, the pipeline (policy, audit line, the
// derive-mode key's AES-GCM) and the answer's encoding; the request is
// signed once and replayed, so the signer's cost is not counted.
func BenchmarkServeEncrypt(b *testing.B) {
	front, id, secret := benchFront(b)
	body, _ := json.Marshal(map[string]any{"KeyId": "alias/demo", "Plaintext": bytes.Repeat([]byte("p"), 1024)})
	serveSigned(b, front, signed(b, "Encrypt", body, id, secret), body)
}

// BenchmarkServeDecrypt: one signed Decrypt of a 1 KiB Encrypt's blob
// through ServeHTTP, as BenchmarkServeEncrypt.
func BenchmarkServeDecrypt(b *testing.B) {
	front, id, secret := benchFront(b)
	body, _ := json.Marshal(map[string]any{"KeyId": "alias/demo", "Plaintext": bytes.Repeat([]byte("p"), 1024)})
	w := httptest.NewRecorder()
	front.ServeHTTP(w, signed(b, "Encrypt", body, id, secret))
	var enc struct{ CiphertextBlob []byte }
	if err := json.Unmarshal(w.Body.Bytes(), &enc); err != nil || len(enc.CiphertextBlob) == 0 {
		b.Fatalf("Encrypt: %d %s", w.Code, w.Body)
	}
	body = []byte(`{"CiphertextBlob":"` + base64.StdEncoding.EncodeToString(enc.CiphertextBlob) + `"}`)
	serveSigned(b, front, signed(b, "Decrypt", body, id, secret), body)
}
