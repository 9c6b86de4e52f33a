package gcpfake_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	gax "github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keybroker/keybroker/backends/backendtest/gcpfake"
)

const ring = "projects/p/locations/global/keyRings/r"

// noRetry shows the fake's raw answers: the client retries UNAVAILABLE by
// default.
var noRetry = []gax.CallOption{gax.WithRetry(nil)}

func setup(t *testing.T) (*gcpfake.Fake, *kms.KeyManagementClient) {
	t.Helper()
	f := gcpfake.New(t)
	c, err := kms.NewKeyManagementClient(t.Context(), f.ClientOptions()...)
	if err != nil {
		t.Fatalf("NewKeyManagementClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Errorf("%s: code %v (%v), want %v", what, got, err, code)
	}
}

func crc(b []byte) *wrapperspb.Int64Value { return gcpfake.CRC32C(b) }

func encrypt(t *testing.T, c *kms.KeyManagementClient, name string, pt, aad []byte) *kmspb.EncryptResponse {
	t.Helper()
	resp, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{
		Name: name, Plaintext: pt, AdditionalAuthenticatedData: aad,
		PlaintextCrc32C: crc(pt), AdditionalAuthenticatedDataCrc32C: crc(aad),
	})
	if err != nil {
		t.Fatalf("Encrypt(%s): %v", name, err)
	}
	return resp
}

func TestEncryptDecrypt(t *testing.T) {
	f, c := setup(t)
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	pt, aad := []byte("secret material"), []byte("context")
	resp := encrypt(t, c, key, pt, aad)
	if resp.Name != key+"/cryptoKeyVersions/1" {
		t.Errorf("Encrypt name = %q, want the primary version", resp.Name)
	}
	if !resp.VerifiedPlaintextCrc32C || !resp.VerifiedAdditionalAuthenticatedDataCrc32C {
		t.Errorf("verified flags = %v, %v; want true, true", resp.VerifiedPlaintextCrc32C, resp.VerifiedAdditionalAuthenticatedDataCrc32C)
	}
	if resp.CiphertextCrc32C.GetValue() != crc(resp.Ciphertext).GetValue() {
		t.Error("ciphertext_crc32c does not match the ciphertext")
	}
	if bytes.Contains(resp.Ciphertext, pt) {
		t.Error("ciphertext contains the plaintext")
	}
	dec, err := c.Decrypt(t.Context(), &kmspb.DecryptRequest{
		Name: key, Ciphertext: resp.Ciphertext, AdditionalAuthenticatedData: aad,
		CiphertextCrc32C: crc(resp.Ciphertext), AdditionalAuthenticatedDataCrc32C: crc(aad),
	})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, pt) || dec.PlaintextCrc32C.GetValue() != crc(pt).GetValue() || !dec.UsedPrimary {
		t.Errorf("Decrypt = %q (crc %v, used_primary %v), want %q", dec.Plaintext, dec.PlaintextCrc32C, dec.UsedPrimary, pt)
	}

	// Without checksums nothing is verified.
	plain, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: key, Plaintext: pt})
	if err != nil {
		t.Fatal(err)
	}
	if plain.VerifiedPlaintextCrc32C || plain.VerifiedAdditionalAuthenticatedDataCrc32C {
		t.Error("verified flags set for checksums never sent")
	}

	// After a rotation the CryptoKey encrypts under version 2; version 1
	// still decrypts and can be named explicitly.
	v2 := f.AddVersion(key)
	if got := encrypt(t, c, key, pt, nil).Name; got != v2 {
		t.Errorf("Encrypt after rotation used %q, want %q", got, v2)
	}
	if got := encrypt(t, c, key+"/cryptoKeyVersions/1", pt, nil).Name; got != key+"/cryptoKeyVersions/1" {
		t.Errorf("Encrypt with an explicit version used %q", got)
	}
	dec, err = c.Decrypt(t.Context(), &kmspb.DecryptRequest{Name: key, Ciphertext: resp.Ciphertext, AdditionalAuthenticatedData: aad})
	if err != nil || dec.UsedPrimary {
		t.Errorf("Decrypt of a version-1 ciphertext after rotation = used_primary %v, %v", dec.GetUsedPrimary(), err)
	}
}

