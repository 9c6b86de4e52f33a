package awsfake_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keybroker/keybroker/backends/backendtest/awsfake"
)

// newClient returns the real SDK client pointed at f, without retries so
// every fault is seen.
func newClient(f *awsfake.Fake, region string) *kms.Client {
	return kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(f.URL()),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		Retryer:      aws.NopRetryer{},
	})
}

func setup(t *testing.T) (*awsfake.Fake, *kms.Client) {
	f := awsfake.New(t)
	return f, newClient(f, awsfake.Region)
}

// wantAs fails unless err holds an error of type E, as the SDK decoded it.
func wantAs[E error](t *testing.T, what string, err error) E {
	t.Helper()
	e, ok := errors.AsType[E](err)
	if !ok {
		var zero E
		t.Errorf("%s: err = %v, want %T", what, err, zero)
	}
	return e
}

// wantCode fails unless err is an API error with the given code.
func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	apiErr, ok := errors.AsType[smithy.APIError](err)
	if !ok || apiErr.ErrorCode() != code {
		t.Errorf("%s: err = %v, want API error %s", what, err, code)
	}
}

func encrypt(t *testing.T, c *kms.Client, key string, pt []byte, ec map[string]string) []byte {
	t.Helper()
	out, err := c.Encrypt(t.Context(), &kms.EncryptInput{KeyId: aws.String(key), Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Encrypt(%s) error: %v", key, err)
	}
	if !strings.HasPrefix(aws.ToString(out.KeyId), awsfake.ARN("")) {
		t.Errorf("Encrypt(%s).KeyId = %q, want a key ARN", key, aws.ToString(out.KeyId))
	}
	return out.CiphertextBlob
}

func TestEncryptDecryptKeyForms(t *testing.T) {
	f, c := setup(t)
	id := f.CreateKey(awsfake.SymmetricDefault)
	f.Alias("alias/root", id)
	pt := []byte("material")
	ec := map[string]string{"keybroker-aad": "YWFk", "tenant": "42"}
	for _, name := range []string{id, awsfake.ARN(id), "alias/root", "arn:aws:kms:us-east-1:111122223333:alias/root"} {
		t.Run(name, func(t *testing.T) {
			ct := encrypt(t, c, name, pt, ec)
			if bytes.Contains(ct, pt) {
				t.Error("ciphertext contains the plaintext")
			}
			for _, keyID := range []*string{nil, aws.String(name)} {
				out, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, EncryptionContext: ec, KeyId: keyID})
				if err != nil {
					t.Fatalf("Decrypt(KeyId %v) error: %v", aws.ToString(keyID), err)
				}
				if !bytes.Equal(out.Plaintext, pt) || aws.ToString(out.KeyId) != awsfake.ARN(id) {
					t.Errorf("Decrypt = %q under %s, want %q under %s", out.Plaintext, aws.ToString(out.KeyId), pt, awsfake.ARN(id))
				}
			}
		})
	}
}

func TestEncryptionContextEnforced(t *testing.T) {
	f, c := setup(t)
	id := f.CreateKey(awsfake.SymmetricDefault)
	ec := map[string]string{"a": "1", "b": "2"}
	ct := encrypt(t, c, id, []byte("secret"), ec)
	for _, tc := range []struct {
		name string
		ec   map[string]string
	}{
		{"missing", nil},
		{"other value", map[string]string{"a": "1", "b": "3"}},
		{"extra pair", map[string]string{"a": "1", "b": "2", "c": "3"}},
		{"pair dropped", map[string]string{"a": "1"}},
		{"names and values swapped", map[string]string{"1": "a", "2": "b"}},
		{"boundary moved", map[string]string{"a": "1b", "": "2"}},
	} {
		_, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, EncryptionContext: tc.ec})
		wantAs[*types.InvalidCiphertextException](t, "Decrypt with context "+tc.name, err)
	}
	// Map order does not matter, and an empty context equals none.
	if _, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, EncryptionContext: map[string]string{"b": "2", "a": "1"}}); err != nil {
		t.Errorf("Decrypt with the same context: %v", err)
	}
	ct = encrypt(t, c, id, []byte("secret"), nil)
	if _, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, EncryptionContext: map[string]string{}}); err != nil {
		t.Errorf("Decrypt with an empty context of a blob made without one: %v", err)
	}
}

func TestTamperedBlobRefused(t *testing.T) {
	f, c := setup(t)
	id := f.CreateKey(awsfake.SymmetricDefault)
	ct := encrypt(t, c, id, []byte("secret"), nil)
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x04
		_, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: bad})
		wantAs[*types.InvalidCiphertextException](t, fmt.Sprintf("Decrypt with byte %d flipped", i), err)
	}
	for _, n := range []int{1, 37, len(ct) - 1} {
		_, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct[:n]})
		wantAs[*types.InvalidCiphertextException](t, fmt.Sprintf("Decrypt truncated to %d", n), err)
	}
}

