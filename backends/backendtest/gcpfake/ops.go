package gcpfake

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"slices"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// server is the fake's kmspb.KeyManagementServiceServer. It is a separate
// type from Fake so that Fake's Go helpers (CreateKeyRing, CreateKey) do not
// collide with the RPC methods of the same names.
type server struct {
	kmspb.UnimplementedKeyManagementServiceServer
	*Fake
}

// Service limits.
const (
	maxSoftwareData = 64 * 1024 // SOFTWARE plaintext, AAD, MAC data
	maxHSMData      = 8 * 1024  // HSM plaintext + AAD
	minRandom       = 8
	maxRandom       = 1024
)

// Ciphertext layout: format byte, CryptoKey id, version number, GCM nonce,
// sealed plaintext. The header (format, id, version) is authenticated with
// the AAD.
const (
	ctFormat   = 0x01
	ctHeader   = 1 + 8 + 4
	nonceSize  = 12
	tagSize    = 16
	ctOverhead = ctHeader + nonceSize + tagSize
)

var (
	errCiphertextInvalid = errorf(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	errWrongKey          = errorf(codes.InvalidArgument, "Decryption failed: verify that 'name' refers to the correct CryptoKey.")
)

func sealAAD(header, aad []byte) []byte {
	return append(slices.Clip(header), aad...)
}

// CreateKeyRing implements kmspb.KeyManagementServiceServer.
func (f *server) CreateKeyRing(_ context.Context, req *kmspb.CreateKeyRingRequest) (*kmspb.KeyRing, error) {
	if err := wantName("parent", req.GetParent(), kindLocation); err != nil {
		return nil, err
	}
	if !idRe.MatchString(req.GetKeyRingId()) {
		return nil, errorf(codes.InvalidArgument, "key_ring_id %q must match [a-zA-Z0-9_-]{1,63}.", req.GetKeyRingId())
	}
	name := req.GetParent() + "/keyRings/" + req.GetKeyRingId()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rings[name] {
		return nil, errorf(codes.AlreadyExists, "KeyRing %s already exists.", name)
	}
	f.rings[name] = true
	return &kmspb.KeyRing{Name: name, CreateTime: timestamppb.Now()}, nil
}

// GetKeyRing implements kmspb.KeyManagementServiceServer.
func (f *server) GetKeyRing(_ context.Context, req *kmspb.GetKeyRingRequest) (*kmspb.KeyRing, error) {
	if err := wantName("name", req.GetName(), kindKeyRing); err != nil {
		return nil, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.rings[req.GetName()] {
		return nil, errorf(codes.NotFound, "KeyRing %s not found.", req.GetName())
	}
	return &kmspb.KeyRing{Name: req.GetName()}, nil
}

// CreateCryptoKey implements kmspb.KeyManagementServiceServer.
func (f *server) CreateCryptoKey(_ context.Context, req *kmspb.CreateCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if err := wantName("parent", req.GetParent(), kindKeyRing); err != nil {
		return nil, err
	}
	if !idRe.MatchString(req.GetCryptoKeyId()) {
		return nil, errorf(codes.InvalidArgument, "crypto_key_id %q must match [a-zA-Z0-9_-]{1,63}.", req.GetCryptoKeyId())
	}
	ck := req.GetCryptoKey()
	if ck == nil {
		return nil, errorf(codes.InvalidArgument, "crypto_key is required.")
	}
	purpose := ck.GetPurpose()
	want := defaultAlgorithm(purpose)
	if want == kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED {
		return nil, errorf(codes.InvalidArgument, "crypto_key.purpose %s is not supported.", purpose)
	}
	alg := ck.GetVersionTemplate().GetAlgorithm()
	if alg == kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED {
		if purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
			return nil, errorf(codes.InvalidArgument, "crypto_key.version_template.algorithm must be specified for purpose %s.", purpose)
		}
		alg = want
	}
	if alg != want {
		return nil, errorf(codes.InvalidArgument, "Algorithm %s is not supported for purpose %s.", alg, purpose)
	}
	protection := ck.GetVersionTemplate().GetProtectionLevel()
	switch protection {
	case kmspb.ProtectionLevel_PROTECTION_LEVEL_UNSPECIFIED:
		protection = kmspb.ProtectionLevel_SOFTWARE
	case kmspb.ProtectionLevel_SOFTWARE, kmspb.ProtectionLevel_HSM:
	default:
		return nil, errorf(codes.InvalidArgument, "Protection level %s is not supported.", protection)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.createKey(req.GetParent(), req.GetCryptoKeyId(), purpose, alg, protection, req.GetSkipInitialVersionCreation())
	if err != nil {
		return nil, err
	}
	return k.proto(), nil
}

// GetCryptoKey implements kmspb.KeyManagementServiceServer.
func (f *server) GetCryptoKey(_ context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	if err := wantName("name", req.GetName(), kindKey); err != nil {
		return nil, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, err := f.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	return k.proto(), nil
}

// GetCryptoKeyVersion implements kmspb.KeyManagementServiceServer.
func (f *server) GetCryptoKeyVersion(_ context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	if err := wantName("name", req.GetName(), kindVersion); err != nil {
		return nil, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, v, err := f.lookupVersion(req.GetName())
	if err != nil {
		return nil, err
	}
	return v.proto(k.protection), nil
}

// UpdateCryptoKeyVersion implements kmspb.KeyManagementServiceServer. Only
// the state field can be updated, between ENABLED and DISABLED.
func (f *server) UpdateCryptoKeyVersion(_ context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	cv := req.GetCryptoKeyVersion()
	if err := wantName("crypto_key_version.name", cv.GetName(), kindVersion); err != nil {
		return nil, err
	}
	if !slices.Equal(req.GetUpdateMask().GetPaths(), []string{"state"}) {
		return nil, errorf(codes.InvalidArgument, "update_mask must be [state], got %v.", req.GetUpdateMask().GetPaths())
	}
	s := cv.GetState()
	if s != kmspb.CryptoKeyVersion_ENABLED && s != kmspb.CryptoKeyVersion_DISABLED {
		return nil, errorf(codes.InvalidArgument, "state can only be updated to ENABLED or DISABLED, not %s.", s)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k, v, err := f.lookupVersion(cv.GetName())
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED {
		return nil, errorf(codes.FailedPrecondition, "%s is in state %s.", v.name, v.state)
	}
	v.state = s
	return v.proto(k.protection), nil
}

// Encrypt implements kmspb.KeyManagementServiceServer. name is a CryptoKey
// (its primary version encrypts) or a CryptoKeyVersion.
func (f *server) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	kind := parseName(req.GetName())
	if kind != kindKey && kind != kindVersion {
		return nil, errorf(codes.InvalidArgument, "Resource name [%s] in field name is not a valid CryptoKey or CryptoKeyVersion name.", req.GetName())
	}
	ptOK, err := checkCRC("plaintext_crc32c", "plaintext", req.GetPlaintext(), req.GetPlaintextCrc32C())
	if err != nil {
		return nil, err
	}
	aadOK, err := checkCRC("additional_authenticated_data_crc32c", "additional_authenticated_data",
		req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C())
	if err != nil {
		return nil, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var k *cryptoKey
	var v *keyVersion
	if kind == kindKey {
		if k, err = f.lookupKey(req.GetName()); err != nil {
			return nil, err
		}
		if k.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
			return nil, errorf(codes.FailedPrecondition,
				"Operation requested for Key %s has incorrect key purpose: %s", k.name, k.purpose)
		}
		if k.primary == 0 {
			return nil, errorf(codes.FailedPrecondition, "CryptoKey %s has no primary version.", k.name)
		}
		v = k.versions[k.primary-1]
	} else if k, v, err = f.lookupVersion(req.GetName()); err != nil {
		return nil, err
	}
	if err := usable(k, v, kmspb.CryptoKey_ENCRYPT_DECRYPT); err != nil {
		return nil, err
	}
	pt, aad := req.GetPlaintext(), req.GetAdditionalAuthenticatedData()
	switch {
	case k.protection == kmspb.ProtectionLevel_HSM && len(pt)+len(aad) > maxHSMData:
		return nil, errorf(codes.InvalidArgument, "The combined length of plaintext and additional_authenticated_data must be no larger than %d bytes for HSM keys.", maxHSMData)
	case len(pt) > maxSoftwareData:
		return nil, errorf(codes.InvalidArgument, "plaintext must be no larger than %d bytes.", maxSoftwareData)
	case len(aad) > maxSoftwareData:
		return nil, errorf(codes.InvalidArgument, "additional_authenticated_data must be no larger than %d bytes.", maxSoftwareData)
	}
	ct := make([]byte, ctHeader+nonceSize, ctOverhead+len(pt))
	ct[0] = ctFormat
	copy(ct[1:9], k.id[:])
	binary.BigEndian.PutUint32(ct[9:ctHeader], v.number)
	_, _ = rand.Read(ct[ctHeader:])
	ct = v.aead.Seal(ct, ct[ctHeader:], pt, sealAAD(ct[:ctHeader], aad))
	return &kmspb.EncryptResponse{
		Name:                    v.name,
		Ciphertext:              ct,
		CiphertextCrc32C:        CRC32C(ct),
		VerifiedPlaintextCrc32C: ptOK,
		VerifiedAdditionalAuthenticatedDataCrc32C: aadOK,
		ProtectionLevel: k.protection,
	}, nil
}

// Decrypt implements kmspb.KeyManagementServiceServer. name is a
// CryptoKey; the ciphertext says which version made it.
func (f *server) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if err := wantName("name", req.GetName(), kindKey); err != nil {
		return nil, err
	}
	if _, err := checkCRC("ciphertext_crc32c", "ciphertext", req.GetCiphertext(), req.GetCiphertextCrc32C()); err != nil {
		return nil, err
	}
	if _, err := checkCRC("additional_authenticated_data_crc32c", "additional_authenticated_data",
		req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	ct, aad := req.GetCiphertext(), req.GetAdditionalAuthenticatedData()
	if len(ct) > maxSoftwareData+ctOverhead {
		return nil, errorf(codes.InvalidArgument, "ciphertext must be no larger than %d bytes.", maxSoftwareData+ctOverhead)
	}
	if len(aad) > maxSoftwareData {
		return nil, errorf(codes.InvalidArgument, "additional_authenticated_data must be no larger than %d bytes.", maxSoftwareData)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, err := f.lookupKey(req.GetName())
	if err != nil {
		return nil, err
	}
	if k.purpose != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, errorf(codes.FailedPrecondition,
			"Operation requested for Key %s has incorrect key purpose: %s", k.name, k.purpose)
	}
	if len(ct) < ctOverhead || ct[0] != ctFormat {
		return nil, errCiphertextInvalid
	}
	if !bytes.Equal(ct[1:9], k.id[:]) {
		return nil, errWrongKey
	}
	n := binary.BigEndian.Uint32(ct[9:ctHeader])
	if n == 0 || int(n) > len(k.versions) {
		return nil, errWrongKey
	}
	v := k.versions[n-1]
	if err := usable(k, v, kmspb.CryptoKey_ENCRYPT_DECRYPT); err != nil {
		return nil, err
	}
	pt, err := v.aead.Open(nil, ct[ctHeader:ctHeader+nonceSize], ct[ctHeader+nonceSize:], sealAAD(ct[:ctHeader], aad))
	if err != nil {
		return nil, errCiphertextInvalid
	}
	return &kmspb.DecryptResponse{
		Plaintext:       pt,
		PlaintextCrc32C: CRC32C(pt),
		UsedPrimary:     int(n) == k.primary,
		ProtectionLevel: k.protection,
	}, nil
}

// usableVersion finds an ENABLED version of a key of purpose. Callers hold
// f.mu.
func (f *server) usableVersion(name string, purpose kmspb.CryptoKey_CryptoKeyPurpose) (*cryptoKey, *keyVersion, error) {
	k, v, err := f.lookupVersion(name)
	if err != nil {
		return nil, nil, err
	}
	if err := usable(k, v, purpose); err != nil {
		return nil, nil, err
	}
	return k, v, nil
}

// MacSign implements kmspb.KeyManagementServiceServer.
func (f *server) MacSign(_ context.Context, req *kmspb.MacSignRequest) (*kmspb.MacSignResponse, error) {
	if err := wantName("name", req.GetName(), kindVersion); err != nil {
		return nil, err
	}
	dataOK, err := checkCRC("data_crc32c", "data", req.GetData(), req.GetDataCrc32C())
	if err != nil {
		return nil, err
	}
	if len(req.GetData()) > maxSoftwareData {
		return nil, errorf(codes.InvalidArgument, "data must be no larger than %d bytes.", maxSoftwareData)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, v, err := f.usableVersion(req.GetName(), kmspb.CryptoKey_MAC)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, v.hmacKey)
	m.Write(req.GetData())
	tag := m.Sum(nil)
	return &kmspb.MacSignResponse{
		Name:               v.name,
		Mac:                tag,
		MacCrc32C:          CRC32C(tag),
		VerifiedDataCrc32C: dataOK,
		ProtectionLevel:    k.protection,
	}, nil
}

// MacVerify implements kmspb.KeyManagementServiceServer.
func (f *server) MacVerify(_ context.Context, req *kmspb.MacVerifyRequest) (*kmspb.MacVerifyResponse, error) {
	if err := wantName("name", req.GetName(), kindVersion); err != nil {
		return nil, err
	}
	dataOK, err := checkCRC("data_crc32c", "data", req.GetData(), req.GetDataCrc32C())
	if err != nil {
		return nil, err
	}
	macOK, err := checkCRC("mac_crc32c", "mac", req.GetMac(), req.GetMacCrc32C())
	if err != nil {
		return nil, err
	}
	if len(req.GetData()) > maxSoftwareData {
		return nil, errorf(codes.InvalidArgument, "data must be no larger than %d bytes.", maxSoftwareData)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, v, err := f.usableVersion(req.GetName(), kmspb.CryptoKey_MAC)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, v.hmacKey)
	m.Write(req.GetData())
	ok := hmac.Equal(m.Sum(nil), req.GetMac())
	return &kmspb.MacVerifyResponse{
		Name:                     v.name,
		Success:                  ok,
		VerifiedDataCrc32C:       dataOK,
		VerifiedMacCrc32C:        macOK,
		VerifiedSuccessIntegrity: ok,
		ProtectionLevel:          k.protection,
	}, nil
}

// AsymmetricSign implements kmspb.KeyManagementServiceServer. The fake's
// EC_SIGN_P256_SHA256 keys sign a SHA-256 digest.
func (f *server) AsymmetricSign(_ context.Context, req *kmspb.AsymmetricSignRequest) (*kmspb.AsymmetricSignResponse, error) {
	if err := wantName("name", req.GetName(), kindVersion); err != nil {
		return nil, err
	}
	digest := req.GetDigest().GetSha256()
	digestOK, err := checkCRC("digest_crc32c", "digest", digest, req.GetDigestCrc32C())
	if err != nil {
		return nil, err
	}
	dataOK, err := checkCRC("data_crc32c", "data", req.GetData(), req.GetDataCrc32C())
	if err != nil {
		return nil, err
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, v, err := f.usableVersion(req.GetName(), kmspb.CryptoKey_ASYMMETRIC_SIGN)
	if err != nil {
		return nil, err
	}
	if len(req.GetData()) > 0 || req.GetDigest() == nil {
		return nil, errorf(codes.InvalidArgument, "Algorithm %s requires field digest, not data.", v.algorithm)
	}
	if len(digest) != sha256.Size {
		return nil, errorf(codes.InvalidArgument, "Algorithm %s requires a SHA-256 digest of %d bytes.", v.algorithm, sha256.Size)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, v.ec, digest)
	if err != nil {
		return nil, errorf(codes.Internal, "signing failed: %v", err)
	}
	return &kmspb.AsymmetricSignResponse{
		Signature:            sig,
		SignatureCrc32C:      CRC32C(sig),
		VerifiedDigestCrc32C: digestOK,
		VerifiedDataCrc32C:   dataOK,
		Name:                 v.name,
		ProtectionLevel:      k.protection,
	}, nil
}

// GetPublicKey implements kmspb.KeyManagementServiceServer.
func (f *server) GetPublicKey(_ context.Context, req *kmspb.GetPublicKeyRequest) (*kmspb.PublicKey, error) {
	if err := wantName("name", req.GetName(), kindVersion); err != nil {
		return nil, err
	}
	switch req.GetPublicKeyFormat() {
	case kmspb.PublicKey_PUBLIC_KEY_FORMAT_UNSPECIFIED, kmspb.PublicKey_PEM:
	default:
		return nil, errorf(codes.InvalidArgument, "public_key_format %s is not supported for %s.", req.GetPublicKeyFormat(), req.GetName())
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, v, err := f.usableVersion(req.GetName(), kmspb.CryptoKey_ASYMMETRIC_SIGN)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&v.ec.PublicKey)
	if err != nil {
		return nil, errorf(codes.Internal, "marshalling the public key: %v", err)
	}
	p := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	return &kmspb.PublicKey{
		Pem:             p,
		Algorithm:       v.algorithm,
		PemCrc32C:       CRC32C([]byte(p)),
		Name:            v.name,
		ProtectionLevel: k.protection,
	}, nil
}

// GenerateRandomBytes implements kmspb.KeyManagementServiceServer.
func (f *server) GenerateRandomBytes(_ context.Context, req *kmspb.GenerateRandomBytesRequest) (*kmspb.GenerateRandomBytesResponse, error) {
	if err := wantName("location", req.GetLocation(), kindLocation); err != nil {
		return nil, err
	}
	if n := req.GetLengthBytes(); n < minRandom || n > maxRandom {
		return nil, errorf(codes.InvalidArgument, "length_bytes must be between %d and %d, got %d.", minRandom, maxRandom, n)
	}
	if req.GetProtectionLevel() != kmspb.ProtectionLevel_HSM {
		return nil, errorf(codes.InvalidArgument, "protection_level must be HSM, got %s.", req.GetProtectionLevel())
	}
	b := make([]byte, req.GetLengthBytes())
	_, _ = rand.Read(b)
	return &kmspb.GenerateRandomBytesResponse{Data: b, DataCrc32C: CRC32C(b)}, nil
}
