package managed

import (
	"crypto/rand"
	"encoding/binary"
)

// SaltSize is the size of a key's salt.
const SaltSize = 32

// NewSalt draws a key's salt from crypto/rand.
func NewSalt() []byte {
	s := make([]byte, SaltSize)
	_, _ = rand.Read(s)
	return s
}

// Domain names what a byte string binds a key version to. Each domain has
// two labels: the legacy one, for keys made before salts, and the salted
// one. (The AAD of data keys wrapped under material, "keybroker/v1/dek"
// and "keybroker/v2/dek", is package envelope's.) No label is a prefix of another followed by a zero byte, so inputs
// of different domains never coincide.
type Domain struct{ legacy, salted string }

// The domains.
var (
	// DomainMaterial is the PRF input of derive-mode material.
	DomainMaterial = Domain{"keybroker/v1/material", "keybroker/v2/material"}
	// DomainWrap is the AAD of wrap-mode material wrapped by its root.
	DomainWrap = Domain{"keybroker/v1/wrap", "keybroker/v2/wrap"}
	// DomainBackendDataKey is the AAD of a data key wrapped by the root
	// of a backend-mode key.
	DomainBackendDataKey = Domain{"keybroker/v1/backend-dek", "keybroker/v2/backend-dek"}
	// DomainBackendMAC prefixes the message of a backend-mode MAC. Legacy
	// keys have no prefix: their MAC is the root's HMAC of the message.
	DomainBackendMAC = Domain{"", "keybroker/v2/backend-mac"}
)

// VersionInput is label ‖ 0 ‖ key id ‖ 0 ‖ u32 version: the legacy
// encoding of a Domain for keys without a salt.
func VersionInput(label, keyID string, version uint32) []byte {
	b := append([]byte(label), 0)
	b = append(b, keyID...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, version)
}

// SaltedInput is label ‖ 0 ‖ salt ‖ key id ‖ 0 ‖ u32 version. The
// encoding is injective: the label ends at its first zero byte (labels
// hold none), the salt is of fixed size, and the key id ends at the next
// zero byte (ids hold none).
func SaltedInput(label string, salt []byte, keyID string, version uint32) []byte {
	b := append([]byte(label), 0)
	b = append(b, salt...)
	b = append(b, keyID...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, version)
}

// Input binds version v of k in domain d: the salted input when k has a
// salt, else the legacy one (nil for a domain with no legacy label).
func (k *Key) Input(d Domain, v uint32) []byte {
	if len(k.Salt) == 0 {
		if d.legacy == "" {
			return nil
		}
		return VersionInput(d.legacy, k.ID, v)
	}
	return SaltedInput(d.salted, k.Salt, k.ID, v)
}

// BackendMACInput is what the root of a backend-mode HMAC key computes
// the MAC of: Input(DomainBackendMAC, v) ‖ msg, so that no message makes
// it compute another key's derive input or any other keybroker input;
// the message itself for legacy keys.
func (k *Key) BackendMACInput(v uint32, msg []byte) []byte {
	return append(k.Input(DomainBackendMAC, v), msg...)
}

// Incarnation names this incarnation of the key in cache keys: the salt's
// bytes as a string ("" for legacy keys), so that nothing cached for a
// deleted key is served to a key created again under its id. It is not
// for printing.
func (k *Key) Incarnation() string { return string(k.Salt) }
