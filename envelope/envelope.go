// Package envelope is keybroker's ciphertext format and the data-key
// machinery around it, shared by the central tier, the edges and the Go SDK
// so that any of them opens what any other sealed.
//
// # Format v1
//
// A ciphertext is a header followed by AES-256-GCM output:
//
//	0x01                 format
//	u8  L, L bytes       managed key id (1..128 bytes of [A-Za-z0-9._:/-], the first a letter or digit)
//	u32                  key version (big-endian, ≥ 1)
//	u16 W, W bytes       wrapped data key (W = 60 for derive and wrap keys,
//	                     the backend's ciphertext for backend-mode keys)
//	12 bytes             nonce
//	rest                 AES-256-GCM(DEK, nonce, plaintext, AAD) ‖ tag
//
// The AAD is the header (every byte up to and including the nonce) followed
// by the canonical encoding of the caller's encryption context, which is not
// stored. The wrapped data key is nonce(12) ‖ AES-256-GCM(KEK, nonce, DEK,
// "keybroker/v2/dek" ‖ 0 ‖ salt(32) ‖ key id ‖ 0 ‖ version) — for keys made
// before salts, "keybroker/v1/dek" ‖ 0 ‖ key id ‖ 0 ‖ version — where the
// KEK is the key version's material, or for keys created with derived: true,
// HKDF-SHA256(material, info = "keybroker/v1/context-key" ‖ 0 ‖ canonical
// context). docs/ciphertext.md has the layout and known-answer vectors.
//
// # Streaming
//
// Payloads larger than [MaxMessage], or that should not be held in memory,
// use the stream format (first byte 0x02, [NewStreamWriter],
// [ReadStreamHeader], [NewStreamReader]). Its header names the key, version
// and wrapped data key like v1's, then a segment size S and a random 32-byte
// salt. The plaintext is cut into segments of S bytes (the last 1..S, or 0
// for an empty stream), each sealed with AES-256-GCM under
// HKDF-SHA256(DEK, salt, "keybroker/v1/stream"), a nonce of the segment's
// index and a final-segment flag, and SHA-256(header ‖ canonical context)
// as AAD. The salt gives every stream its own key, so the SDK can reuse one
// data key for many streams with counter nonces. Reordered, dropped,
// duplicated or foreign segments fail with [ErrDecrypt]; a stream cut short
// fails with [ErrTruncated] (see # Truncation), and bytes appended after the
// final segment make it fail to open as non-final. A [StreamWriter] that
// cannot finish — its input failed, its caller was interrupted — is ended
// with Abort, which writes no final segment, so that what it wrote reads as
// truncated and never as a complete stream. Stream writers and readers are
// not safe for concurrent use.
//
// A stream reader returns each segment's plaintext only once that segment
// authenticates, but it cannot vouch for segments it has not read yet: a
// consumer may have received earlier segments before a later one fails. It
// must treat the output as unauthenticated until Read returns io.EOF — write
// to a temporary file and rename it, say, rather than acting on a prefix.
//
// # Truncation
//
// A stream cut anywhere fails with [ErrTruncated], and a complete segment
// that was altered with [ErrDecrypt]. The reader tells them apart by
// structure alone, from what a writer can produce: every segment but the
// final one is exactly S+16 bytes and is sealed as non-final only once more
// input follows it, so no writer ever emits a short non-final segment nor
// a short segment that is not the last. Hence, where the input ends:
//
//   - inside the header: truncated;
//   - right after the header, or after a whole segment that opens as
//     non-final: truncated at a segment boundary;
//   - after a whole segment that opens neither as final nor as non-final:
//     tampered ([ErrDecrypt]);
//   - inside a segment (fewer than S+16 bytes left) that does not open as
//     final: truncated. Those bytes are what is left of a longer segment, or
//     a short final segment that was altered, and the format cannot tell
//     which: there is no length to check a cut against, and a tag cannot be
//     checked on part of a segment. The segments before it authenticated, so
//     the key and the context are right and the stream is damaged at its
//     end either way; it is refused either way. Only in segment 0, before
//     anything has authenticated, may the key or the context be the cause
//     too: that error matches both ErrTruncated and ErrDecrypt.
//
// A short last segment that authenticates as non-final cannot exist: a
// writer never seals one, and the AEAD keeps anyone without the key from
// making one. So a stream cut short can never read as complete: it would
// need a final segment, which only the writer's Close seals.
//
// # Data-key reuse and caches
//
// A [Reuser] hands out one data key per (key, version, context partition)
// until its period, message count or byte count runs out, so that millions
// of messages cost a handful of unwraps. A [Cache] keeps unwrapped data keys
// for decryption, keyed by key id, version, the key's incarnation (its salt,
// [Cache.GetIncarnation]) and wrapped key, bounded and with a lifetime: it is
// an internal/ttlcache cache, as the material caches of both tiers are. Both
// coalesce concurrent misses for one entry into one call.
//
// # Secrets
//
// Data keys and KEKs are *secret.Bytes. A cache that drops a [DataKey] does
// not zero it, because a caller may still be sealing, opening or starting a
// stream with it; its bytes are zeroed by the runtime cleanup of
// secret.Bytes once the last holder lets go, and the AEAD state it built
// goes with it. Destroy zeroes a data key its owner knows is unused.
package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/keybroker/keybroker/secret"
)

