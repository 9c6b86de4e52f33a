package managed

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The XKS operations: AES-256-GCM as the AWS External Key Store proxy API
// (package xks) defines it, performed with a subkey of a key version.
//
// An XKS ciphertext is not keybroker's envelope: AWS KMS keeps the pieces
// (IV, ciphertext, tag, ciphertextMetadata) and sends them back. The
// cipher key is never a version's raw material but
// HKDF-SHA256(material, info Input(DomainXKS, v)), so nothing computed for
// XKS can be turned against the key's other uses. The version is carried
// in the ciphertextMetadata (XKSMetadata), so a decrypt after a rotation
// opens with the version that sealed.

// DomainXKS is the HKDF info of a key version's XKS subkey.
var DomainXKS = Domain{"keybroker/v1/xks", "keybroker/v2/xks"}

// The sizes of XKS's AES-GCM.
const (
	XKSIVSize  = 12
	XKSTagSize = 16
	// MaxXKSPlaintext bounds an XKS plaintext: the spec asks for at
	// least 4300 bytes.
	MaxXKSPlaintext = 64 << 10
	// MaxXKSAAD bounds the additional authenticated data: the spec asks
	// for at least 8192 bytes and the AAD's length is 2 bytes.
	MaxXKSAAD = 1<<16 - 1
	// xksMetadataVersion is the first byte of keybroker's
	// ciphertextMetadata: 1, then the key version (u32, big-endian).
	xksMetadataVersion = 1
	xksMetadataSize    = 5
)

// ErrXKSKeyUsage is wrapped in the refusal of an XKS operation on a key
// that has no XKS subkey: not an AES key, or a backend-mode one.
var ErrXKSKeyUsage = errors.New("XKS needs a derive- or wrap-mode AES-256 key")

// XKSMetadata is the ciphertextMetadata naming version v.
func XKSMetadata(v uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{xksMetadataVersion}, v)
}

// ParseXKSMetadata is the key version a ciphertextMetadata names; anything
// else is an ErrInvalidArgument wrapping ErrBadCiphertext.
func ParseXKSMetadata(md []byte) (uint32, error) {
	if len(md) != xksMetadataSize || md[0] != xksMetadataVersion {
		return 0, &Error{Kind: ErrInvalidArgument, Op: "XKSDecrypt", Err: fmt.Errorf("%w: the ciphertextMetadata is not keybroker's", ErrBadCiphertext)}
	}
	v := binary.BigEndian.Uint32(md[1:])
	if v == 0 {
		return 0, &Error{Kind: ErrInvalidArgument, Op: "XKSDecrypt", Err: fmt.Errorf("%w: the ciphertextMetadata names version 0", ErrBadCiphertext)}
	}
	return v, nil
}

// XKSAAD is the AAD the spec feeds AES-GCM: the AAD's length (2 bytes,
// big-endian), the AAD, the metadata's length (1 byte), the metadata.
func XKSAAD(aad, metadata []byte) ([]byte, error) {
	if len(aad) > MaxXKSAAD || len(metadata) > 255 {
		return nil, Errorf(ErrInvalidArgument, "the AAD (%d bytes) or metadata (%d bytes) is too long", len(aad), len(metadata))
	}
	b := make([]byte, 0, 3+len(aad)+len(metadata))
	b = binary.BigEndian.AppendUint16(b, uint16(len(aad)))
	b = append(b, aad...)
	b = append(b, byte(len(metadata)))
	return append(b, metadata...), nil
}

// XKSSealed is an XKS encryption's result.
type XKSSealed struct {
	// Key and Version are what sealed.
	Key     *Key
	Version uint32
	// Metadata is the ciphertextMetadata (XKSMetadata(Version)).
	Metadata            []byte
	IV, Ciphertext, Tag []byte
}

// XKSOperations are the XKS operations a node may perform; Ops does.
type XKSOperations interface {
	XKSEncrypt(ctx context.Context, k *Key, plaintext, aad []byte) (XKSSealed, error)
	XKSDecrypt(ctx context.Context, k *Key, v uint32, aad, metadata, iv, ciphertext, tag []byte) (Decrypted, error)
}

var _ XKSOperations = (*Ops)(nil)