func TestDecryptFailures(t *testing.T) {
	f, c := setup(t)
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	other := f.CreateKey(ring, "other", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	ct := encrypt(t, c, key, []byte("payload"), []byte("aad")).Ciphertext
	decrypt := func(name string, ct, aad []byte) error {
		_, err := c.Decrypt(t.Context(), &kmspb.DecryptRequest{Name: name, Ciphertext: ct, AdditionalAuthenticatedData: aad})
		return err
	}
	wantCode(t, "wrong aad", decrypt(key, ct, []byte("other")), codes.InvalidArgument)
	wantCode(t, "missing aad", decrypt(key, ct, nil), codes.InvalidArgument)
	err := decrypt(other, ct, []byte("aad"))
	wantCode(t, "another key", err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "correct CryptoKey") {
		t.Errorf("another key: %v, want the service's 'verify that name refers to the correct CryptoKey'", err)
	}
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		wantCode(t, "flipped byte", decrypt(key, bad, []byte("aad")), codes.InvalidArgument)
	}
	for _, n := range []int{0, 1, 12, len(ct) - 1} {
		wantCode(t, "truncated", decrypt(key, ct[:n], []byte("aad")), codes.InvalidArgument)
	}
	wantCode(t, "version name", decrypt(key+"/cryptoKeyVersions/1", ct, []byte("aad")), codes.InvalidArgument)
	wantCode(t, "unknown key", decrypt(ring+"/cryptoKeys/nope", ct, []byte("aad")), codes.NotFound)
}

func TestChecksumsChecked(t *testing.T) {
	f, c := setup(t)
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	mac := f.CreateKey(ring, "m", kmspb.CryptoKey_MAC) + "/cryptoKeyVersions/1"
	sig := f.CreateKey(ring, "s", kmspb.CryptoKey_ASYMMETRIC_SIGN) + "/cryptoKeyVersions/1"
	ct := encrypt(t, c, key, []byte("x"), nil).Ciphertext
	wrong := wrapperspb.Int64(12345)
	ctx := t.Context()
	digest := make([]byte, 32)
	for _, tc := range []struct {
		field string
		call  func() error
	}{
		{"plaintext_crc32c", func() error {
			_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x"), PlaintextCrc32C: wrong})
			return err
		}},
		{"additional_authenticated_data_crc32c", func() error {
			_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x"), AdditionalAuthenticatedDataCrc32C: wrong})
			return err
		}},
		{"ciphertext_crc32c", func() error {
			_, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: ct, CiphertextCrc32C: wrong})
			return err
		}},
		{"additional_authenticated_data_crc32c", func() error {
			_, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: ct, AdditionalAuthenticatedDataCrc32C: wrong})
			return err
		}},
		{"data_crc32c", func() error {
			_, err := c.MacSign(ctx, &kmspb.MacSignRequest{Name: mac, Data: []byte("x"), DataCrc32C: wrong})
			return err
		}},
		{"mac_crc32c", func() error {
			_, err := c.MacVerify(ctx, &kmspb.MacVerifyRequest{Name: mac, Data: []byte("x"), Mac: []byte("m"), MacCrc32C: wrong})
			return err
		}},
		{"digest_crc32c", func() error {
			_, err := c.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: sig,
				Digest: &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest}}, DigestCrc32C: wrong})
			return err
		}},
	} {
		err := tc.call()
		wantCode(t, tc.field, err, codes.InvalidArgument)
		if !strings.Contains(status.Convert(err).Message(), tc.field) {
			t.Errorf("%s mismatch: message %q does not name the field", tc.field, status.Convert(err).Message())
		}
	}
}