// Format v1 constants.
const (
	FormatV1      = 0x01
	NonceSize     = 12
	TagSize       = 16
	DEKSize       = 32
	WrappedDEKLen = NonceSize + DEKSize + TagSize
	// MaxWrappedDEK bounds a backend-wrapped data key (a KMS ciphertext).
	MaxWrappedDEK = 2048
	MaxKeyID      = 128
	// MaxMessage bounds the plaintext of one message (format v1, Seal);
	// larger payloads use streaming. It is the format's bound, not a
	// request's (managed.MaxPlaintext) nor what a root of trust encrypts
	// (backends.MaxEncryptInput).
	MaxMessage = 16 << 20
)

// Errors. ErrMalformed and ErrDecrypt are the two ways a ciphertext is
// refused; callers map them to InvalidArgument.
var (
	ErrMalformed = errors.New("envelope: malformed ciphertext")
	ErrDecrypt   = errors.New("envelope: decryption failed (wrong key, wrong encryption context, or tampered ciphertext)")
	ErrContext   = errors.New("envelope: invalid encryption context")
	ErrTooLarge  = errors.New("envelope: plaintext too large")
)

// Header is the parsed, unauthenticated header of a ciphertext. Nothing in
// it may be trusted until Open succeeds.
type Header struct {
	KeyID      string
	Version    uint32
	WrappedDEK []byte
	Nonce      []byte
	// raw is the header as it appears on the wire, part of the AAD.
	raw []byte
}

