package gcpfake

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Resource-name grammar, as the service documents it.
var (
	projectRe = regexp.MustCompile(`^[a-z0-9.:-]{1,100}$`)
	idRe      = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
	versionRe = regexp.MustCompile(`^[1-9][0-9]{0,9}$`)
)

// Kinds of resource name.
const (
	kindLocation = "location"
	kindKeyRing  = "keyRing"
	kindKey      = "cryptoKey"
	kindVersion  = "cryptoKeyVersion"
)

// parseName says what a resource name names ("" when it is malformed).
func parseName(name string) string {
	p := strings.Split(name, "/")
	if len(p) < 4 || p[0] != "projects" || !projectRe.MatchString(p[1]) || p[2] != "locations" || !idRe.MatchString(p[3]) {
		return ""
	}
	switch {
	case len(p) == 4:
		return kindLocation
	case len(p) == 6 && p[4] == "keyRings" && idRe.MatchString(p[5]):
		return kindKeyRing
	case len(p) == 8 && p[4] == "keyRings" && idRe.MatchString(p[5]) && p[6] == "cryptoKeys" && idRe.MatchString(p[7]):
		return kindKey
	case len(p) == 10 && p[4] == "keyRings" && idRe.MatchString(p[5]) && p[6] == "cryptoKeys" && idRe.MatchString(p[7]) &&
		p[8] == "cryptoKeyVersions" && versionRe.MatchString(p[9]):
		return kindVersion
	}
	return ""
}

// wantName fails with INVALID_ARGUMENT unless name is of kind.
func wantName(field, name, kind string) error {
	if parseName(name) != kind {
		return errorf(codes.InvalidArgument, "Resource name [%s] in field %s is not a valid %s name.", name, field, kind)
	}
	return nil
}

// cryptoKey is a CryptoKey and its versions.
type cryptoKey struct {
	name       string
	id         [8]byte // random, embedded in ciphertexts
	purpose    kmspb.CryptoKey_CryptoKeyPurpose
	algorithm  kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	protection kmspb.ProtectionLevel
	created    time.Time
	versions   []*keyVersion // versions[i] is version i+1
	primary    int           // 1-based, 0 when none
}

// keyVersion is one CryptoKeyVersion's material and state. The material is
// immutable; state is guarded by Fake.mu.
type keyVersion struct {
	name      string
	number    uint32
	state     kmspb.CryptoKeyVersion_CryptoKeyVersionState
	algorithm kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm
	created   time.Time
	aead      cipher.AEAD       // GOOGLE_SYMMETRIC_ENCRYPTION
	hmacKey   []byte            // HMAC_SHA256
	ec        *ecdsa.PrivateKey // EC_SIGN_P256_SHA256
}

// defaultAlgorithm is the one algorithm the fake supports per purpose.
func defaultAlgorithm(p kmspb.CryptoKey_CryptoKeyPurpose) kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm {
	switch p {
	case kmspb.CryptoKey_ENCRYPT_DECRYPT:
		return kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION
	case kmspb.CryptoKey_MAC:
		return kmspb.CryptoKeyVersion_HMAC_SHA256
	case kmspb.CryptoKey_ASYMMETRIC_SIGN:
		return kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256
	}
	return kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED
}

func newVersion(key string, n uint32, alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm) *keyVersion {
	v := &keyVersion{
		name:      fmt.Sprintf("%s/cryptoKeyVersions/%d", key, n),
		number:    n,
		state:     kmspb.CryptoKeyVersion_ENABLED,
		algorithm: alg,
		created:   time.Now(),
	}
	switch alg {
	case kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION:
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		block, err := aes.NewCipher(secret)
		if err != nil {
			panic(err)
		}
		v.aead, err = cipher.NewGCM(block)
		if err != nil {
			panic(err)
		}
	case kmspb.CryptoKeyVersion_HMAC_SHA256:
		v.hmacKey = make([]byte, 32)
		_, _ = rand.Read(v.hmacKey)
	case kmspb.CryptoKeyVersion_EC_SIGN_P256_SHA256:
		var err error
		v.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
	}
	return v
}

// proto renders a version as the API shows it. Callers hold f.mu.
func (v *keyVersion) proto(protection kmspb.ProtectionLevel) *kmspb.CryptoKeyVersion {
	pv := &kmspb.CryptoKeyVersion{
		Name:            v.name,
		State:           v.state,
		ProtectionLevel: protection,
		Algorithm:       v.algorithm,
		CreateTime:      timestamppb.New(v.created),
		GenerateTime:    timestamppb.New(v.created),
	}
	return pv
}

// proto renders a CryptoKey as the API shows it. Callers hold f.mu.
func (k *cryptoKey) proto() *kmspb.CryptoKey {
	pk := &kmspb.CryptoKey{
		Name:       k.name,
		Purpose:    k.purpose,
		CreateTime: timestamppb.New(k.created),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: k.protection,
			Algorithm:       k.algorithm,
		},
	}
	if k.primary > 0 {
		pk.Primary = k.versions[k.primary-1].proto(k.protection)
	}
	return pk
}

// keyOf returns the CryptoKey part of a CryptoKeyVersion name.
func keyOf(version string) string {
	return version[:strings.LastIndex(version, "/cryptoKeyVersions/")]
}