func TestStateAndPurpose(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	mac := f.CreateKey(ring, "m", kmspb.CryptoKey_MAC) + "/cryptoKeyVersions/1"
	ct := encrypt(t, c, key, []byte("x"), nil).Ciphertext
	v1 := key + "/cryptoKeyVersions/1"

	// Disable through the API, as an operator would.
	up, err := c.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: v1, State: kmspb.CryptoKeyVersion_DISABLED},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
	})
	if err != nil || up.State != kmspb.CryptoKeyVersion_DISABLED {
		t.Fatalf("UpdateCryptoKeyVersion = %v, %v", up, err)
	}
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x")})
	wantCode(t, "Encrypt with a disabled primary", err, codes.FailedPrecondition)
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: ct})
	wantCode(t, "Decrypt under a disabled version", err, codes.FailedPrecondition)
	ck, err := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key})
	if err != nil || ck.Primary.GetState() != kmspb.CryptoKeyVersion_DISABLED || ck.Purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		t.Errorf("GetCryptoKey = %v, %v; want a disabled primary", ck, err)
	}
	f.Enable(v1)
	if _, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: ct}); err != nil {
		t.Errorf("Decrypt after Enable: %v", err)
	}
	_, err = c.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: v1, State: kmspb.CryptoKeyVersion_DESTROYED},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
	})
	wantCode(t, "UpdateCryptoKeyVersion to DESTROYED", err, codes.InvalidArgument)

	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: mac, Plaintext: []byte("x")})
	wantCode(t, "Encrypt with a MAC version", err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "incorrect key purpose") {
		t.Errorf("wrong purpose message = %q", status.Convert(err).Message())
	}
	_, err = c.MacSign(ctx, &kmspb.MacSignRequest{Name: v1, Data: []byte("x")})
	wantCode(t, "MacSign with an AES version", err, codes.FailedPrecondition)
	_, err = c.GetPublicKey(ctx, &kmspb.GetPublicKeyRequest{Name: mac})
	wantCode(t, "GetPublicKey of a MAC version", err, codes.FailedPrecondition)
	_, err = c.MacSign(ctx, &kmspb.MacSignRequest{Name: mac + "0", Data: []byte("x")})
	wantCode(t, "MacSign with an unknown version", err, codes.NotFound)
	_, err = c.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: ring + "/cryptoKeys/nope/cryptoKeyVersions/1"})
	wantCode(t, "GetCryptoKeyVersion of an unknown key", err, codes.NotFound)
}

func TestMalformedNames(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	for _, name := range []string{
		"", "projects/p", ring, ring + "/cryptoKeys/", ring + "/cryptoKeys/a b", ring + "/cryptoKeys/k/cryptoKeyVersions/0",
		"projects/P/locations/global/keyRings/r/cryptoKeys/k", ring + "/cryptoKeys/k/extra",
	} {
		_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: name, Plaintext: []byte("x")})
		wantCode(t, "Encrypt("+name+")", err, codes.InvalidArgument)
	}
	_, err := c.MacSign(ctx, &kmspb.MacSignRequest{Name: ring + "/cryptoKeys/k", Data: []byte("x")})
	wantCode(t, "MacSign with a CryptoKey", err, codes.InvalidArgument)
}