func TestIncorrectKey(t *testing.T) {
	f, c := setup(t)
	a, b := f.CreateKey(awsfake.SymmetricDefault), f.CreateKey(awsfake.SymmetricDefault)
	ct := encrypt(t, c, a, []byte("secret"), nil)
	_, err := c.Decrypt(t.Context(), &kms.DecryptInput{CiphertextBlob: ct, KeyId: aws.String(b)})
	wantAs[*types.IncorrectKeyException](t, "Decrypt naming another key", err)
}

func TestDisabledAndUnknownKeys(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	id := f.CreateKey(awsfake.SymmetricDefault)
	ct := encrypt(t, c, id, []byte("secret"), nil)
	f.Disable(id)

	_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")})
	wantAs[*types.DisabledException](t, "Encrypt with a disabled key", err)
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: ct})
	wantAs[*types.DisabledException](t, "Decrypt with a disabled key", err)
	d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil || d.KeyMetadata.Enabled || d.KeyMetadata.KeyState != types.KeyStateDisabled {
		t.Errorf("DescribeKey(disabled) = %+v, %v; want state Disabled", d.KeyMetadata, err)
	}
	if _, err := c.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: ct}); err != nil {
		t.Errorf("Decrypt after EnableKey: %v", err)
	}
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	if got := f.KeyState(id); got != "Disabled" {
		t.Errorf("KeyState after DisableKey = %q, want Disabled", got)
	}

	pending := f.CreateKey(awsfake.SymmetricDefault)
	sd, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(pending), PendingWindowInDays: aws.Int32(7)})
	if err != nil || sd.KeyState != types.KeyStatePendingDeletion {
		t.Fatalf("ScheduleKeyDeletion = %+v, %v", sd, err)
	}
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(pending), Plaintext: []byte("x")})
	wantAs[*types.KMSInvalidStateException](t, "Encrypt with a key pending deletion", err)

	for _, unknown := range []string{
		"0b9f1d0e-54f4-4a8e-9a59-6c1d4e2b7a10",
		awsfake.ARN("0b9f1d0e-54f4-4a8e-9a59-6c1d4e2b7a10"),
		"alias/nope",
		"arn:aws:kms:eu-west-1:111122223333:key/" + id, // right id, wrong region
		"not-a-key",
	} {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(unknown), Plaintext: []byte("x")})
		wantAs[*types.NotFoundException](t, "Encrypt with "+unknown, err)
		_, err = c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(unknown)})
		wantAs[*types.NotFoundException](t, "DescribeKey of "+unknown, err)
	}
}

func TestKeyUsage(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	aes, mac, ecc := f.CreateKey(awsfake.SymmetricDefault), f.CreateKey(awsfake.HMAC256), f.CreateKey(awsfake.ECCNISTP256)
	_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(mac), Plaintext: []byte("x")})
	wantAs[*types.InvalidKeyUsageException](t, "Encrypt with an HMAC key", err)
	_, err = c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String(aes), Message: []byte("x"), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	wantAs[*types.InvalidKeyUsageException](t, "GenerateMac with an AES key", err)
	_, err = c.Sign(ctx, &kms.SignInput{KeyId: aws.String(mac), Message: []byte("x"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantAs[*types.InvalidKeyUsageException](t, "Sign with an HMAC key", err)
	_, err = c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(ecc), KeySpec: types.DataKeySpecAes256})
	wantAs[*types.InvalidKeyUsageException](t, "GenerateDataKey with an ECC key", err)
	_, err = c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(aes)})
	wantAs[*types.UnsupportedOperationException](t, "GetPublicKey of an AES key", err)
}

func TestValidation(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	aes, mac := f.CreateKey(awsfake.SymmetricDefault), f.CreateKey(awsfake.HMAC256)
	for _, n := range []int{0, 4097} {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(aes), Plaintext: make([]byte, n)})
		wantCode(t, fmt.Sprintf("Encrypt of %d bytes", n), err, "ValidationException")
		_, err = c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String(mac), Message: make([]byte, n), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		wantCode(t, fmt.Sprintf("GenerateMac of %d bytes", n), err, "ValidationException")
	}
	if _, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(aes), Plaintext: make([]byte, 4096)}); err != nil {
		t.Errorf("Encrypt of 4096 bytes: %v", err)
	}
	for _, n := range []int32{0, 1025} {
		_, err := c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(n)})
		wantCode(t, fmt.Sprintf("GenerateRandom(%d)", n), err, "ValidationException")
	}
	for _, n := range []int32{1, 1024} {
		out, err := c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(n)})
		if err != nil || len(out.Plaintext) != int(n) {
			t.Errorf("GenerateRandom(%d) = %d bytes, %v", n, len(out.Plaintext), err)
		}
	}
	_, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(aes)})
	wantCode(t, "GenerateDataKey without a size", err, "ValidationException")
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(aes), Plaintext: []byte("x"), DryRun: aws.Bool(true)})
	wantAs[*types.DryRunOperationException](t, "Encrypt with DryRun", err)
}

