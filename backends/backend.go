// Package backends defines the roots of trust that keybroker's central tier
// builds on: PKCS#11 HSMs, AWS KMS, GCP Cloud KMS and the software keystore.
//
// A root key lives inside a backend and never leaves it. The central tier asks
// the backend to encrypt (wrap) and decrypt (unwrap) managed-key material, to
// compute HMAC-SHA256 as the PRF that derives material, to sign, and to
// produce randomness. Nothing in this package, or in any backend, returns a
// root key.
//
// # Interfaces
//
// [Backend] is what every root of trust does. The optional capabilities —
// [MACer], [Signer], [KeyCreator], [DataKeyGenerator], [HealthChecker] — are separate interfaces
// found by type assertion; [CapabilitiesOf] lists what a backend offers.
// Every method that does I/O takes a context first; deadlines come from the
// caller. A backend whose calls cannot be interrupted once started (PKCS#11)
// checks the context before each call and documents it.
//
// Key arguments name a key inside the backend, in the backend's own terms:
// a softkms key name, a PKCS#11 object label, an AWS key id, ARN or alias, a
// GCP CryptoKey or CryptoKeyVersion resource name. [ParseKeyURI] splits a full
// key URI into the backend part, opened once with [Registry.Open], and the key
// name passed to each call.
//
// # Instrumentation
//
// [Instrument] is the one decorator every root of trust is used behind: it
// checks each call's arguments against the limits below ([CheckEncrypt] and
// the other Check* functions) before the backend sees them, admits the call
// (the central tier charges the caller's budget), counts it, notes it in the
// request's audit line ("name:op", see [WithOp]), times it and records its
// outcome in [Metrics]. Backends do not repeat the checks: a backend's own
// methods assume checked arguments, so open backends through a registry
// whose open functions are wrapped with [InstrumentOpen] (central.Backends
// is) or wrap them with Instrument, as broker.Roots does. The decorated
// value implements exactly the optional interfaces the backend does.
//
// # Errors
//
// Every error a backend returns is an [*Error] naming the backend, operation
// and key, classified by one of the sentinels ([ErrNotFound],
// [ErrPermissionDenied], [ErrInvalidArgument], [ErrDecryptionFailed],
// [ErrDisabled], [ErrThrottled], [ErrUnavailable], [ErrUnsupported]), with the
// underlying cause (a pkcs11.Error, a smithy API error, a gRPC status)
// reachable through errors.As. [CodeOf] maps any error to the closed set of
// [Code] values used on the wire and as a metric label.
//
// # URIs
//
// Backends and keys are named by URIs, one strict parser per scheme: RFC 7512
// for pkcs11:, and "scheme:name;attr=value;..." for awskms:, gcpkms: and
// softkms:. Unknown attributes are errors, values are never case-folded, and
// PINs are only read from files.
package backends

import (
	"context"
	"crypto"

	"github.com/keybroker/keybroker/secret"
)

// MaxEncryptInput is the largest plaintext any root of trust accepts for
// Encrypt: the smallest service limit among the backends (AWS KMS, 4 KiB).
// Backends refuse larger inputs with ErrInvalidArgument so behaviour does
// not depend on which root of trust is configured. What a root encrypts is
// key material and data keys, never a caller's message: a request's
// plaintext is bounded by managed.MaxPlaintext, one sealed message by
// envelope.MaxMessage.
const MaxEncryptInput = 4096

// MaxAAD is the largest additional authenticated data accepted by Encrypt and
// Decrypt.
const MaxAAD = 4096

// MaxCiphertext is the largest ciphertext accepted by Decrypt.
const MaxCiphertext = 8192

// MaxMACInput is the largest message accepted by MAC and VerifyMAC, and the
// largest Ed25519 message Sign accepts: AWS KMS's GenerateMac limit, the
// smallest among the backends.
const MaxMACInput = 4096

// MaxRandom is the largest GenerateRandom request (AWS and GCP both cap at
// 1024 bytes).
const MaxRandom = 1024

// Algorithm is the kind of a root key.
type Algorithm string

// Root-key algorithms.
const (
	AES256    Algorithm = "aes-256"    // AES-256-GCM encrypt/decrypt
	HMAC256   Algorithm = "hmac-256"   // HMAC-SHA256
	ECDSAP256 Algorithm = "ecdsa-p256" // ECDSA P-256 over SHA-256
	Ed25519   Algorithm = "ed25519"    // pure Ed25519
)