func TestMACAndSign(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	mac := f.CreateKey(ring, "m", kmspb.CryptoKey_MAC) + "/cryptoKeyVersions/1"
	mac2 := f.CreateKey(ring, "m2", kmspb.CryptoKey_MAC) + "/cryptoKeyVersions/1"
	data := []byte("keybroker/v1/material")
	ms, err := c.MacSign(ctx, &kmspb.MacSignRequest{Name: mac, Data: data, DataCrc32C: crc(data)})
	if err != nil {
		t.Fatal(err)
	}
	if ms.Name != mac || !ms.VerifiedDataCrc32C || len(ms.Mac) != 32 || ms.MacCrc32C.GetValue() != crc(ms.Mac).GetValue() {
		t.Errorf("MacSign = %v", ms)
	}
	ms2, err := c.MacSign(ctx, &kmspb.MacSignRequest{Name: mac2, Data: data})
	if err != nil || hmac.Equal(ms.Mac, ms2.Mac) {
		t.Errorf("two MAC keys gave the same tag (%v)", err)
	}
	for _, tc := range []struct {
		tag  []byte
		want bool
	}{{ms.Mac, true}, {ms2.Mac, false}, {ms.Mac[:31], false}} {
		mv, err := c.MacVerify(ctx, &kmspb.MacVerifyRequest{Name: mac, Data: data, DataCrc32C: crc(data), Mac: tc.tag, MacCrc32C: crc(tc.tag)})
		if err != nil {
			t.Fatal(err)
		}
		if mv.Success != tc.want || mv.VerifiedSuccessIntegrity != tc.want || !mv.VerifiedDataCrc32C || !mv.VerifiedMacCrc32C || mv.Name != mac {
			t.Errorf("MacVerify = %v, want success %v", mv, tc.want)
		}
	}

	sig := f.CreateKey(ring, "s", kmspb.CryptoKey_ASYMMETRIC_SIGN) + "/cryptoKeyVersions/1"
	digest := sha256.Sum256(data)
	as, err := c.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: sig,
		Digest: &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest[:]}}, DigestCrc32C: crc(digest[:])})
	if err != nil {
		t.Fatal(err)
	}
	if as.Name != sig || !as.VerifiedDigestCrc32C || as.SignatureCrc32C.GetValue() != crc(as.Signature).GetValue() {
		t.Errorf("AsymmetricSign = %v", as)
	}
	pk, err := c.GetPublicKey(ctx, &kmspb.GetPublicKeyRequest{Name: sig})
	if err != nil {
		t.Fatal(err)
	}
	if pk.Name != sig || pk.PemCrc32C.GetValue() != crc([]byte(pk.Pem)).GetValue() || pk.Algorithm != kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256 {
		t.Errorf("GetPublicKey = %v", pk)
	}
	block, _ := pem.Decode([]byte(pk.Pem))
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], as.Signature) {
		t.Error("signature does not verify under the public key")
	}
	_, err = c.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: sig, Digest: &kmspb.Digest{Digest: &kmspb.Digest_Sha256{Sha256: digest[:31]}}})
	wantCode(t, "AsymmetricSign of a short digest", err, codes.InvalidArgument)
	_, err = c.AsymmetricSign(ctx, &kmspb.AsymmetricSignRequest{Name: sig, Data: data})
	wantCode(t, "AsymmetricSign of data with a P-256 key", err, codes.InvalidArgument)
}

func TestGenerateRandomBytes(t *testing.T) {
	_, c := setup(t)
	loc := "projects/p/locations/global"
	for _, tc := range []struct {
		n     int32
		level kmspb.ProtectionLevel
		loc   string
		code  codes.Code
	}{
		{8, kmspb.ProtectionLevel_HSM, loc, codes.OK},
		{1024, kmspb.ProtectionLevel_HSM, loc, codes.OK},
		{7, kmspb.ProtectionLevel_HSM, loc, codes.InvalidArgument},
		{1025, kmspb.ProtectionLevel_HSM, loc, codes.InvalidArgument},
		{32, kmspb.ProtectionLevel_SOFTWARE, loc, codes.InvalidArgument},
		{32, kmspb.ProtectionLevel_HSM, ring, codes.InvalidArgument},
	} {
		resp, err := c.GenerateRandomBytes(t.Context(), &kmspb.GenerateRandomBytesRequest{Location: tc.loc, LengthBytes: tc.n, ProtectionLevel: tc.level})
		wantCode(t, "GenerateRandomBytes", err, tc.code)
		if err == nil && (len(resp.Data) != int(tc.n) || resp.DataCrc32C.GetValue() != crc(resp.Data).GetValue()) {
			t.Errorf("GenerateRandomBytes(%d) = %d bytes, crc %v", tc.n, len(resp.Data), resp.DataCrc32C)
		}
	}
}