func TestMAC(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	k1, k2 := f.CreateKey(awsfake.HMAC256), f.CreateKey(awsfake.HMAC256)
	mac := func(key string, msg string) []byte {
		out, err := c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String(key), Message: []byte(msg), MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
		if err != nil {
			t.Fatalf("GenerateMac: %v", err)
		}
		return out.Mac
	}
	t1 := mac(k1, "m")
	if len(t1) != 32 || !bytes.Equal(t1, mac(k1, "m")) || bytes.Equal(t1, mac(k2, "m")) || bytes.Equal(t1, mac(k1, "n")) {
		t.Errorf("GenerateMac is not a keyed deterministic 32-byte PRF")
	}
	v, err := c.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: aws.String(k1), Message: []byte("m"), Mac: t1, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	if err != nil || !v.MacValid {
		t.Errorf("VerifyMac of a good tag = %+v, %v", v, err)
	}
	_, err = c.VerifyMac(ctx, &kms.VerifyMacInput{KeyId: aws.String(k2), Message: []byte("m"), Mac: t1, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	wantAs[*types.KMSInvalidMacException](t, "VerifyMac under the other key", err)
	_, err = c.GenerateMac(ctx, &kms.GenerateMacInput{KeyId: aws.String(k1), Message: []byte("m"), MacAlgorithm: types.MacAlgorithmSpecHmacSha512})
	wantAs[*types.InvalidKeyUsageException](t, "GenerateMac with HMAC_SHA_512 on an HMAC_256 key", err)
}

func TestSign(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	id := f.CreateKey(awsfake.ECCNISTP256)
	pk, err := c.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatalf("GetPublicKey: %v", err)
	}
	parsed, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	pub, ok := parsed.(*ecdsa.PublicKey)
	if err != nil || !ok || pk.KeySpec != types.KeySpecEccNistP256 {
		t.Fatalf("GetPublicKey = %T (%s), %v; want an ECDSA P-256 SubjectPublicKeyInfo", parsed, pk.KeySpec, err)
	}
	msg := []byte("message")
	digest := sha256.Sum256(msg)
	for _, tc := range []struct {
		typ types.MessageType
		in  []byte
	}{{types.MessageTypeRaw, msg}, {types.MessageTypeDigest, digest[:]}} {
		out, err := c.Sign(ctx, &kms.SignInput{KeyId: aws.String(id), Message: tc.in, MessageType: tc.typ, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		if err != nil {
			t.Fatalf("Sign(%s): %v", tc.typ, err)
		}
		if !ecdsa.VerifyASN1(pub, digest[:], out.Signature) {
			t.Errorf("Sign(%s) signature does not verify", tc.typ)
		}
	}
	_, err = c.Sign(ctx, &kms.SignInput{KeyId: aws.String(id), Message: digest[:31], MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantCode(t, "Sign of a 31-byte digest", err, "ValidationException")
	_, err = c.Sign(ctx, &kms.SignInput{KeyId: aws.String(id), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256})
	wantAs[*types.InvalidKeyUsageException](t, "Sign with an RSA algorithm", err)
}

func TestGenerateDataKey(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	id := f.CreateKey(awsfake.SymmetricDefault)
	ec := map[string]string{"k": "v"}
	out, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(id), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil || len(out.Plaintext) != 32 {
		t.Fatalf("GenerateDataKey = %d bytes, %v", len(out.Plaintext), err)
	}
	dec, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob, EncryptionContext: ec})
	if err != nil || !bytes.Equal(dec.Plaintext, out.Plaintext) {
		t.Errorf("Decrypt(wrapped data key) = %v; want the data key", err)
	}
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: out.CiphertextBlob})
	wantAs[*types.InvalidCiphertextException](t, "Decrypt(wrapped data key) without its context", err)
}

func TestCreateKeyAndAlias(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	for _, tc := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
	}{
		{types.KeySpecSymmetricDefault, ""},
		{types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac},
		{types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify},
	} {
		out, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: tc.spec, KeyUsage: tc.usage, Description: aws.String("d")})
		if err != nil {
			t.Fatalf("CreateKey(%s): %v", tc.spec, err)
		}
		md := out.KeyMetadata
		if md.KeySpec != tc.spec || md.KeyState != types.KeyStateEnabled || aws.ToString(md.Arn) != awsfake.ARN(aws.ToString(md.KeyId)) || md.CreationDate == nil {
			t.Errorf("CreateKey(%s) metadata = %+v", tc.spec, md)
		}
		alias := "alias/k-" + string(tc.spec)
		if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: md.KeyId}); err != nil {
			t.Fatalf("CreateAlias: %v", err)
		}
		d, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(alias)})
		if err != nil || aws.ToString(d.KeyMetadata.KeyId) != aws.ToString(md.KeyId) {
			t.Errorf("DescribeKey(%s) = %v, %v; want key %s", alias, d, err, aws.ToString(md.KeyId))
		}
		_, err = c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: md.KeyId})
		wantAs[*types.AlreadyExistsException](t, "CreateAlias of an existing alias", err)
	}
	_, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac256})
	wantCode(t, "CreateKey(HMAC_256) with the default usage", err, "ValidationException")
	_, err = c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("no-prefix"), TargetKeyId: aws.String("x")})
	wantCode(t, "CreateAlias without the alias/ prefix", err, "ValidationException")
	keys, err := c.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(2)})
	if err != nil || len(keys.Keys) != 2 || !keys.Truncated {
		t.Fatalf("ListKeys(limit 2) = %+v, %v", keys, err)
	}
	rest, err := c.ListKeys(ctx, &kms.ListKeysInput{Marker: keys.NextMarker})
	if err != nil || len(rest.Keys) != 1 || rest.Truncated {
		t.Errorf("ListKeys(after marker) = %+v, %v", rest, err)
	}
}