// xksAEAD is the AES-GCM of version v of k's XKS subkey. Only keys whose
// material this node holds (derive and wrap mode) have one: a
// backend-mode key's root of trust has no operation to derive it.
func (o *Ops) xksAEAD(ctx context.Context, k *Key, v uint32) (cipher.AEAD, error) {
	bm, ok := o.byMaterial.(byMaterial)
	if !ok || !k.Mode.HoldsMaterial() {
		return nil, &Error{Kind: ErrInvalidArgument, Op: "XKS", Key: k.ID, Err: fmt.Errorf("%w: key %q is a backend-mode key", ErrXKSKeyUsage, k.ID)}
	}
	m, err := bm.mat.Material(ctx, k, v)
	if err != nil {
		return nil, err
	}
	defer m.Destroy()
	info := k.Input(DomainXKS, v)
	sub, err := hkdf.Key(sha256.New, m.Reveal(), nil, string(info), 32)
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func checkXKSInput(op string, k *Key, text, aad []byte) error {
	if len(text) > MaxXKSPlaintext {
		return &Error{Kind: ErrInvalidArgument, Op: op, Key: k.ID, Err: fmt.Errorf("the plaintext is %d bytes; at most %d", len(text), MaxXKSPlaintext)}
	}
	if len(aad) > MaxXKSAAD {
		return &Error{Kind: ErrInvalidArgument, Op: op, Key: k.ID, Err: fmt.Errorf("the AAD is %d bytes; at most %d", len(aad), MaxXKSAAD)}
	}
	return nil
}

// XKSEncrypt seals plaintext with the primary version of k under a random
// 12-byte IV, authenticating XKSAAD(aad, XKSMetadata(version)).
func (o *Ops) XKSEncrypt(ctx context.Context, k *Key, plaintext, aad []byte) (XKSSealed, error) {
	if err := checkXKSInput("XKSEncrypt", k, plaintext, aad); err != nil {
		return XKSSealed{}, err
	}
	v := k.Primary
	aead, err := o.xksAEAD(ctx, k, v)
	if err != nil {
		return XKSSealed{}, err
	}
	md := XKSMetadata(v)
	full, err := XKSAAD(aad, md)
	if err != nil {
		return XKSSealed{}, err
	}
	iv := make([]byte, XKSIVSize)
	if _, err := rand.Read(iv); err != nil {
		return XKSSealed{}, err
	}
	sealed := aead.Seal(nil, iv, plaintext, full)
	n := len(sealed) - XKSTagSize
	return XKSSealed{Key: k, Version: v, Metadata: md, IV: iv, Ciphertext: sealed[:n:n], Tag: sealed[n:]}, nil
}

// XKSDecrypt opens what XKSEncrypt sealed with version v of k (the
// version ParseXKSMetadata(metadata) names; the caller checked it). An
// IV, tag or ciphertext that does not open is an ErrInvalidArgument
// wrapping ErrBadCiphertext.
func (o *Ops) XKSDecrypt(ctx context.Context, k *Key, v uint32, aad, metadata, iv, ciphertext, tag []byte) (Decrypted, error) {
	if err := checkXKSInput("XKSDecrypt", k, ciphertext, aad); err != nil {
		return Decrypted{}, err
	}
	bad := func(why string) error {
		return &Error{Kind: ErrInvalidArgument, Op: "XKSDecrypt", Key: k.ID, Err: fmt.Errorf("%w: %s", ErrBadCiphertext, why)}
	}
	if len(iv) != XKSIVSize {
		return Decrypted{}, bad(fmt.Sprintf("the IV is %d bytes, not %d", len(iv), XKSIVSize))
	}
	if len(tag) != XKSTagSize {
		return Decrypted{}, bad(fmt.Sprintf("the tag is %d bytes, not %d", len(tag), XKSTagSize))
	}
	full, err := XKSAAD(aad, metadata)
	if err != nil {
		return Decrypted{}, err
	}
	aead, err := o.xksAEAD(ctx, k, v)
	if err != nil {
		return Decrypted{}, err
	}
	pt, err := aead.Open(nil, iv, append(append(make([]byte, 0, len(ciphertext)+len(tag)), ciphertext...), tag...), full)
	if err != nil {
		return Decrypted{}, bad("it does not open under the key (wrong AAD, IV, tag or key)")
	}
	if pt == nil {
		pt = []byte{}
	}
	return Decrypted{Key: k, Version: v, Plaintext: pt}, nil
}
