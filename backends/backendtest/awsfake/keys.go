package awsfake

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Key states and usages, as the service spells them.
const (
	stateEnabled         = "Enabled"
	stateDisabled        = "Disabled"
	statePendingDeletion = "PendingDeletion"

	usageEncrypt = "ENCRYPT_DECRYPT"
	usageMAC     = "GENERATE_VERIFY_MAC"
	usageSign    = "SIGN_VERIFY"
)

// key is one KMS key. Everything but state (guarded by Fake.mu) is fixed at
// creation, so operations use the secrets without holding the lock.
type key struct {
	id, arn     string
	spec, usage string
	description string
	created     time.Time
	state       string
	deletion    time.Time // when state is PendingDeletion
	window      int32

	aead cipher.AEAD       // SYMMETRIC_DEFAULT
	mac  []byte            // HMAC_256
	priv *ecdsa.PrivateKey // ECC_NIST_P256
}

func usageOf(spec string) string {
	switch spec {
	case HMAC256:
		return usageMAC
	case ECCNISTP256:
		return usageSign
	}
	return usageEncrypt
}

// newKey makes a key with fresh random secrets, or the ValidationException
// the service gives for an unsupported spec and usage.
func newKey(spec, usage, description string) (*key, *apiError) {
	switch {
	case spec == SymmetricDefault && usage == usageEncrypt,
		spec == HMAC256 && usage == usageMAC,
		spec == ECCNISTP256 && usage == usageSign:
	case spec == SymmetricDefault || spec == HMAC256 || spec == ECCNISTP256:
		return nil, errorf("ValidationException", "KeyUsage %s is not compatible with KeySpec %s", usage, spec)
	default:
		return nil, errorf("UnsupportedOperationException", "the fake does not implement KeySpec %q", spec)
	}
	id := newUUID()
	k := &key{id: id, arn: ARN(id), spec: spec, usage: usage, description: description,
		created: time.Now().Truncate(time.Millisecond), state: stateEnabled}
	switch spec {
	case SymmetricDefault:
		secret := make([]byte, 32)
		_, _ = rand.Read(secret)
		block, err := aes.NewCipher(secret)
		if err != nil {
			panic(err)
		}
		k.aead, _ = cipher.NewGCM(block)
	case HMAC256:
		k.mac = make([]byte, 32)
		_, _ = rand.Read(k.mac)
	case ECCNISTP256:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		k.priv = priv
	}
	return k, nil
}

// metadata is the service's KeyMetadata.
type metadata struct {
	AWSAccountId                string
	Arn                         string
	CreationDate                float64
	CustomerMasterKeySpec       string
	DeletionDate                *float64 `json:",omitempty"`
	Description                 string
	Enabled                     bool
	EncryptionAlgorithms        []string `json:",omitempty"`
	KeyId                       string
	KeyManager                  string
	KeySpec                     string
	KeyState                    string
	KeyUsage                    string
	MacAlgorithms               []string `json:",omitempty"`
	MultiRegion                 bool
	Origin                      string
	PendingDeletionWindowInDays *int32   `json:",omitempty"`
	SigningAlgorithms           []string `json:",omitempty"`
}

// metadata describes k; the caller holds Fake.mu.
func (k *key) metadata() metadata {
	m := metadata{
		AWSAccountId:          Account,
		Arn:                   k.arn,
		CreationDate:          epoch(k.created),
		CustomerMasterKeySpec: k.spec,
		Description:           k.description,
		Enabled:               k.state == stateEnabled,
		KeyId:                 k.id,
		KeyManager:            "CUSTOMER",
		KeySpec:               k.spec,
		KeyState:              k.state,
		KeyUsage:              k.usage,
		Origin:                "AWS_KMS",
	}
	switch k.spec {
	case SymmetricDefault:
		m.EncryptionAlgorithms = []string{"SYMMETRIC_DEFAULT"}
	case HMAC256:
		m.MacAlgorithms = []string{"HMAC_SHA_256"}
	case ECCNISTP256:
		m.SigningAlgorithms = []string{"ECDSA_SHA_256"}
	}
	if k.state == statePendingDeletion {
		d, w := epoch(k.deletion), k.window
		m.DeletionDate, m.PendingDeletionWindowInDays = &d, &w
	}
	return m
}

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }

var (
	keyIDRe    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	aliasRe    = regexp.MustCompile(`^alias/[a-zA-Z0-9:/_-]{1,250}$`)
	arnPrefix  = "arn:aws:kms:" + Region + ":" + Account + ":"
	anyARNRe   = regexp.MustCompile(`^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/`)
	maxMessage = 4096
)