func TestSizeLimits(t *testing.T) {
	f, c := setup(t)
	hsm := f.CreateKey(ring, "hsm", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	if _, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: hsm, Plaintext: make([]byte, 4096), AdditionalAuthenticatedData: make([]byte, 4096)}); err != nil {
		t.Errorf("HSM Encrypt of 4 KiB + 4 KiB: %v", err)
	}
	_, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: hsm, Plaintext: make([]byte, 4096), AdditionalAuthenticatedData: make([]byte, 4097)})
	wantCode(t, "HSM Encrypt over 8 KiB", err, codes.InvalidArgument)
	soft, err := c.CreateCryptoKey(t.Context(), &kmspb.CreateCryptoKeyRequest{Parent: ring, CryptoKeyId: "soft",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: soft.Name, Plaintext: make([]byte, 64*1024)}); err != nil {
		t.Errorf("SOFTWARE Encrypt of 64 KiB: %v", err)
	}
	_, err = c.Encrypt(t.Context(), &kmspb.EncryptRequest{Name: soft.Name, Plaintext: make([]byte, 64*1024+1)})
	wantCode(t, "SOFTWARE Encrypt over 64 KiB", err, codes.InvalidArgument)
}

func TestCreateCryptoKey(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	create := func(parent, id string, ck *kmspb.CryptoKey, skip bool) (*kmspb.CryptoKey, error) {
		return c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: parent, CryptoKeyId: id, CryptoKey: ck, SkipInitialVersionCreation: skip})
	}
	mac := &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_MAC, VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
		Algorithm: kmspb.CryptoKeyVersion_HMAC_SHA256, ProtectionLevel: kmspb.ProtectionLevel_HSM}}
	_, err := create(ring, "m", mac, false)
	wantCode(t, "CreateCryptoKey in a missing key ring", err, codes.NotFound)
	kr, err := c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: "projects/p/locations/global", KeyRingId: "r"})
	if err != nil || kr.Name != ring {
		t.Fatalf("CreateKeyRing = %v, %v", kr, err)
	}
	_, err = c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: "projects/p/locations/global", KeyRingId: "r"})
	wantCode(t, "CreateKeyRing twice", err, codes.AlreadyExists)
	ck, err := create(ring, "m", mac, false)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Name != ring+"/cryptoKeys/m" || ck.Primary != nil || ck.Purpose != kmspb.CryptoKey_MAC {
		t.Errorf("CreateCryptoKey = %v", ck)
	}
	v, err := c.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: ck.Name + "/cryptoKeyVersions/1"})
	if err != nil || v.State != kmspb.CryptoKeyVersion_ENABLED || v.Algorithm != kmspb.CryptoKeyVersion_HMAC_SHA256 || v.ProtectionLevel != kmspb.ProtectionLevel_HSM {
		t.Errorf("version 1 = %v, %v", v, err)
	}
	_, err = create(ring, "m", mac, false)
	wantCode(t, "CreateCryptoKey of an existing id", err, codes.AlreadyExists)
	_, err = create(ring, "bad id", mac, false)
	wantCode(t, "CreateCryptoKey with a bad id", err, codes.InvalidArgument)
	_, err = create(ring, "x", &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_MAC}, false)
	wantCode(t, "CreateCryptoKey of MAC without an algorithm", err, codes.InvalidArgument)
	_, err = create(ring, "y", &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT, VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
		Algorithm: kmspb.CryptoKeyVersion_HMAC_SHA256}}, false)
	wantCode(t, "CreateCryptoKey with a mismatched algorithm", err, codes.InvalidArgument)
	empty, err := create(ring, "empty", &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}, true)
	if err != nil || empty.Primary != nil {
		t.Fatalf("CreateCryptoKey skipping the initial version = %v, %v", empty, err)
	}
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: empty.Name, Plaintext: []byte("x")})
	wantCode(t, "Encrypt with no primary", err, codes.FailedPrecondition)
}