// Valid reports whether a is a known algorithm.
func (a Algorithm) Valid() bool {
	switch a {
	case AES256, HMAC256, ECDSAP256, Ed25519:
		return true
	}
	return false
}

// KeyInfo describes a root key.
type KeyInfo struct {
	// Key is the key's name inside the backend, as later calls take it.
	Key string
	// Algorithm is what the key does.
	Algorithm Algorithm
	// Enabled is false when the backend refuses to use the key.
	Enabled bool
}

// Backend is a root of trust. Implementations are safe for concurrent use.
type Backend interface {
	// Encrypt seals plaintext (1 to MaxEncryptInput bytes; AWS KMS refuses an
	// empty one, so every backend does) under an aes-256 root key, binding
	// aad. The result is opaque and only Decrypt with the
	// same key and aad opens it.
	Encrypt(ctx context.Context, key string, plaintext, aad []byte) ([]byte, error)
	// Decrypt opens a ciphertext from Encrypt. A wrong aad, a tampered or
	// foreign ciphertext gives ErrDecryptionFailed.
	Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (*secret.Bytes, error)
	// GenerateRandom returns n (1..MaxRandom) bytes from the backend's RNG.
	GenerateRandom(ctx context.Context, n int) ([]byte, error)
	// Describe reports a key's algorithm and state; ErrNotFound if unknown.
	Describe(ctx context.Context, key string) (KeyInfo, error)
	// Close releases the backend's resources. Calls after Close fail.
	Close() error
}

// MACer computes HMAC-SHA256 inside the backend. It is the PRF from which
// keybroker derives managed-key material, so the output is a secret.
type MACer interface {
	// MAC returns HMAC-SHA256(key, data); data is 1 to MaxMACInput bytes.
	MAC(ctx context.Context, key string, data []byte) (*secret.Bytes, error)
	// VerifyMAC checks a tag in constant time; a mismatch is
	// ErrDecryptionFailed.
	VerifyMAC(ctx context.Context, key string, data, tag []byte) error
}

// Signer signs with an asymmetric key held by the backend.
type Signer interface {
	// Sign signs a digest: the SHA-256 of the message for ecdsa-p256 keys
	// (result ASN.1 DER), the message itself for ed25519 keys.
	Sign(ctx context.Context, key string, digest []byte) ([]byte, error)
	// PublicKey returns the key's public half (*ecdsa.PublicKey or
	// ed25519.PublicKey).
	PublicKey(ctx context.Context, key string) (crypto.PublicKey, error)
}

// KeyCreator creates root keys inside the backend. Created keys are
// sensitive and never extractable.
type KeyCreator interface {
	// CreateKey creates a key of the given algorithm. name is a hint (a
	// label, an alias, a CryptoKey id); the returned KeyInfo.Key is the name
	// to use afterwards. An existing name is ErrInvalidArgument.
	CreateKey(ctx context.Context, name string, alg Algorithm) (KeyInfo, error)
}

// DataKeyGenerator produces a fresh 256-bit data key and its wrapped form in
// one call (AWS GenerateDataKey). The wrapped form opens with Decrypt under
// the same key and aad.
type DataKeyGenerator interface {
	GenerateDataKey(ctx context.Context, key string, aad []byte) (dek *secret.Bytes, wrapped []byte, err error)
}

// HealthChecker reports whether the backend can serve requests now.
type HealthChecker interface {
	Health(ctx context.Context) error
}

// Capabilities lists the optional interfaces a backend implements and the
// algorithms it can create.
type Capabilities struct {
	MAC     bool
	Sign    bool
	DataKey bool
	Create  bool
	Health  bool
	Creates []Algorithm // algorithms CreateKey accepts, when Create
}

// CreatesAlgorithms is implemented by a KeyCreator that wants to say which
// algorithms CreateKey accepts.
type CreatesAlgorithms interface {
	CreatableAlgorithms() []Algorithm
}

// CapabilitiesOf reports which capability interfaces b implements.
func CapabilitiesOf(b Backend) Capabilities {
	var c Capabilities
	_, c.MAC = b.(MACer)
	_, c.Sign = b.(Signer)
	_, c.DataKey = b.(DataKeyGenerator)
	_, c.Create = b.(KeyCreator)
	_, c.Health = b.(HealthChecker)
	if ca, ok := b.(CreatesAlgorithms); ok && c.Create {
		c.Creates = ca.CreatableAlgorithms()
	}
	return c
}
