// Package sealed carries managed-key material from the central tier to an
// edge: sealed to the edge's public key with HPKE (RFC 9180, crypto/hpke),
// bound to the edge, the key and the version, so that the sealed form may
// travel over the network and rest on the edge's disk while the plaintext
// exists only in the edge's memory.
//
// # Suite
//
// New keys use the hybrid post-quantum KEM MLKEM768-X25519 with
// HKDF-SHA256 and AES-256-GCM: sealed material can sit on an edge's disk
// for as long as the key lives, so it should not be readable by whoever
// records it now and builds a quantum computer later. The suite is named in
// every sealed blob and in the public key's encoding, so suites can change
// without breaking what is stored.
//
// # Format
//
//	0x01                    format
//	u16 KEM, u16 KDF, u16 AEAD  the HPKE suite ids
//	rest                    HPKE single-shot Seal output (enc ‖ ciphertext)
//
// The HPKE info string is "keybroker/v1/sealed-material" ‖ 0 ‖ edge id ‖ 0
// ‖ key id ‖ 0 ‖ u32 version, so a blob sealed for one edge, key or version
// opens for no other.
//
// An AWS access key's SigV4 signing key, given to an edge the key is
// scoped to (SealSigningKey), is sealed the same way under an info string
// of its own domain: "keybroker/v1/sealed-signing-key" ‖ 0 ‖ edge id ‖ 0 ‖
// access key id ‖ 0 ‖ date ‖ 0 ‖ region ‖ 0 ‖ service. No sealed material
// opens as a signing key nor the reverse, and a signing key opens only for
// its edge, access key and scope.
//
// # Cost
//
// Each Seal is a fresh HPKE encapsulation — an ephemeral X25519 key, one
// X25519 exchange and an ML-KEM-768 encapsulation — and that is what a
// sealed blob costs: a blob shares no secret with any other. Parsing the
// edge's public key (for ML-KEM, expanding its matrix from the seed) is
// not part of that; Seal keeps the parsed keys of the last few edges it
// sealed to, so an edge's snapshot of N keys parses its key once, not N
// times.
package sealed

import (
	"crypto/hpke"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/keybroker/keybroker/secret"
)

const formatV1 = 0x01

// Errors.
var (
	ErrMalformed = errors.New("sealed: malformed sealed material")
	ErrOpen      = errors.New("sealed: does not open (another edge, key or version, or tampered)")
)

// The default suite: MLKEM768-X25519, HKDF-SHA256, AES-256-GCM.
func defaultSuite() (hpke.KEM, hpke.KDF, hpke.AEAD) {
	return hpke.MLKEM768X25519(), hpke.HKDFSHA256(), hpke.AES256GCM()
}

// PrivateKey is an edge's sealing key. Its bytes are secret.
type PrivateKey struct {
	k hpke.PrivateKey
}

// GenerateKey makes a new sealing key with the default suite.
func GenerateKey() (*PrivateKey, error) {
	kem, _, _ := defaultSuite()
	k, err := kem.GenerateKey()
	if err != nil {
		return nil, err
	}
	return &PrivateKey{k: k}, nil
}

// PublicKey returns the encoded public key to register with the central
// tier: u16 KEM id ‖ the KEM's serialised public key.
func (p *PrivateKey) PublicKey() []byte {
	pub := p.k.PublicKey()
	return append(binary.BigEndian.AppendUint16(nil, pub.KEM().ID()), pub.Bytes()...)
}

// Marshal returns the private key for storage (u16 KEM id ‖ RFC 9180
// serialisation) as a secret; whoever stores it must protect it like the
// material it opens.
func (p *PrivateKey) Marshal() (*secret.Bytes, error) {
	b, err := p.k.Bytes()
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), p.k.KEM().ID())
	out = append(out, b...)
	clear(b)
	return secret.New(out), nil
}

// ParsePrivateKey reads a key written by Marshal.
func ParsePrivateKey(b []byte) (*PrivateKey, error) {
	if len(b) < 3 {
		return nil, errors.New("sealed: private key too short")
	}
	kem, err := hpke.NewKEM(binary.BigEndian.Uint16(b))
	if err != nil {
		return nil, fmt.Errorf("sealed: private key: %w", err)
	}
	k, err := kem.NewPrivateKey(b[2:])
	if err != nil {
		return nil, fmt.Errorf("sealed: private key: %w", err)
	}
	return &PrivateKey{k: k}, nil
}

// ParsePublicKey reads a public key from PrivateKey.PublicKey.
func ParsePublicKey(b []byte) (hpke.PublicKey, error) {
	if len(b) < 3 {
		return nil, errors.New("sealed: public key too short")
	}
	kem, err := hpke.NewKEM(binary.BigEndian.Uint16(b))
	if err != nil {
		return nil, fmt.Errorf("sealed: public key: %w", err)
	}
	pub, err := kem.NewPublicKey(b[2:])
	if err != nil {
		return nil, fmt.Errorf("sealed: public key: %w", err)
	}
	return pub, nil
}

