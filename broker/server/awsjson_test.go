package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/identity"
)

// TestAWSJSONWithTheSDK: the AWS SDK's KMS client, unmodified, against the
// central tier's AWS KMS JSON front-end: access keys made through KeyAdmin
// sign its calls; Encrypt, Decrypt (no KeyId), ReEncrypt, GenerateDataKey
// and DescribeKey work by alias and ARN, answers name the key's ARN, and a
// blob made here opens over gRPC and the reverse; the typed errors are
// AWS's: a wrong context (InvalidCiphertextException), a disabled key
// (DisabledException), a key the principal may not use
// (AccessDeniedException), an unknown key (NotFoundException), the wrong
// KeyId on Decrypt (IncorrectKeyException), a revoked access key.
func TestAWSJSONWithTheSDK(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops := asOps(t, e)
	for _, id := range []string{"demo", "other"} {
		ops.createKey(id, kbv1.KeyType_KEY_TYPE_AES_256_GCM, map[string]string{"app": "billing"})
	}
	url := serveAWS(t, e)
	billingAK := ops.accessKey("client/billing")
	billing, billingKey := kmsClient(url, billingAK), billingAK.GetAccessKeyId()
	const arn = "arn:aws:kms:eu-west-1:111122223333:key/demo"
	ectx := map[string]string{"tenant": "t1"}

	enc, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/demo"), Plaintext: []byte("hello"), EncryptionContext: ectx})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToString(enc.KeyId) != arn {
		t.Errorf("Encrypt's KeyId = %q, want the ARN %s", aws.ToString(enc.KeyId), arn)
	}
	dec, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx})
	if err != nil || !bytes.Equal(dec.Plaintext, []byte("hello")) || aws.ToString(dec.KeyId) != arn {
		t.Fatalf("Decrypt = %v, %v", dec, err)
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))
	if g, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.CiphertextBlob, EncryptionContext: ectx}); err != nil || !bytes.Equal(g.GetPlaintext(), []byte("hello")) {
		t.Errorf("the AWS blob over gRPC: %v, %v", g, err)
	}
	g, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "demo", Plaintext: []byte("from grpc")})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: g.GetCiphertext(), KeyId: aws.String(arn)}); err != nil || string(d.Plaintext) != "from grpc" {
		t.Errorf("a gRPC blob through the AWS API: %v, %v", d, err)
	}
	re, err := billing.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ectx,
		DestinationKeyId: aws.String("arn:aws:kms:eu-west-1:111122223333:alias/other")})
	if err != nil || aws.ToString(re.KeyId) != "arn:aws:kms:eu-west-1:111122223333:key/other" || aws.ToString(re.SourceKeyId) != arn {
		t.Fatalf("ReEncrypt = %v, %v", re, err)
	}
	dk, err := billing.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String("demo"), KeySpec: types.DataKeySpecAes256})
	if err != nil || len(dk.Plaintext) != 32 {
		t.Fatalf("GenerateDataKey = %v, %v", dk, err)
	}
	if d, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dk.CiphertextBlob}); err != nil || !bytes.Equal(d.Plaintext, dk.Plaintext) {
		t.Errorf("Decrypt of a data key's blob: %v, %v", d, err)
	}
	desc, err := billing.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(arn)})
	if err != nil || aws.ToString(desc.KeyMetadata.Arn) != arn || desc.KeyMetadata.KeyState != types.KeyStateEnabled || desc.KeyMetadata.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
		t.Fatalf("DescribeKey = %+v, %v", desc, err)
	}

	var badCT *types.InvalidCiphertextException
	if _, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"tenant": "t2"}}); !errors.As(err, &badCT) {
		t.Errorf("wrong context: %v, want InvalidCiphertextException", err)
	}
	if _, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: []byte("not a keybroker ciphertext")}); !errors.As(err, &badCT) {
		t.Errorf("garbage ciphertext: %v, want InvalidCiphertextException", err)
	}
	var unsupported smithy.APIError
	if _, err := billing.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String("demo")}); !errors.As(err, &unsupported) || unsupported.ErrorCode() != "UnsupportedOperationException" {
		t.Errorf("an operation not served: %v, want UnsupportedOperationException", err)
	}
	var incorrect *types.IncorrectKeyException
	if _, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx, KeyId: aws.String("alias/other")}); !errors.As(err, &incorrect) {
		t.Errorf("wrong KeyId: %v, want IncorrectKeyException", err)
	}
	var notFound *types.NotFoundException
	if _, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("arn:aws:kms:us-east-1:111122223333:key/demo"), Plaintext: []byte("x")}); !errors.As(err, &notFound) {
		t.Errorf("an ARN of another region: %v, want NotFoundException", err)
	}
	reader := ops.clientAs(url, "client/reader")
	var denied smithy.APIError
	if _, err := reader.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String("demo"), NumberOfBytes: aws.Int32(32)}); !errors.As(err, &denied) || denied.ErrorCode() != "AccessDeniedException" {
		t.Errorf("a principal the policy does not allow: %v, want AccessDeniedException", err)
	}
	if _, err := ops.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "demo"}); err != nil {
		t.Fatal(err)
	}
	var disabled *types.DisabledException
	if _, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("demo"), Plaintext: []byte("x")}); !errors.As(err, &disabled) {
		t.Errorf("a disabled key: %v, want DisabledException", err)
	}
	if _, err := ops.RevokeAccessKey(ctx, &kbv1.AccessKeyRequest{AccessKeyId: billingKey}); err != nil {
		t.Fatal(err)
	}
	if _, err := billing.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("other")}); err == nil {
		t.Error("a revoked access key still signs calls")
	}
}