// ValidKeyID reports whether id can name a key: 1 to MaxKeyID bytes of
// [A-Za-z0-9._:/-], the first a letter or digit. It is keybroker's one
// rule for key ids — the key model (managed.Key.ValidateMeta), the API
// (rpc.CheckKeyID), the registry and every ciphertext header follow it —
// so a header cannot name a key no key could have.
func ValidKeyID(id string) bool {
	if len(id) == 0 || len(id) > MaxKeyID || !alnum(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !alnum(c) && c != '.' && c != '_' && c != ':' && c != '/' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// ParseHeader parses a ciphertext's header and returns it with the AEAD
// output that follows.
func ParseHeader(ct []byte) (*Header, []byte, error) {
	if len(ct) == 0 {
		return nil, nil, malformed("empty")
	}
	switch ct[0] {
	case FormatV1:
	case FormatStreamV1:
		// Still an unknown format to this parser (clients and tests match
		// that phrase), but say what the bytes are and what opens them.
		return nil, nil, malformed("unknown format byte 0x02 for a single message: this is a streaming ciphertext; open it with a stream reader (the SDK's Decryptor or keybroker decrypt --in)")
	default:
		return nil, nil, malformed("unknown format byte 0x%02x", ct[0])
	}
	p := 1
	need := func(n int, what string) error {
		if len(ct)-p < n {
			return malformed("truncated in %s", what)
		}
		return nil
	}
	if err := need(1, "key id length"); err != nil {
		return nil, nil, err
	}
	l := int(ct[p])
	p++
	if err := need(l, "key id"); err != nil {
		return nil, nil, err
	}
	h := &Header{KeyID: string(ct[p : p+l])}
	if !ValidKeyID(h.KeyID) {
		return nil, nil, malformed("invalid key id")
	}
	p += l
	if err := need(4, "version"); err != nil {
		return nil, nil, err
	}
	h.Version = binary.BigEndian.Uint32(ct[p:])
	if h.Version == 0 {
		return nil, nil, malformed("version 0")
	}
	p += 4
	if err := need(2, "wrapped key length"); err != nil {
		return nil, nil, err
	}
	w := int(binary.BigEndian.Uint16(ct[p:]))
	p += 2
	if w < WrappedDEKLen || w > MaxWrappedDEK {
		return nil, nil, malformed("wrapped key is %d bytes, want %d to %d", w, WrappedDEKLen, MaxWrappedDEK)
	}
	if err := need(w, "wrapped key"); err != nil {
		return nil, nil, err
	}
	h.WrappedDEK = ct[p : p+w : p+w]
	p += w
	if err := need(NonceSize, "nonce"); err != nil {
		return nil, nil, err
	}
	h.Nonce = ct[p : p+NonceSize : p+NonceSize]
	p += NonceSize
	h.raw = ct[:p:p]
	if len(ct)-p < TagSize {
		return nil, nil, malformed("truncated in authentication tag")
	}
	return h, ct[p:], nil
}

func appendHeader(dst []byte, keyID string, version uint32, wrapped, nonce []byte) []byte {
	dst = append(dst, FormatV1, byte(len(keyID)))
	dst = append(dst, keyID...)
	dst = binary.BigEndian.AppendUint32(dst, version)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(wrapped)))
	dst = append(dst, wrapped...)
	return append(dst, nonce...)
}

// KEK returns the key that wraps data keys for a key version: the material
// itself, or for derived keys a per-context key derived from it.
func KEK(material *secret.Bytes, derived bool, ctx map[string]string) (*secret.Bytes, error) {
	if material.Len() != 32 {
		return nil, fmt.Errorf("envelope: material is %d bytes, want 32", material.Len())
	}
	if !derived {
		return material, nil
	}
	c, err := CanonicalContext(ctx)
	if err != nil {
		return nil, err
	}
	k, err := hkdf.Key(sha256.New, material.Reveal(), nil, "keybroker/v1/context-key\x00"+string(c), 32)
	if err != nil {
		return nil, err
	}
	return secret.New(k), nil
}