// maxRecipients bounds the parsed public keys Seal keeps: one per edge
// sealed to recently (an ML-KEM-768 key with its expanded matrix is about
// 6 KB), emptied when full.
const maxRecipients = 256

// recipients holds the public keys Seal has parsed, by their encoding. A
// parsed key is read-only (hpke.Seal only reads it), so one may serve
// concurrent calls; the encoding determines it, so a hit is the key a parse
// would return. Keys that do not parse are not kept.
var recipients = struct {
	sync.Mutex
	m map[string]hpke.PublicKey
}{m: map[string]hpke.PublicKey{}}

// recipient returns the parsed public key b, parsing it on first use.
func recipient(b []byte) (hpke.PublicKey, error) {
	recipients.Lock()
	pub, ok := recipients.m[string(b)]
	recipients.Unlock()
	if ok {
		return pub, nil
	}
	pub, err := ParsePublicKey(b)
	if err != nil {
		return nil, err
	}
	recipients.Lock()
	if len(recipients.m) >= maxRecipients {
		clear(recipients.m)
	}
	recipients.m[string(b)] = pub
	recipients.Unlock()
	return pub, nil
}

// Info is the HPKE info string binding a sealed blob to its edge, key and
// version.
func Info(edgeID, keyID string, version uint32) []byte {
	b := append([]byte("keybroker/v1/sealed-material\x00"), edgeID...)
	b = append(b, 0)
	b = append(b, keyID...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, version)
}

// Seal seals material to an edge's public key (as PrivateKey.PublicKey
// encodes it) for one key version. The parsed key is kept for the next
// Seal to the same edge (see Cost in the package doc).
func Seal(edgePublicKey []byte, edgeID, keyID string, version uint32, material *secret.Bytes) ([]byte, error) {
	return seal(edgePublicKey, Info(edgeID, keyID, version), material)
}

func seal(edgePublicKey, info []byte, material *secret.Bytes) ([]byte, error) {
	pub, err := recipient(edgePublicKey)
	if err != nil {
		return nil, err
	}
	_, kdf, aead := defaultSuite()
	ct, err := hpke.Seal(pub, kdf, aead, info, material.Reveal())
	if err != nil {
		return nil, fmt.Errorf("sealed: %w", err)
	}
	out := []byte{formatV1}
	out = binary.BigEndian.AppendUint16(out, pub.KEM().ID())
	out = binary.BigEndian.AppendUint16(out, kdf.ID())
	out = binary.BigEndian.AppendUint16(out, aead.ID())
	return append(out, ct...), nil
}

// Open opens a sealed blob with the edge's private key.
func Open(p *PrivateKey, blob []byte, edgeID, keyID string, version uint32) (*secret.Bytes, error) {
	return open(p, blob, Info(edgeID, keyID, version))
}

func open(p *PrivateKey, blob, info []byte) (*secret.Bytes, error) {
	if len(blob) < 8 || blob[0] != formatV1 {
		return nil, ErrMalformed
	}
	kemID, kdfID, aeadID := binary.BigEndian.Uint16(blob[1:]), binary.BigEndian.Uint16(blob[3:]), binary.BigEndian.Uint16(blob[5:])
	if kemID != p.k.KEM().ID() {
		return nil, fmt.Errorf("%w: sealed with KEM 0x%04x, this key is 0x%04x", ErrOpen, kemID, p.k.KEM().ID())
	}
	kdf, err := hpke.NewKDF(kdfID)
	if err != nil {
		return nil, ErrMalformed
	}
	aead, err := hpke.NewAEAD(aeadID)
	if err != nil {
		return nil, ErrMalformed
	}
	pt, err := hpke.Open(p.k, kdf, aead, info, blob[7:])
	if err != nil {
		return nil, ErrOpen
	}
	return secret.New(pt), nil
}

// SigningScope names a sealed SigV4 signing key: the access key and the
// credential scope it signs for.
type SigningScope struct {
	AccessKeyID, Date, Region, Service string
}

// signingInfo is the HPKE info string of a sealed signing key.
func signingInfo(edgeID string, s SigningScope) []byte {
	b := []byte("keybroker/v1/sealed-signing-key\x00")
	for i, part := range []string{edgeID, s.AccessKeyID, s.Date, s.Region, s.Service} {
		if i > 0 {
			b = append(b, 0)
		}
		b = append(b, part...)
	}
	return b
}

// SealSigningKey seals an access key's signing key for scope to an edge's
// public key.
func SealSigningKey(edgePublicKey []byte, edgeID string, scope SigningScope, key *secret.Bytes) ([]byte, error) {
	return seal(edgePublicKey, signingInfo(edgeID, scope), key)
}

// OpenSigningKey opens a blob SealSigningKey made for this edge and scope.
func OpenSigningKey(p *PrivateKey, blob []byte, edgeID string, scope SigningScope) (*secret.Bytes, error) {
	return open(p, blob, signingInfo(edgeID, scope))
}