func TestAuthenticationRequired(t *testing.T) {
	f, _ := setup(t)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.URL()+"/", strings.NewReader(`{"NumberOfBytes":1}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Amz-Target", "TrentService.GenerateRandom")
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unsigned request: status %d, want 400", resp.StatusCode)
	}
	// A client signing for another region is refused as the service does.
	_, err = newClient(f, "eu-west-1").GenerateRandom(t.Context(), &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(1)})
	wantCode(t, "request signed for eu-west-1", err, "InvalidSignatureException")
}

func TestFaults(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	random := func() error {
		_, err := c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(1)})
		return err
	}
	status := func(err error) int {
		if re, ok := errors.AsType[*smithyhttp.ResponseError](err); ok {
			return re.HTTPStatusCode()
		}
		return 0
	}

	f.SetFaults(awsfake.Faults{FailNext: 2})
	for i := range 2 {
		err := random()
		wantAs[*types.KMSInternalException](t, fmt.Sprintf("call %d under FailNext", i), err)
		if status(err) != 500 {
			t.Errorf("FailNext status = %d, want 500", status(err))
		}
	}
	if err := random(); err != nil {
		t.Errorf("call after FailNext ran out: %v", err)
	}

	f.SetFaults(awsfake.Faults{Outage: true})
	for range 3 {
		if err := random(); status(err) != 503 {
			t.Errorf("call during the outage: err = %v, want HTTP 503", err)
		}
	}
	f.SetFaults(awsfake.Faults{ThrottleFraction: 1})
	wantCode(t, "call with every call throttled", random(), "ThrottlingException")
	f.SetFaults(awsfake.Faults{})
	if err := random(); err != nil {
		t.Errorf("call after the faults were cleared: %v", err)
	}
	if got := f.Calls("GenerateRandom"); got != 8 {
		t.Errorf("Calls(GenerateRandom) = %d, want 8", got)
	}
	if got := f.TotalCalls(); got != 8 {
		t.Errorf("TotalCalls() = %d, want 8", got)
	}

	// Latency is cut short when the client gives up.
	f.SetFaults(awsfake.Faults{Latency: time.Hour})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := c.GenerateRandom(short, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(1)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("call with an hour of latency and a short deadline: err = %v, want the deadline", err)
	}
}

func TestThrottlingIsSeeded(t *testing.T) {
	f, c := setup(t)
	pattern := func(seed uint64) string {
		f.SetFaults(awsfake.Faults{ThrottleFraction: 0.5, Seed: seed})
		var b strings.Builder
		for range 64 {
			_, err := c.GenerateRandom(t.Context(), &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(1)})
			if err != nil {
				b.WriteByte('T')
			} else {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	p1, p2, p3 := pattern(7), pattern(7), pattern(8)
	if p1 != p2 {
		t.Errorf("same seed, different throttling:\n%s\n%s", p1, p2)
	}
	if p1 == p3 {
		t.Errorf("different seeds, same throttling: %s", p1)
	}
	if n := strings.Count(p1, "T"); n < 16 || n > 48 {
		t.Errorf("ThrottleFraction 0.5 throttled %d of 64 calls", n)
	}
}
