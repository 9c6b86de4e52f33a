package sigv4

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

const (
	testID     = "KBAKTESTKEY000000001"
	testSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
	testRegion = "eu-west-1"
)

var testNow = time.Date(2026, 12, 7, 14, 30, 0, 0, time.UTC)

func verifier() *Verifier {
	return &Verifier{Service: "kms", Region: testRegion, Required: []string{"x-amz-target"}, Now: func() time.Time { return testNow },
		SigningKey: func(_ context.Context, id, date, region, service string) ([]byte, error) {
			if id != testID {
				return nil, ErrUnknownKey
			}
			return DeriveSigningKey([]byte(testSecret), date, region, service), nil
		}}
}

// signed is a KMS JSON request signed by the AWS SDK's own signer.
func signed(t *testing.T, body string, at time.Time, mutate func(*http.Request)) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "https://kms.example:7443/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
	if mutate != nil {
		mutate(r)
	}
	sum := sha256.Sum256([]byte(body))
	creds := aws.Credentials{AccessKeyID: testID, SecretAccessKey: testSecret}
	if err := v4.NewSigner().SignHTTP(t.Context(), creds, r, hex.EncodeToString(sum[:]), "kms", testRegion, at); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestVerifySDKSignatures: what the AWS SDK's signer signs verifies, with
// its own choice of signed headers, a query, and repeated and spaced header
// values.
func TestVerifySDKSignatures(t *testing.T) {
	body := `{"KeyId":"alias/demo","Plaintext":"aGVsbG8="}`
	for name, mutate := range map[string]func(*http.Request){
		"plain": nil,
		"spaced and repeated header": func(r *http.Request) {
			r.Header.Add("X-Amz-Meta", "a   b ")
			r.Header.Add("X-Amz-Meta", " c")
		},
		"query": func(r *http.Request) { r.URL.RawQuery = "b=2&a=%2F1&a=0&a-b=x" },
	} {
		t.Run(name, func(t *testing.T) {
			r := signed(t, body, testNow.Add(-time.Minute), mutate)
			got, err := verifier().Verify(t.Context(), r, []byte(body))
			if err != nil {
				t.Fatalf("Verify: %v (Authorization %s)", err, r.Header.Get("Authorization"))
			}
			if got.AccessKeyID != testID {
				t.Errorf("access key id %q", got.AccessKeyID)
			}
		})
	}
}