// resolve finds the key a KeyId parameter names: a key id, key ARN, alias
// name or alias ARN. The caller holds Fake.mu.
func (f *Fake) resolve(id string) (*key, *apiError) {
	switch {
	case id == "":
		return nil, errorf("ValidationException", "1 validation error detected: Value at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1")
	case strings.HasPrefix(id, arnPrefix+"alias/"):
		return f.resolveAlias(strings.TrimPrefix(id, arnPrefix), id)
	case strings.HasPrefix(id, "alias/"):
		return f.resolveAlias(id, arnPrefix+id)
	case strings.HasPrefix(id, arnPrefix+"key/"):
		if k := f.keys[strings.TrimPrefix(id, arnPrefix+"key/")]; k != nil {
			return k, nil
		}
		return nil, errorf("NotFoundException", "Key '%s' does not exist", id)
	case anyARNRe.MatchString(id):
		// Another region or account: the service does not find it here.
		return nil, errorf("NotFoundException", "Key '%s' does not exist", id)
	case keyIDRe.MatchString(id):
		if k := f.keys[id]; k != nil {
			return k, nil
		}
		return nil, errorf("NotFoundException", "Key '%s' does not exist", ARN(id))
	}
	return nil, errorf("NotFoundException", "Invalid keyId '%s'", id)
}

func (f *Fake) resolveAlias(name, arn string) (*key, *apiError) {
	if id, ok := f.aliases[name]; ok {
		if k := f.keys[id]; k != nil {
			return k, nil
		}
	}
	return nil, errorf("NotFoundException", "Alias %s is not found.", arn)
}

// usable refuses a key that is not enabled, with the service's exceptions.
// The caller holds Fake.mu.
func (k *key) usable() *apiError {
	switch k.state {
	case stateEnabled:
		return nil
	case stateDisabled:
		return errorf("DisabledException", "%s is disabled.", k.arn)
	}
	return errorf("KMSInvalidStateException", "%s is pending deletion.", k.arn)
}

// usableFor resolves id under the read lock and checks the key is enabled and
// has the usage the operation needs.
func (f *Fake) usableFor(id, usage, what string) (*key, *apiError) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, aerr := f.resolve(id)
	if aerr != nil {
		return nil, aerr
	}
	if aerr := k.usable(); aerr != nil {
		return nil, aerr
	}
	if k.usage != usage {
		return nil, errorf("InvalidKeyUsageException", "%s key usage is %s which is not valid for %s.", k.arn, k.usage, what)
	}
	return k, nil
}

// Ciphertext blobs are
//
//	version (1 byte, 1) | key id (36 bytes) | nonce (12 bytes) | AES-GCM sealed plaintext and tag
//
// sealed under the key's secret with the header and the canonical encryption
// context as associated data. The format is the fake's own; the service's
// blobs are opaque too.
const (
	blobVersion = 1
	blobHeader  = 1 + 36
	blobMin     = blobHeader + 12 + 16
	maxBlob     = 6144
	maxContext  = 8192
)

func (k *key) seal(plaintext []byte, ec map[string]string) []byte {
	out := make([]byte, blobHeader, blobHeader+12+len(plaintext)+16)
	out[0] = blobVersion
	copy(out[1:], k.id)
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plaintext, append(out[:blobHeader:blobHeader], canonical(ec)...))
}

// blobKeyID returns the key id a blob names, or "" for a malformed blob.
func blobKeyID(blob []byte) string {
	if len(blob) < blobMin || blob[0] != blobVersion {
		return ""
	}
	id := string(blob[1:blobHeader])
	if !keyIDRe.MatchString(id) {
		return ""
	}
	return id
}

func (k *key) open(blob []byte, ec map[string]string) ([]byte, bool) {
	aad := append(blob[:blobHeader:blobHeader], canonical(ec)...)
	pt, err := k.aead.Open(nil, blob[blobHeader:blobHeader+12], blob[blobHeader+12:], aad)
	return pt, err == nil
}

// canonical encodes an encryption context independently of map order: the
// pair count, then each pair sorted by key, every string length-prefixed.
// A missing and an empty context encode alike, as in the service.
func canonical(ec map[string]string) []byte {
	names := make([]string, 0, len(ec))
	for n := range ec {
		names = append(names, n)
	}
	sort.Strings(names)
	b := binary.AppendUvarint(nil, uint64(len(names)))
	for _, n := range names {
		b = binary.AppendUvarint(b, uint64(len(n)))
		b = append(b, n...)
		b = binary.AppendUvarint(b, uint64(len(ec[n])))
		b = append(b, ec[n]...)
	}
	return b
}

func contextSize(ec map[string]string) int {
	n := 0
	for k, v := range ec {
		n += len(k) + len(v)
	}
	return n
}