// dekAAD binds a wrapped data key to its key version: "keybroker/v1/dek"
// ‖ 0 ‖ key id ‖ 0 ‖ u32 version for keys without a salt, else
// "keybroker/v2/dek" ‖ 0 ‖ salt ‖ key id ‖ 0 ‖ u32 version.
func dekAAD(keyID string, version uint32, salt []byte) []byte {
	var aad []byte
	if len(salt) == 0 {
		aad = []byte("keybroker/v1/dek\x00")
	} else {
		aad = append([]byte("keybroker/v2/dek\x00"), salt...)
	}
	aad = append(aad, keyID...)
	aad = append(aad, 0)
	return binary.BigEndian.AppendUint32(aad, version)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// DataKey is an unwrapped data key bound to the key version that wrapped it.
// It is safe for concurrent use.
type DataKey struct {
	KeyID   string
	Version uint32
	Wrapped []byte
	dek     *secret.Bytes
	aead    cipher.AEAD
	// prefix is the header of this key's ciphertexts up to the nonce.
	prefix []byte
}

// GenerateDataKey makes a fresh random data key and wraps it under kek,
// for a key without a salt.
func GenerateDataKey(kek *secret.Bytes, keyID string, version uint32) (*DataKey, error) {
	return GenerateDataKeyWithSalt(kek, keyID, version, nil)
}

// GenerateDataKeyWithSalt is GenerateDataKey for a key with a salt, which
// enters the wrapped data key's AAD.
func GenerateDataKeyWithSalt(kek *secret.Bytes, keyID string, version uint32, salt []byte) (*DataKey, error) {
	dek := make([]byte, DEKSize)
	_, _ = rand.Read(dek)
	nonce := make([]byte, NonceSize)
	_, _ = rand.Read(nonce)
	return generateSalted(kek, keyID, version, salt, secret.New(dek), nonce)
}

func generate(kek *secret.Bytes, keyID string, version uint32, dek *secret.Bytes, nonce []byte) (*DataKey, error) {
	return generateSalted(kek, keyID, version, nil, dek, nonce)
}

func generateSalted(kek *secret.Bytes, keyID string, version uint32, salt []byte, dek *secret.Bytes, nonce []byte) (*DataKey, error) {
	if !ValidKeyID(keyID) || version == 0 {
		return nil, fmt.Errorf("envelope: invalid key id %q or version %d", keyID, version)
	}
	wrapAEAD, err := newGCM(kek.Reveal())
	if err != nil {
		return nil, fmt.Errorf("envelope: KEK: %w", err)
	}
	wrapped := wrapAEAD.Seal(append([]byte(nil), nonce...), nonce, dek.Reveal(), dekAAD(keyID, version, salt))
	return NewDataKey(keyID, version, dek, wrapped)
}

// NewDataKey builds a DataKey from an unwrapped DEK (taking ownership of it)
// and its wrapped form: 60 bytes when wrapped under material, or a backend's
// ciphertext (up to MaxWrappedDEK bytes) for backend-mode keys.
func NewDataKey(keyID string, version uint32, dek *secret.Bytes, wrapped []byte) (*DataKey, error) {
	if dek.Len() != DEKSize || len(wrapped) < WrappedDEKLen || len(wrapped) > MaxWrappedDEK {
		return nil, fmt.Errorf("envelope: data key is %d bytes and wrapped form %d, want %d and %d..%d", dek.Len(), len(wrapped), DEKSize, WrappedDEKLen, MaxWrappedDEK)
	}
	if !ValidKeyID(keyID) || version == 0 {
		return nil, fmt.Errorf("envelope: invalid key id %q or version %d", keyID, version)
	}
	a, err := newGCM(dek.Reveal())
	if err != nil {
		return nil, err
	}
	return &DataKey{KeyID: keyID, Version: version, Wrapped: wrapped, dek: dek, aead: a,
		prefix: appendHeader(nil, keyID, version, wrapped, nil)}, nil
}

// UnwrapDataKey opens a wrapped data key under kek, for a key without a
// salt.
func UnwrapDataKey(kek *secret.Bytes, keyID string, version uint32, wrapped []byte) (*DataKey, error) {
	return UnwrapDataKeyWithSalt(kek, keyID, version, nil, wrapped)
}

// UnwrapDataKeyWithSalt opens a data key wrapped for a key with a salt.
func UnwrapDataKeyWithSalt(kek *secret.Bytes, keyID string, version uint32, salt, wrapped []byte) (*DataKey, error) {
	if len(wrapped) != WrappedDEKLen {
		return nil, ErrDecrypt
	}
	a, err := newGCM(kek.Reveal())
	if err != nil {
		return nil, fmt.Errorf("envelope: KEK: %w", err)
	}
	dek, err := a.Open(nil, wrapped[:NonceSize], wrapped[NonceSize:], dekAAD(keyID, version, salt))
	if err != nil {
		return nil, ErrDecrypt
	}
	return NewDataKey(keyID, version, secret.New(dek), append([]byte(nil), wrapped...))
}

// Key returns the plaintext data key (for GenerateDataKey responses).
func (d *DataKey) Key() *secret.Bytes { return d.dek }

// Destroy zeroes the data key's bytes.
func (d *DataKey) Destroy() { d.dek.Destroy() }

// Seal encrypts plaintext under the data key, binding the encryption
// context.
func (d *DataKey) Seal(plaintext []byte, ctx map[string]string) ([]byte, error) {
	return d.seal(plaintext, ctx, nil)
}

// SealCanonical is Seal for a context already encoded by CanonicalContext,
// for callers that seal many messages under one context.
func (d *DataKey) SealCanonical(plaintext, canonicalContext []byte) ([]byte, error) {
	return d.sealCanonical(plaintext, canonicalContext, nil)
}

func (d *DataKey) seal(plaintext []byte, ctx map[string]string, nonce []byte) ([]byte, error) {
	c, err := CanonicalContext(ctx)
	if err != nil {
		return nil, err
	}
	return d.sealCanonical(plaintext, c, nonce)
}

// aadScratch holds the AAD of one Seal or Open — header ‖ canonical
// context, about 100 bytes for a 60-byte wrapped key and a small context —
// so that the message's output is the only allocation, exactly its size.
// (The AAD cannot share the output: AES-GCM requires that they do not
// overlap, and in the output's spare capacity it would push a 1 KiB
// message's ciphertext into the next size class.) It holds no secret: the
// header travels with the ciphertext and the context is the caller's
// authenticated, unencrypted metadata.
type aadScratch [512]byte

var aadPool = sync.Pool{New: func() any { return new(aadScratch) }}

// buildAAD returns header ‖ context in a pooled buffer when it fits (put
// it back with releaseAAD), or in a new one.
func buildAAD(header, canonicalContext []byte) ([]byte, *aadScratch) {
	n := len(header) + len(canonicalContext)
	var s *aadScratch
	var aad []byte
	if n <= len(aadScratch{}) {
		s = aadPool.Get().(*aadScratch)
		aad = s[:0]
	} else {
		aad = make([]byte, 0, n)
	}
	aad = append(aad, header...)
	return append(aad, canonicalContext...), s
}

func releaseAAD(s *aadScratch) {
	if s != nil {
		aadPool.Put(s)
	}
}

// sealCanonical seals under nonce, or a random one when nonce is nil, in
// one allocation of exactly the ciphertext's size.
func (d *DataKey) sealCanonical(plaintext, c, nonce []byte) ([]byte, error) {
	if len(plaintext) > MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(plaintext), MaxMessage)
	}
	hdr := len(d.prefix) + NonceSize
	n := hdr + len(plaintext) + TagSize
	out := make([]byte, hdr, n)
	copy(out, d.prefix)
	nc := out[len(d.prefix):hdr]
	if nonce == nil {
		_, _ = rand.Read(nc)
	} else {
		copy(nc, nonce)
	}
	aad, s := buildAAD(out[:hdr], c)
	ct := d.aead.Seal(out, nc, plaintext, aad)
	releaseAAD(s)
	return ct, nil
}