func TestTransportFaults(t *testing.T) {
	f, c := setup(t)
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	enc := func(ctx context.Context) error {
		_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x")}, noRetry...)
		return err
	}
	ctx := t.Context()

	f.SetFaults(gcpfake.Faults{FailNext: 2})
	var got []codes.Code
	for range 4 {
		got = append(got, status.Code(enc(ctx)))
	}
	if want := []codes.Code{codes.Unavailable, codes.Unavailable, codes.OK, codes.OK}; !equal(got, want) {
		t.Errorf("FailNext 2: codes %v, want %v", got, want)
	}

	for _, tc := range []struct {
		fraction float64
		want     []codes.Code
	}{
		{0.5, []codes.Code{codes.OK, codes.Unavailable, codes.OK, codes.Unavailable}},
		{0.25, []codes.Code{codes.OK, codes.OK, codes.OK, codes.Unavailable}},
	} {
		f.SetFaults(gcpfake.Faults{UnavailableFraction: tc.fraction})
		got = got[:0]
		for range 4 {
			got = append(got, status.Code(enc(ctx)))
		}
		if !equal(got, tc.want) {
			t.Errorf("UnavailableFraction %v: codes %v, want %v", tc.fraction, got, tc.want)
		}
	}

	f.SetFaults(gcpfake.Faults{Outage: true})
	wantCode(t, "during an outage", enc(ctx), codes.Unavailable)

	f.SetFaults(gcpfake.Faults{Latency: time.Hour})
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	wantCode(t, "with latency past the deadline", enc(short), codes.DeadlineExceeded)

	f.SetFaults(gcpfake.Faults{})
	f.ResetCalls()
	if err := enc(ctx); err != nil {
		t.Fatal(err)
	}
	if f.Calls("Encrypt") != 1 || f.TotalCalls() != 1 {
		t.Errorf("Calls(Encrypt) = %d, TotalCalls = %d; want 1, 1", f.Calls("Encrypt"), f.TotalCalls())
	}
}

func equal(a, b []codes.Code) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDamageFaults(t *testing.T) {
	f, c := setup(t)
	ctx := t.Context()
	key := f.CreateKey(ring, "k", kmspb.CryptoKey_ENCRYPT_DECRYPT)
	pt := []byte("payload")

	f.SetFaults(gcpfake.Faults{CorruptRequest: true})
	_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: pt, PlaintextCrc32C: crc(pt)})
	wantCode(t, "damaged request with a checksum", err, codes.InvalidArgument)
	// Without a checksum the damage goes unnoticed: the point of sending one.
	resp, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: bytes.Clone(pt)})
	if err != nil {
		t.Fatal(err)
	}
	f.SetFaults(gcpfake.Faults{})
	dec, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: resp.Ciphertext})
	if err != nil || bytes.Equal(dec.Plaintext, pt) {
		t.Errorf("a damaged request without checksum decrypts to %q, %v; want a different plaintext", dec.GetPlaintext(), err)
	}

	f.SetFaults(gcpfake.Faults{CorruptResponseCRC: true, DropVerified: true, WrongName: true})
	resp, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: pt, PlaintextCrc32C: crc(pt), AdditionalAuthenticatedDataCrc32C: crc(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.CiphertextCrc32C.GetValue() == crc(resp.Ciphertext).GetValue() {
		t.Error("CorruptResponseCRC: ciphertext_crc32c still matches")
	}
	if resp.VerifiedPlaintextCrc32C || resp.VerifiedAdditionalAuthenticatedDataCrc32C {
		t.Error("DropVerified: verified flags still set")
	}
	if want := ring + "/cryptoKeys/k-other/cryptoKeyVersions/1"; resp.Name != want {
		t.Errorf("WrongName: name %q, want %q", resp.Name, want)
	}
	f.SetFaults(gcpfake.Faults{})
	// The data itself was not damaged.
	dec, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: resp.Ciphertext})
	if err != nil || !bytes.Equal(dec.Plaintext, pt) {
		t.Errorf("Decrypt of a ciphertext with a corrupted checksum = %q, %v", dec.GetPlaintext(), err)
	}
}