// newAWSFront is e's AWS KMS API, in region eu-west-1 of account
// 111122223333.
func newAWSFront(t testing.TB, e *testEnv) http.Handler {
	t.Helper()
	front, err := awsjson.New(awsjson.Config{Pipeline: e.srv.Pipeline(), Status: e.srv.Status, Credentials: e.svc,
		Region: "eu-west-1", Account: "111122223333", TrustDomain: e.srv.td})
	if err != nil {
		t.Fatal(err)
	}
	return front
}

// serveAWS serves e's AWS KMS API (newAWSFront) over HTTP until t ends,
// at the URL it returns.
func serveAWS(t *testing.T, e *testEnv) string {
	t.Helper()
	hs := httptest.NewServer(newAWSFront(t, e))
	t.Cleanup(hs.Close)
	return hs.URL
}

// opsAdmin is KeyAdmin as admin/ops, with the setup of the AWS tests:
// its helpers fail t on any error.
type opsAdmin struct {
	kbv1.KeyAdminClient
	t *testing.T
}

func asOps(t *testing.T, e *testEnv) opsAdmin {
	t.Helper()
	return opsAdmin{KeyAdminClient: kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops")), t: t}
}

// createKey makes key id of type typ, in derive mode, with labels.
func (o opsAdmin) createKey(id string, typ kbv1.KeyType, labels map[string]string) {
	o.t.Helper()
	if _, err := o.CreateKey(o.t.Context(), &kbv1.CreateKeyRequest{KeyId: id, Type: typ, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: labels}); err != nil {
		o.t.Fatal(err)
	}
}

// accessKey makes an access key of principal ("client/billing"), scoped
// to edges.
func (o opsAdmin) accessKey(principal string, edges ...string) *kbv1.AccessKey {
	o.t.Helper()
	k, err := o.CreateAccessKey(o.t.Context(), &kbv1.CreateAccessKeyRequest{Principal: principal, Edges: edges})
	if err != nil {
		o.t.Fatal(err)
	}
	return k
}

// clientAs is the AWS SDK's KMS client at url, signing with a new access
// key of principal.
func (o opsAdmin) clientAs(url, principal string) *kms.Client {
	o.t.Helper()
	return kmsClient(url, o.accessKey(principal))
}

// kmsClient is the AWS SDK's KMS client at url, signing with k.
func kmsClient(url string, k *kbv1.AccessKey) *kms.Client {
	return kms.New(kms.Options{Region: "eu-west-1", BaseEndpoint: aws.String(url), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(k.GetAccessKeyId(), k.GetSecretAccessKey(), "")})
}

// awsFront is the AWS front-end of e with an access key for client/billing.
func awsFront(t testing.TB, e *testEnv) (h http.Handler, id, secret string) {
	front := newAWSFront(t, e)
	rec, sec, err := e.svc.CreateAccessKey(context.Background(), identity.Identity{TrustDomain: e.srv.td, Kind: identity.Client, Name: "billing"}, nil, "test")
	if err != nil {
		t.Fatal(err)
	}
	return front, rec.ID, sec
}

// awsRequest is a request signed as the SDK signs, with the target and
// content type given.
func awsRequest(t testing.TB, method, target, contentType string, body []byte, id, secret string) *http.Request {
	r := httptest.NewRequest(method, "https://kms.example/", bytes.NewReader(body))
	if target != "" {
		r.Header.Set("X-Amz-Target", target)
	}
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}, r, hex.EncodeToString(sum[:]), "kms", "eu-west-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestAWSJSONBadInput: malformed requests get AWS-shaped errors with the
// exception in __type and X-Amzn-ErrorType, never a panic.
func TestAWSJSONBadInput(t *testing.T) {
	e := start(t)
	front, id, secret := awsFront(t, e)
	for _, tc := range []struct {
		name, method, target, ct string
		body                     []byte
		want                     string
	}{
		{"malformed JSON", "POST", "TrentService.Encrypt", awsjson.ContentType, []byte(`{"KeyId":`), "SerializationException"},
		{"wrong type", "POST", "TrentService.Encrypt", awsjson.ContentType, []byte(`{"KeyId":"demo","Plaintext":5}`), "SerializationException"},
		{"blob not base64", "POST", "TrentService.Decrypt", awsjson.ContentType, []byte(`{"CiphertextBlob":"***"}`), "SerializationException"},
		{"no key", "POST", "TrentService.Encrypt", awsjson.ContentType, []byte(`{"Plaintext":"aGk="}`), "ValidationException"},
		{"plaintext too large", "POST", "TrentService.Encrypt", awsjson.ContentType, []byte(`{"KeyId":"demo","Plaintext":"` + strings.Repeat("A", 8000) + `"}`), "ValidationException"},
		{"body too large", "POST", "TrentService.Encrypt", awsjson.ContentType, bytes.Repeat([]byte(" "), awsjson.MaxBody+1), "ValidationException"},
		{"unknown operation", "POST", "TrentService.Frobnicate", awsjson.ContentType, []byte(`{}`), "UnsupportedOperationException"},
		{"other service's target", "POST", "DynamoDB_20120810.GetItem", awsjson.ContentType, []byte(`{}`), "UnsupportedOperationException"},
		{"content type", "POST", "TrentService.Encrypt", "application/json", []byte(`{}`), "SerializationException"},
		{"GET", "GET", "TrentService.Encrypt", awsjson.ContentType, nil, "UnknownOperationException"},
		{"unsigned target", "POST", "", awsjson.ContentType, []byte(`{}`), "IncompleteSignatureException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := awsRequest(t, tc.method, tc.target, tc.ct, tc.body, id, secret)
			if tc.target == "" {
				r.Header.Set("X-Amz-Target", "TrentService.Encrypt") // after signing: not in SignedHeaders
			}
			w := httptest.NewRecorder()
			front.ServeHTTP(w, r)
			var body struct {
				Type    string `json:"__type"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Type != tc.want || w.Header().Get("X-Amzn-ErrorType") != tc.want || w.Code != http.StatusBadRequest {
				t.Errorf("%d %s (%v); want 400 %s", w.Code, w.Body, err, tc.want)
			}
			if w.Header().Get("x-amzn-RequestId") == "" {
				t.Error("no x-amzn-RequestId")
			}
		})
	}
}

// TestAWSJSONSigningAndMACs: Sign, Verify, GetPublicKey, GenerateMac,
// VerifyMac and ListKeys through the AWS SDK: a signature verifies there
// and with the public key alone (crypto/ecdsa), a wrong one is
// KMSInvalidSignatureException, a wrong tag KMSInvalidMacException, a
// signing algorithm the key does not use InvalidKeyUsageException; ListKeys
// pages every key once.
func TestAWSJSONSigningAndMACs(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops := asOps(t, e)
	for id, typ := range map[string]kbv1.KeyType{"ec": kbv1.KeyType_KEY_TYPE_ECDSA_P256, "mac": kbv1.KeyType_KEY_TYPE_HMAC_SHA256,
		"aes1": kbv1.KeyType_KEY_TYPE_AES_256_GCM, "aes2": kbv1.KeyType_KEY_TYPE_AES_256_GCM} {
		ops.createKey(id, typ, nil)
	}
	c := ops.clientAs(serveAWS(t, e), "admin/ops")
	msg := []byte("signed through the AWS API")
	sig, err := c.Sign(ctx, &kms.SignInput{KeyId: aws.String("alias/ec"), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String("ec")})
	if err != nil || pub.KeySpec != types.KeySpecEccNistP256 {
		t.Fatalf("GetPublicKey = %v, %v", pub, err)
	}
	pk, err := x509.ParsePKIXPublicKey(pub.PublicKey)
	digest := sha256.Sum256(msg)
	if ec, ok := pk.(*ecdsa.PublicKey); err != nil || !ok || !ecdsa.VerifyASN1(ec, digest[:], sig.Signature) {
		t.Errorf("the signature does not verify with the public key alone (%T, %v)", pk, err)
	}
	if v, err := c.Verify(ctx, &kms.VerifyInput{KeyId: aws.String("ec"), Message: digest[:], MessageType: types.MessageTypeDigest,
		Signature: sig.Signature, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}); err != nil || !v.SignatureValid {
		t.Errorf("Verify of the digest = %v, %v", v, err)
	}
	var badSig *types.KMSInvalidSignatureException
	if _, err := c.Verify(ctx, &kms.VerifyInput{KeyId: aws.String("ec"), Message: []byte("other"), Signature: sig.Signature,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}); !errors.As(err, &badSig) {
		t.Errorf("Verify of another message: %v, want KMSInvalidSignatureException", err)
	}
	var usage *types.InvalidKeyUsageException
	if _, err := c.Sign(ctx, &kms.SignInput{KeyId: aws.String("ec"), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256}); !errors.As(err, &usage) {
		t.Errorf("an algorithm the key does not use: %v, want InvalidKeyUsageException", err)
	}
	mac, err := c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String("mac"), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	if err != nil || len(mac.Mac) != 32 {
		t.Fatalf("GenerateMac = %v, %v", mac, err)
	}
	if v, err := c.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: aws.String("mac"), Message: msg, Mac: mac.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256}); err != nil || !v.MacValid {
		t.Errorf("VerifyMac = %v, %v", v, err)
	}
	var badMac *types.KMSInvalidMacException
	if _, err := c.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: aws.String("mac"), Message: []byte("other"), Mac: mac.Mac, MacAlgorithm: types.MacAlgorithmSpecHmacSha256}); !errors.As(err, &badMac) {
		t.Errorf("VerifyMac of another message: %v, want KMSInvalidMacException", err)
	}
	seen := map[string]int{}
	for p := kms.NewListKeysPaginator(c, &kms.ListKeysInput{Limit: aws.Int32(1)}); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page.Keys {
			seen[aws.ToString(k.KeyId)]++
			if aws.ToString(k.KeyArn) != "arn:aws:kms:eu-west-1:111122223333:key/"+aws.ToString(k.KeyId) {
				t.Errorf("ListKeys entry %v", k)
			}
		}
	}
	if len(seen) != 4 || seen["ec"] != 1 || seen["aes2"] != 1 {
		t.Errorf("ListKeys in pages of one = %v, want each of the 4 keys once", seen)
	}
}