// lookupKey finds a CryptoKey. Callers hold f.mu.
func (f *Fake) lookupKey(name string) (*cryptoKey, error) {
	k := f.keys[name]
	if k == nil {
		return nil, errorf(codes.NotFound, "CryptoKey %s not found.", name)
	}
	return k, nil
}

// lookupVersion finds a CryptoKeyVersion. Callers hold f.mu.
func (f *Fake) lookupVersion(name string) (*cryptoKey, *keyVersion, error) {
	k := f.keys[keyOf(name)]
	n, _ := strconv.ParseUint(name[strings.LastIndexByte(name, '/')+1:], 10, 32)
	if k == nil || n == 0 || int(n) > len(k.versions) {
		return nil, nil, errorf(codes.NotFound, "CryptoKeyVersion %s not found.", name)
	}
	return k, k.versions[n-1], nil
}

// usable checks a version's state and its key's purpose for an operation.
// Callers hold f.mu.
func usable(k *cryptoKey, v *keyVersion, want kmspb.CryptoKey_CryptoKeyPurpose) error {
	if k.purpose != want {
		return errorf(codes.FailedPrecondition,
			"Operation requested for Key %s has incorrect key purpose: %s", v.name, k.purpose)
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return errorf(codes.FailedPrecondition,
			"%s is not enabled, current state is: %s.", v.name, v.state)
	}
	return nil
}

// createKey adds a CryptoKey with version 1 (unless skipped). Callers hold
// f.mu for writing.
func (f *Fake) createKey(ring, id string, purpose kmspb.CryptoKey_CryptoKeyPurpose,
	alg kmspb.CryptoKeyVersion_CryptoKeyVersionAlgorithm, protection kmspb.ProtectionLevel, skipVersion bool) (*cryptoKey, error) {
	if !f.rings[ring] {
		return nil, errorf(codes.NotFound, "KeyRing %s not found.", ring)
	}
	name := ring + "/cryptoKeys/" + id
	if f.keys[name] != nil {
		return nil, errorf(codes.AlreadyExists, "CryptoKey %s already exists.", name)
	}
	k := &cryptoKey{name: name, purpose: purpose, algorithm: alg, protection: protection, created: time.Now()}
	_, _ = rand.Read(k.id[:])
	if !skipVersion {
		k.versions = append(k.versions, newVersion(name, 1, alg))
		if purpose == kmspb.CryptoKey_ENCRYPT_DECRYPT {
			k.primary = 1
		}
	}
	f.keys[name] = k
	return k, nil
}

// CreateKeyRing creates a key ring (projects/P/locations/L/keyRings/R) if it
// does not exist yet.
func (f *Fake) CreateKeyRing(name string) {
	f.tb.Helper()
	if parseName(name) != kindKeyRing {
		f.tb.Fatalf("gcpfake: %q is not a key ring name", name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rings[name] = true
}

// CreateKey creates a CryptoKey id of the given purpose in ring (created if
// needed), with an ENABLED version 1 (the primary, for ENCRYPT_DECRYPT), and
// returns the CryptoKey's name. Version 1 is name + "/cryptoKeyVersions/1".
// The algorithm is GOOGLE_SYMMETRIC_ENCRYPTION, HMAC_SHA256 or
// EC_SIGN_P256_SHA256 by purpose; the protection level is HSM.
func (f *Fake) CreateKey(ring, id string, purpose kmspb.CryptoKey_CryptoKeyPurpose) string {
	f.tb.Helper()
	alg := defaultAlgorithm(purpose)
	if alg == kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED || !idRe.MatchString(id) {
		f.tb.Fatalf("gcpfake: cannot create key %q of purpose %s", id, purpose)
	}
	f.CreateKeyRing(ring)
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.createKey(ring, id, purpose, alg, kmspb.ProtectionLevel_HSM, false)
	if err != nil {
		f.tb.Fatalf("gcpfake: %v", err)
	}
	return k.name
}

// AddVersion adds a new ENABLED version to a CryptoKey and returns its name.
// For an ENCRYPT_DECRYPT key the new version becomes the primary, as after a
// rotation.
func (f *Fake) AddVersion(key string) string {
	f.tb.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.keys[key]
	if k == nil {
		f.tb.Fatalf("gcpfake: no CryptoKey %q", key)
	}
	v := newVersion(key, uint32(len(k.versions)+1), k.algorithm)
	k.versions = append(k.versions, v)
	if k.purpose == kmspb.CryptoKey_ENCRYPT_DECRYPT {
		k.primary = int(v.number)
	}
	return v.name
}

// Disable disables a CryptoKeyVersion.
func (f *Fake) Disable(version string) {
	f.tb.Helper()
	f.setState(version, kmspb.CryptoKeyVersion_DISABLED)
}

// Enable enables a CryptoKeyVersion.
func (f *Fake) Enable(version string) {
	f.tb.Helper()
	f.setState(version, kmspb.CryptoKeyVersion_ENABLED)
}

func (f *Fake) setState(version string, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) {
	f.tb.Helper()
	if parseName(version) != kindVersion {
		f.tb.Fatalf("gcpfake: %q is not a CryptoKeyVersion name", version)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, v, err := f.lookupVersion(version)
	if err != nil {
		f.tb.Fatalf("gcpfake: %v", err)
	}
	v.state = s
}
