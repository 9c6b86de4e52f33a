package envelope

import (
	"crypto/rand"
	"fmt"

	"github.com/keybroker/keybroker/secret"
)

// WrapDataKey wraps a 32-byte data key under kek as a ciphertext header
// carries it (a fresh random nonce each call): what GenerateDataKey hands a
// client so that it can seal ciphertexts any node opens. It is for keys
// without a salt; see WrapDataKeyWithSalt.
func WrapDataKey(kek *secret.Bytes, keyID string, version uint32, dek []byte) ([]byte, error) {
	return WrapDataKeyWithSalt(kek, keyID, version, nil, dek)
}

// WrapDataKeyWithSalt is WrapDataKey for a key with a salt, which enters
// the AAD.
func WrapDataKeyWithSalt(kek *secret.Bytes, keyID string, version uint32, salt, dek []byte) ([]byte, error) {
	if len(dek) != DEKSize {
		return nil, fmt.Errorf("envelope: data key is %d bytes, want %d", len(dek), DEKSize)
	}
	if !ValidKeyID(keyID) || version == 0 {
		return nil, fmt.Errorf("envelope: invalid key id %q or version %d", keyID, version)
	}
	a, err := newGCM(kek.Reveal())
	if err != nil {
		return nil, fmt.Errorf("envelope: KEK: %w", err)
	}
	nonce := make([]byte, NonceSize, WrappedDEKLen)
	_, _ = rand.Read(nonce)
	return a.Seal(nonce, nonce, dek, dekAAD(keyID, version, salt)), nil
}

// NewDataKeyHeader returns the header fields that name a data key — key
// id, version and wrapped data key — checked as ParseHeader checks them,
// for a caller that has them apart from a ciphertext (DecryptDataKey).
// Nonce is nil: the header cannot open a message, only find its data key.
func NewDataKeyHeader(keyID string, version uint32, wrapped []byte) (*Header, error) {
	switch {
	case !ValidKeyID(keyID):
		return nil, malformed("invalid key id")
	case version == 0:
		return nil, malformed("version 0")
	case len(wrapped) < WrappedDEKLen || len(wrapped) > MaxWrappedDEK:
		return nil, malformed("wrapped key is %d bytes, want %d to %d", len(wrapped), WrappedDEKLen, MaxWrappedDEK)
	}
	return &Header{KeyID: keyID, Version: version, WrappedDEK: wrapped}, nil
}