// TestVerifyRefusals: each way a request is refused, with AWS's name.
func TestVerifyRefusals(t *testing.T) {
	body := `{"KeyId":"alias/demo"}`
	for _, tc := range []struct {
		name   string
		req    func() (*http.Request, []byte)
		code   string
		verify func(*Verifier)
	}{
		{"unsigned", func() (*http.Request, []byte) {
			r := httptest.NewRequest(http.MethodPost, "https://kms.example/", strings.NewReader(body))
			return r, []byte(body)
		}, MissingAuthenticationToken, nil},
		{"body changed", func() (*http.Request, []byte) {
			return signed(t, body, testNow, nil), []byte(`{"KeyId":"alias/other"}`)
		}, InvalidSignature, nil},
		{"operation changed", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
			return r, []byte(body)
		}, InvalidSignature, nil},
		{"wrong secret", func() (*http.Request, []byte) {
			r := httptest.NewRequest(http.MethodPost, "https://kms.example/", strings.NewReader(body))
			r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
			sum := sha256.Sum256([]byte(body))
			creds := aws.Credentials{AccessKeyID: testID, SecretAccessKey: "not-the-secret"}
			if err := v4.NewSigner().SignHTTP(t.Context(), creds, r, hex.EncodeToString(sum[:]), "kms", testRegion, testNow); err != nil {
				t.Fatal(err)
			}
			return r, []byte(body)
		}, InvalidSignature, nil},
		{"unknown key", func() (*http.Request, []byte) {
			r := httptest.NewRequest(http.MethodPost, "https://kms.example/", strings.NewReader(body))
			r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
			sum := sha256.Sum256([]byte(body))
			creds := aws.Credentials{AccessKeyID: "KBAKSOMEONEELSE00000", SecretAccessKey: testSecret}
			if err := v4.NewSigner().SignHTTP(t.Context(), creds, r, hex.EncodeToString(sum[:]), "kms", testRegion, testNow); err != nil {
				t.Fatal(err)
			}
			return r, []byte(body)
		}, UnrecognizedClient, nil},
		{"stale", func() (*http.Request, []byte) {
			return signed(t, body, testNow.Add(-6*time.Minute), nil), []byte(body)
		}, InvalidSignature, nil},
		{"from the future", func() (*http.Request, []byte) {
			return signed(t, body, testNow.Add(6*time.Minute), nil), []byte(body)
		}, InvalidSignature, nil},
		{"other region", func() (*http.Request, []byte) {
			return signed(t, body, testNow, nil), []byte(body)
		}, InvalidSignature, func(v *Verifier) { v.Region = "us-east-1" }},
		{"other service", func() (*http.Request, []byte) {
			return signed(t, body, testNow, nil), []byte(body)
		}, InvalidSignature, func(v *Verifier) { v.Service = "kms-xks-proxy" }},
		{"required header unsigned", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, func(r *http.Request) { r.Header.Del("X-Amz-Target") })
			r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
			return r, []byte(body)
		}, IncompleteSignature, nil},
		{"signed header missing", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Del("Content-Type")
			return r, []byte(body)
		}, IncompleteSignature, nil},
		{"session token", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Set("X-Amz-Security-Token", "FwoGZXIvYXdzE")
			return r, []byte(body)
		}, UnrecognizedClient, nil},
		{"two authorizations", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Add("Authorization", r.Header.Get("Authorization"))
			return r, []byte(body)
		}, IncompleteSignature, nil},
		{"garbage authorization", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=, Signature=zz")
			return r, []byte(body)
		}, IncompleteSignature, nil},
		{"scope date not the request's", func() (*http.Request, []byte) {
			r := signed(t, body, testNow, nil)
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/20261207/", "/20261206/", 1))
			return r, []byte(body)
		}, InvalidSignature, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := verifier()
			if tc.verify != nil {
				tc.verify(v)
			}
			r, b := tc.req()
			_, err := v.Verify(t.Context(), r, b)
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("Verify = %v, want %s", err, tc.code)
			}
			if strings.Contains(e.Message, testSecret) {
				t.Errorf("the message repeats the secret: %s", e.Message)
			}
		})
	}
}

// TestVerifyKMSClient: the AWS SDK's KMS client, with all of its
// middleware (invocation id, retry headers, user agent), is verified by a
// server using Verify; a client with the wrong secret gets the exception
// it expects by name.
func TestVerifyKMSClient(t *testing.T) {
	var verified atomic.Int32
	v := verifier()
	v.Now = time.Now
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		if _, err := v.Verify(r.Context(), r, body); err != nil {
			var e *Error
			errors.As(err, &e)
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"__type":"`+e.Code+`","message":"`+e.Message+`"}`)
			return
		}
		verified.Add(1)
		io.WriteString(w, `{"KeyId":"arn:aws:kms:eu-west-1:111122223333:key/demo","Plaintext":"aGVsbG8="}`)
	}))
	defer srv.Close()
	client := func(secret string) *kms.Client {
		return kms.New(kms.Options{Region: testRegion, BaseEndpoint: aws.String(srv.URL),
			Credentials: credentials.NewStaticCredentialsProvider(testID, secret, ""), RetryMaxAttempts: 1})
	}
	out, err := client(testSecret).Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: []byte("ct")})
	if err != nil || !bytes.Equal(out.Plaintext, []byte("hello")) || verified.Load() != 1 {
		t.Fatalf("Decrypt through the SDK: %v, %v (verified %d)", out, err, verified.Load())
	}
	_, err = client("wrong").Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: []byte("ct")})
	if err == nil || !strings.Contains(err.Error(), InvalidSignature) {
		t.Errorf("with the wrong secret: %v, want %s", err, InvalidSignature)
	}
}

// FuzzVerify: any Authorization header and body is refused or verified,
// never a panic.
func FuzzVerify(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=KBAKTESTKEY000000001/20261207/eu-west-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=00", "20261207T143000Z", []byte("{}"))
	f.Add("AWS4-HMAC-SHA256 ,,,==", "x", []byte{})
	f.Fuzz(func(t *testing.T, auth, date string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "https://kms.example/", bytes.NewReader(body))
		r.Header.Set("Authorization", auth)
		r.Header.Set("X-Amz-Date", date)
		r.Header.Set("X-Amz-Target", "TrentService.Encrypt")
		if _, err := verifier().Verify(context.Background(), r, body); err == nil {
			t.Fatalf("a forged header verified: %q", auth)
		}
	})
}
