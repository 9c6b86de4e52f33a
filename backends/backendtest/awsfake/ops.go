package awsfake

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

type handler func(f *Fake, body []byte) (any, *apiError)

var handlers = map[string]handler{
	"CreateKey":           op(createKey),
	"CreateAlias":         op(createAlias),
	"DescribeKey":         op(describeKey),
	"ListKeys":            op(listKeys),
	"EnableKey":           op(enableKey),
	"DisableKey":          op(disableKey),
	"ScheduleKeyDeletion": op(scheduleKeyDeletion),
	"CancelKeyDeletion":   op(cancelKeyDeletion),
	"Encrypt":             op(encrypt),
	"Decrypt":             op(decrypt),
	"GenerateDataKey":     op(generateDataKey),
	"GenerateMac":         op(generateMac),
	"VerifyMac":           op(verifyMac),
	"Sign":                op(sign),
	"GetPublicKey":        op(getPublicKey),
	"GenerateRandom":      op(generateRandom),
}

// op adapts a typed handler: it decodes the JSON request, refuses DryRun
// (the fake does not model permissions) and answers SerializationException
// for a body that is not the operation's input.
func op[In any](fn func(f *Fake, in *In) (any, *apiError)) handler {
	return func(f *Fake, body []byte) (any, *apiError) {
		in := new(In)
		if err := json.Unmarshal(body, in); err != nil {
			return nil, errorf("SerializationException", "cannot decode the request: %v", err)
		}
		var dry struct{ DryRun bool }
		_ = json.Unmarshal(body, &dry)
		if dry.DryRun {
			return nil, errorf("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
		}
		return fn(f, in)
	}
}

func lengthError(field string, n, lo, hi int) *apiError {
	if n < lo {
		return errorf("ValidationException", "1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have length greater than or equal to %d", field, lo)
	}
	return errorf("ValidationException", "1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have length less than or equal to %d", field, hi)
}

type createKeyIn struct {
	KeySpec               string
	CustomerMasterKeySpec string
	KeyUsage              string
	Description           string
	Origin                string
	MultiRegion           bool
}

func createKey(f *Fake, in *createKeyIn) (any, *apiError) {
	spec := in.KeySpec
	switch {
	case spec != "" && in.CustomerMasterKeySpec != "":
		return nil, errorf("ValidationException", "You cannot specify KeySpec and CustomerMasterKeySpec in the same request.")
	case spec == "":
		spec = cmp.Or(in.CustomerMasterKeySpec, SymmetricDefault)
	}
	switch {
	case in.Origin != "" && in.Origin != "AWS_KMS":
		return nil, errorf("UnsupportedOperationException", "the fake only implements Origin AWS_KMS")
	case in.MultiRegion:
		return nil, errorf("UnsupportedOperationException", "the fake does not implement multi-Region keys")
	case len(in.Description) > 8192:
		return nil, lengthError("description", len(in.Description), 0, 8192)
	}
	k, aerr := newKey(spec, cmp.Or(in.KeyUsage, usageEncrypt), in.Description)
	if aerr != nil {
		return nil, aerr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[k.id] = k
	return struct{ KeyMetadata metadata }{k.metadata()}, nil
}

type createAliasIn struct {
	AliasName   string
	TargetKeyId string
}

func createAlias(f *Fake, in *createAliasIn) (any, *apiError) {
	switch {
	case !aliasRe.MatchString(in.AliasName):
		return nil, errorf("ValidationException", "Alias must start with the prefix \"alias/\" and contain only alphanumeric characters, '/', '_', '-' or ':'.")
	case strings.HasPrefix(in.AliasName, "alias/aws/"):
		return nil, errorf("NotAuthorizedException", "Cannot create alias with prefix 'alias/aws/'")
	case strings.HasPrefix(in.TargetKeyId, "alias/") || strings.HasPrefix(in.TargetKeyId, arnPrefix+"alias/"):
		return nil, errorf("ValidationException", "TargetKeyId must be a key id or key ARN, not an alias")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k, aerr := f.resolve(in.TargetKeyId)
	if aerr != nil {
		return nil, aerr
	}
	if k.state == statePendingDeletion {
		return nil, errorf("KMSInvalidStateException", "%s is pending deletion.", k.arn)
	}
	if _, dup := f.aliases[in.AliasName]; dup {
		return nil, errorf("AlreadyExistsException", "An alias with the name %s%s already exists", arnPrefix, in.AliasName)
	}
	f.aliases[in.AliasName] = k.id
	return struct{}{}, nil
}

type keyIDIn struct {
	KeyId string
}

func describeKey(f *Fake, in *keyIDIn) (any, *apiError) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, aerr := f.resolve(in.KeyId)
	if aerr != nil {
		return nil, aerr
	}
	return struct{ KeyMetadata metadata }{k.metadata()}, nil
}

type listKeysIn struct {
	Limit  int
	Marker string
}

func listKeys(f *Fake, in *listKeysIn) (any, *apiError) {
	limit := in.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit < 1 || limit > 1000:
		return nil, errorf("ValidationException", "Limit must be between 1 and 1000")
	}
	start := 0
	if in.Marker != "" {
		n, err := strconv.Atoi(in.Marker)
		if err != nil || n < 0 {
			return nil, errorf("InvalidMarkerException", "invalid marker %q", in.Marker)
		}
		start = n
	}
	ids := f.Keys()
	type entry struct{ KeyId, KeyArn string }
	out := struct {
		Keys       []entry
		NextMarker string `json:",omitempty"`
		Truncated  bool
	}{Keys: []entry{}}
	for i := start; i < len(ids) && len(out.Keys) < limit; i++ {
		out.Keys = append(out.Keys, entry{ids[i], ARN(ids[i])})
	}
	if end := start + len(out.Keys); end < len(ids) {
		out.NextMarker, out.Truncated = strconv.Itoa(end), true
	}
	return out, nil
}

// changeState applies a key-state transition under the write lock.
func (f *Fake) changeState(id string, change func(k *key) *apiError) (*key, *apiError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, aerr := f.resolve(id)
	if aerr != nil {
		return nil, aerr
	}
	return k, change(k)
}

func enableKey(f *Fake, in *keyIDIn) (any, *apiError) {
	_, aerr := f.changeState(in.KeyId, func(k *key) *apiError {
		if k.state == statePendingDeletion {
			return errorf("KMSInvalidStateException", "%s is pending deletion.", k.arn)
		}
		k.state = stateEnabled
		return nil
	})
	return struct{}{}, aerr
}

func disableKey(f *Fake, in *keyIDIn) (any, *apiError) {
	_, aerr := f.changeState(in.KeyId, func(k *key) *apiError {
		if k.state == statePendingDeletion {
			return errorf("KMSInvalidStateException", "%s is pending deletion.", k.arn)
		}
		k.state = stateDisabled
		return nil
	})
	return struct{}{}, aerr
}

type scheduleKeyDeletionIn struct {
	KeyId               string
	PendingWindowInDays int32
}

func scheduleKeyDeletion(f *Fake, in *scheduleKeyDeletionIn) (any, *apiError) {
	days := in.PendingWindowInDays
	if days == 0 {
		days = 30
	}
	if days < 7 || days > 30 {
		return nil, errorf("ValidationException", "PendingWindowInDays must be between 7 and 30")
	}
	k, aerr := f.changeState(in.KeyId, func(k *key) *apiError {
		if k.state == statePendingDeletion {
			return errorf("KMSInvalidStateException", "%s is pending deletion.", k.arn)
		}
		k.state, k.window = statePendingDeletion, days
		k.deletion = time.Now().Add(time.Duration(days) * 24 * time.Hour).Truncate(time.Millisecond)
		return nil
	})
	if aerr != nil {
		return nil, aerr
	}
	return struct {
		KeyId               string
		DeletionDate        float64
		KeyState            string
		PendingWindowInDays int32
	}{k.arn, epoch(k.deletion), statePendingDeletion, days}, nil
}

func cancelKeyDeletion(f *Fake, in *keyIDIn) (any, *apiError) {
	k, aerr := f.changeState(in.KeyId, func(k *key) *apiError {
		if k.state != statePendingDeletion {
			return errorf("KMSInvalidStateException", "%s is not pending deletion.", k.arn)
		}
		k.state = stateDisabled
		return nil
	})
	if aerr != nil {
		return nil, aerr
	}
	return struct{ KeyId string }{k.arn}, nil
}

type encryptIn struct {
	KeyId               string
	Plaintext           []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
}

func checkContext(ec map[string]string) *apiError {
	if contextSize(ec) > maxContext {
		return errorf("ValidationException", "Encryption context is larger than %d bytes", maxContext)
	}
	return nil
}

func checkSymmetricAlgorithm(k *key, alg string) *apiError {
	if alg != "" && alg != "SYMMETRIC_DEFAULT" {
		return errorf("InvalidKeyUsageException", "%s does not support EncryptionAlgorithm %s.", k.arn, alg)
	}
	return nil
}

func encrypt(f *Fake, in *encryptIn) (any, *apiError) {
	if n := len(in.Plaintext); n < 1 || n > maxMessage {
		return nil, lengthError("plaintext", n, 1, maxMessage)
	}
	if aerr := checkContext(in.EncryptionContext); aerr != nil {
		return nil, aerr
	}
	k, aerr := f.usableFor(in.KeyId, usageEncrypt, "Encrypt")
	if aerr != nil {
		return nil, aerr
	}
	if aerr := checkSymmetricAlgorithm(k, in.EncryptionAlgorithm); aerr != nil {
		return nil, aerr
	}
	return struct {
		CiphertextBlob      []byte
		KeyId               string
		EncryptionAlgorithm string
	}{k.seal(in.Plaintext, in.EncryptionContext), k.arn, "SYMMETRIC_DEFAULT"}, nil
}

type decryptIn struct {
	KeyId               string
	CiphertextBlob      []byte
	EncryptionContext   map[string]string
	EncryptionAlgorithm string
}

func decrypt(f *Fake, in *decryptIn) (any, *apiError) {
	if n := len(in.CiphertextBlob); n < 1 || n > maxBlob {
		return nil, lengthError("ciphertextBlob", n, 1, maxBlob)
	}
	if aerr := checkContext(in.EncryptionContext); aerr != nil {
		return nil, aerr
	}
	k, aerr := f.decryptKey(in.KeyId, in.CiphertextBlob)
	if aerr != nil {
		return nil, aerr
	}
	if aerr := checkSymmetricAlgorithm(k, in.EncryptionAlgorithm); aerr != nil {
		return nil, aerr
	}
	pt, ok := k.open(in.CiphertextBlob, in.EncryptionContext)
	if !ok {
		return nil, errorf("InvalidCiphertextException", "")
	}
	return struct {
		KeyId               string
		Plaintext           []byte
		EncryptionAlgorithm string
	}{k.arn, pt, "SYMMETRIC_DEFAULT"}, nil
}

// decryptKey finds the key that opens blob: an explicit KeyId must resolve
// and be the blob's key; without one the blob's own key is used.
func (f *Fake) decryptKey(keyID string, blob []byte) (*key, *apiError) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var want *key
	if keyID != "" {
		k, aerr := f.resolve(keyID)
		if aerr != nil {
			return nil, aerr
		}
		want = k
	}
	k := f.keys[blobKeyID(blob)]
	switch {
	case k == nil:
		return nil, errorf("InvalidCiphertextException", "")
	case want != nil && want != k:
		return nil, errorf("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
	}
	if aerr := k.usable(); aerr != nil {
		return nil, aerr
	}
	if k.usage != usageEncrypt {
		return nil, errorf("InvalidKeyUsageException", "%s key usage is %s which is not valid for Decrypt.", k.arn, k.usage)
	}
	return k, nil
}

type generateDataKeyIn struct {
	KeyId             string
	KeySpec           string
	NumberOfBytes     *int
	EncryptionContext map[string]string
}

func generateDataKey(f *Fake, in *generateDataKeyIn) (any, *apiError) {
	var n int
	switch {
	case in.KeySpec != "" && in.NumberOfBytes != nil:
		return nil, errorf("ValidationException", "Please specify either number of bytes or key spec.")
	case in.KeySpec == "AES_256":
		n = 32
	case in.KeySpec == "AES_128":
		n = 16
	case in.KeySpec != "":
		return nil, errorf("ValidationException", "1 validation error detected: Value '%s' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]", in.KeySpec)
	case in.NumberOfBytes == nil:
		return nil, errorf("ValidationException", "Please specify either number of bytes or key spec.")
	case *in.NumberOfBytes < 1 || *in.NumberOfBytes > 1024:
		return nil, errorf("ValidationException", "NumberOfBytes must be between 1 and 1024")
	default:
		n = *in.NumberOfBytes
	}
	if aerr := checkContext(in.EncryptionContext); aerr != nil {
		return nil, aerr
	}
	k, aerr := f.usableFor(in.KeyId, usageEncrypt, "GenerateDataKey")
	if aerr != nil {
		return nil, aerr
	}
	pt := make([]byte, n)
	_, _ = rand.Read(pt)
	return struct {
		CiphertextBlob []byte
		Plaintext      []byte
		KeyId          string
	}{k.seal(pt, in.EncryptionContext), pt, k.arn}, nil
}

type macIn struct {
	KeyId        string
	Message      []byte
	MacAlgorithm string
	Mac          []byte
}

func (f *Fake) macKey(in *macIn, what string) (*key, *apiError) {
	if n := len(in.Message); n < 1 || n > maxMessage {
		return nil, lengthError("message", n, 1, maxMessage)
	}
	if in.MacAlgorithm == "" {
		return nil, errorf("ValidationException", "1 validation error detected: Value null at 'macAlgorithm' failed to satisfy constraint: Member must not be null")
	}
	k, aerr := f.usableFor(in.KeyId, usageMAC, what)
	if aerr != nil {
		return nil, aerr
	}
	if in.MacAlgorithm != "HMAC_SHA_256" {
		return nil, errorf("InvalidKeyUsageException", "%s does not support MacAlgorithm %s.", k.arn, in.MacAlgorithm)
	}
	return k, nil
}

func (k *key) hmac(msg []byte) []byte {
	h := hmac.New(sha256.New, k.mac)
	h.Write(msg)
	return h.Sum(nil)
}

func generateMac(f *Fake, in *macIn) (any, *apiError) {
	k, aerr := f.macKey(in, "GenerateMac")
	if aerr != nil {
		return nil, aerr
	}
	return struct {
		Mac          []byte
		MacAlgorithm string
		KeyId        string
	}{k.hmac(in.Message), in.MacAlgorithm, k.arn}, nil
}

func verifyMac(f *Fake, in *macIn) (any, *apiError) {
	if n := len(in.Mac); n < 1 || n > 6144 {
		return nil, lengthError("mac", n, 1, 6144)
	}
	k, aerr := f.macKey(in, "VerifyMac")
	if aerr != nil {
		return nil, aerr
	}
	if !hmac.Equal(k.hmac(in.Message), in.Mac) {
		return nil, errorf("KMSInvalidMacException", "")
	}
	return struct {
		KeyId        string
		MacValid     bool
		MacAlgorithm string
	}{k.arn, true, in.MacAlgorithm}, nil
}

type signIn struct {
	KeyId            string
	Message          []byte
	MessageType      string
	SigningAlgorithm string
}

func sign(f *Fake, in *signIn) (any, *apiError) {
	if n := len(in.Message); n < 1 || n > maxMessage {
		return nil, lengthError("message", n, 1, maxMessage)
	}
	if in.SigningAlgorithm == "" {
		return nil, errorf("ValidationException", "1 validation error detected: Value null at 'signingAlgorithm' failed to satisfy constraint: Member must not be null")
	}
	k, aerr := f.usableFor(in.KeyId, usageSign, "Sign")
	if aerr != nil {
		return nil, aerr
	}
	if in.SigningAlgorithm != "ECDSA_SHA_256" {
		return nil, errorf("InvalidKeyUsageException", "%s does not support SigningAlgorithm %s.", k.arn, in.SigningAlgorithm)
	}
	var digest []byte
	switch in.MessageType {
	case "", "RAW":
		d := sha256.Sum256(in.Message)
		digest = d[:]
	case "DIGEST":
		if len(in.Message) != sha256.Size {
			return nil, errorf("ValidationException", "Digest is invalid length for algorithm ECDSA_SHA_256.")
		}
		digest = in.Message
	default:
		return nil, errorf("ValidationException", "1 validation error detected: Value '%s' at 'messageType' failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU]", in.MessageType)
	}
	sig, err := ecdsa.SignASN1(rand.Reader, k.priv, digest)
	if err != nil {
		return nil, &apiError{500, "KMSInternalException", err.Error()}
	}
	return struct {
		KeyId            string
		Signature        []byte
		SigningAlgorithm string
	}{k.arn, sig, in.SigningAlgorithm}, nil
}

func getPublicKey(f *Fake, in *keyIDIn) (any, *apiError) {
	f.mu.RLock()
	k, aerr := f.resolve(in.KeyId)
	if aerr == nil {
		aerr = k.usable()
	}
	f.mu.RUnlock()
	if aerr != nil {
		return nil, aerr
	}
	if k.priv == nil {
		return nil, errorf("UnsupportedOperationException", "%s is not an asymmetric KMS key; it has no public key.", k.arn)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.priv.PublicKey)
	if err != nil {
		return nil, &apiError{500, "KMSInternalException", err.Error()}
	}
	return struct {
		KeyId                 string
		PublicKey             []byte
		KeySpec               string
		CustomerMasterKeySpec string
		KeyUsage              string
		SigningAlgorithms     []string
	}{k.arn, der, k.spec, k.spec, k.usage, []string{"ECDSA_SHA_256"}}, nil
}

type generateRandomIn struct {
	NumberOfBytes    *int
	CustomKeyStoreId string
}

func generateRandom(f *Fake, in *generateRandomIn) (any, *apiError) {
	switch {
	case in.CustomKeyStoreId != "":
		return nil, errorf("CustomKeyStoreNotFoundException", "the fake has no custom key stores")
	case in.NumberOfBytes == nil:
		return nil, errorf("ValidationException", "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null")
	case *in.NumberOfBytes < 1 || *in.NumberOfBytes > 1024:
		return nil, errorf("ValidationException", "1 validation error detected: Value '%d' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024", *in.NumberOfBytes)
	}
	b := make([]byte, *in.NumberOfBytes)
	_, _ = rand.Read(b)
	return struct{ Plaintext []byte }{b}, nil
}