// Open decrypts a ciphertext whose header h was parsed by ParseHeader and
// whose data key is d.
func (d *DataKey) Open(h *Header, body []byte, ctx map[string]string) ([]byte, error) {
	c, err := CanonicalContext(ctx)
	if err != nil {
		return nil, err
	}
	return d.OpenCanonical(h, body, c)
}

// OpenOwn opens a message ciphertext if its header names this data key —
// key id, version and wrapped key byte for byte — and reports false,
// without trying, if it does not. It is the fast path of a caller that
// holds the data key most of its messages use: no header to parse, no
// cache to consult.
func (d *DataKey) OpenOwn(ciphertext, canonicalContext []byte) (plaintext []byte, own bool, err error) {
	hdr := len(d.prefix) + NonceSize
	if len(ciphertext) < hdr+TagSize || string(ciphertext[:len(d.prefix)]) != string(d.prefix) {
		return nil, false, nil
	}
	pt, err := d.open(ciphertext[:hdr], ciphertext[len(d.prefix):hdr], ciphertext[hdr:], canonicalContext)
	return pt, true, err
}

// open decrypts body under nonce with AAD header ‖ context, in one
// allocation of exactly the plaintext's size.
func (d *DataKey) open(header, nonce, body, canonicalContext []byte) ([]byte, error) {
	aad, s := buildAAD(header, canonicalContext)
	pt, err := d.aead.Open(make([]byte, 0, len(body)-TagSize), nonce, body, aad)
	releaseAAD(s)
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// OpenCanonical is Open for a context already encoded by
// CanonicalContext.
func (d *DataKey) OpenCanonical(h *Header, body, canonicalContext []byte) ([]byte, error) {
	if h.KeyID != d.KeyID || h.Version != d.Version || string(h.WrappedDEK) != string(d.Wrapped) || len(body) < TagSize || h.raw == nil {
		return nil, ErrDecrypt
	}
	return d.open(h.raw, h.Nonce, body, canonicalContext)
}
