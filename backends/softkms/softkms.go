// Package softkms is keybroker's software root of trust: root keys kept in
// one local file, sealed under a key-encryption key (KEK). It is the
// embedded default for `keybroker dev` and for tests; production
// deployments put their root keys in an HSM or a cloud KMS.
//
// # Keystore file
//
// The keystore is a JSON document, mode 0600. Each key's secret is sealed
// with AES-256-GCM under the KEK, its name and algorithm bound as associated
// data, so a sealed secret cannot be moved to another name or reinterpreted
// as another algorithm. A check value sealed under the KEK lets Open tell a
// wrong KEK or passphrase from a damaged file. Every change is written to a
// temporary file in the same directory, fsynced, renamed over the keystore,
// and the directory fsynced: a crash leaves either the old or the new file.
// An exclusive advisory lock (path + ".lock") keeps a second process from
// opening the same keystore.
//
// # Key-encryption key
//
// The KEK comes from a kek-source file holding 32 bytes (raw, or 64 hex
// digits) or is derived from a passphrase-source file with Argon2id; the
// salt and cost parameters are stored in the keystore. With neither, Open
// refuses.
//
// # Concurrency
//
// Keys are unsealed once at Open and kept in memory (as ready AEAD, HMAC and
// signing keys) for the life of the backend; Close zeroes them. Operations
// take a read lock; CreateKey and SetEnabled take the write lock while they
// persist the file.
//
// # Limitations
//
// The keys live in process memory, so anyone who can read the process's
// memory or the KEK file can read them. There is no key deletion.
package softkms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/secret"
)

const scheme = "softkms"

// KDFParams are Argon2id cost parameters for passphrase-derived KEKs.
type KDFParams struct {
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory_kib"`
	Threads uint8  `json:"threads"`
}

// DefaultKDF follows RFC 9106's second recommended option (64 MiB).
var DefaultKDF = KDFParams{Time: 3, Memory: 64 * 1024, Threads: 4}

// Config opens a keystore.
type Config struct {
	// Path is the keystore file. It is created (with mode 0600) when it does
	// not exist.
	Path string
	// KEKFile names a file holding the 32-byte KEK, raw or as 64 hex digits.
	KEKFile string
	// PassphraseFile names a file holding a passphrase from which the KEK is
	// derived with Argon2id. Exactly one of KEKFile and PassphraseFile.
	PassphraseFile string
	// KDF sets the Argon2id cost for a new keystore; zero means DefaultKDF.
	// An existing keystore keeps the parameters it was created with.
	KDF KDFParams
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration without touching the disk.
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("softkms: no keystore path")
	case (c.KEKFile == "") == (c.PassphraseFile == ""):
		return errors.New("softkms: give exactly one of a KEK file and a passphrase file")
	case c.KDF != KDFParams{} && (c.KDF.Time < 1 || c.KDF.Memory < 8 || c.KDF.Threads < 1):
		return errors.New("softkms: KDF parameters must be at least time 1, memory 8 KiB, 1 thread")
	}
	return nil
}

// Backend is an open keystore.
type Backend struct {
	path   string
	kek    cipher.AEAD
	logger *slog.Logger
	lock   *os.File

	mu     sync.RWMutex
	file   fileFormat
	keys   map[string]*key
	closed bool
}

var (
	_ backends.Backend           = (*Backend)(nil)
	_ backends.MACer             = (*Backend)(nil)
	_ backends.Signer            = (*Backend)(nil)
	_ backends.KeyCreator        = (*Backend)(nil)
	_ backends.DataKeyGenerator  = (*Backend)(nil)
	_ backends.HealthChecker     = (*Backend)(nil)
	_ backends.CreatesAlgorithms = (*Backend)(nil)
)

// key is an unsealed key ready for use.
type key struct {
	alg     backends.Algorithm
	enabled bool
	raw     *secret.Bytes // the sealed secret, unsealed
	aead    cipher.AEAD   // aes-256
	ecdsa   *ecdsa.PrivateKey
	ed      ed25519.PrivateKey
}

func (k *key) destroy() {
	k.raw.Destroy()
	clear(k.ed)
	k.aead, k.ecdsa, k.ed = nil, nil, nil
}

// Open opens the keystore a softkms: URI names (path and one KEK source are
// required; a key name in the URI is ignored).
func Open(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
	u, err := backends.ParseSoftKMSURI(uri)
	if err != nil {
		return nil, err
	}
	return New(ctx, Config{Path: u.Path, KEKFile: u.KEKSource, PassphraseFile: u.PassphraseSource, Logger: opts.Logger})
}

// New opens (or creates) the keystore at cfg.Path.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	if err := backends.ContextError(scheme, "open", "", ctx); err != nil {
		return nil, err
	}
	b := &Backend{path: cfg.Path, logger: cfg.Logger, keys: map[string]*key{}}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	lock, err := lockFile(cfg.Path)
	if err != nil {
		return nil, err
	}
	b.lock = lock
	if err := b.load(cfg); err != nil {
		_ = lock.Close()
		return nil, err
	}
	return b, nil
}

func lockFile(keystore string) (*os.File, error) {
	path := keystore + ".lock"
	// O_NOFOLLOW: a link planted at the lock's name is refused, not
	// followed to create or open another file.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrUnavailable, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return nil, backends.Errorf(scheme, "open", "", backends.ErrUnavailable,
			"keystore %s is in use by another process or backend (lock %s held): %w", keystore, path, err)
	}
	return f, nil
}

func (b *Backend) load(cfg Config) error {
	data, err := os.ReadFile(cfg.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return b.create(cfg)
	case err != nil:
		return backends.NewError(scheme, "open", "", backends.ErrUnavailable, err)
	}
	ff, err := decodeFile(data)
	if err != nil {
		return backends.Errorf(scheme, "open", "", backends.ErrInvalidArgument, "keystore %s: %w", cfg.Path, err)
	}
	if (ff.KDF.Name == kdfArgon2id) != (cfg.PassphraseFile != "") {
		return backends.Errorf(scheme, "open", "", backends.ErrInvalidArgument,
			"keystore %s was sealed with %s; give the matching KEK source", cfg.Path, ff.KDF.describe())
	}
	kek, err := deriveKEK(cfg, ff.KDF)
	if err != nil {
		return err
	}
	defer kek.Destroy()
	if b.kek, err = newGCM(kek.Reveal()); err != nil {
		return backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	if _, err := b.unseal(ff.Check, checkAAD); err != nil {
		return backends.Errorf(scheme, "open", "", backends.ErrPermissionDenied,
			"keystore %s: the key-encryption key or passphrase is wrong", cfg.Path)
	}
	for _, e := range ff.Keys {
		k, err := b.unsealKey(e)
		if err != nil {
			b.destroyKeys()
			return backends.Errorf(scheme, "open", e.Name, backends.ErrInvalidArgument, "keystore %s: %w", cfg.Path, err)
		}
		b.keys[e.Name] = k
	}
	b.file = ff
	b.logger.Info("softkms keystore opened", "path", cfg.Path, "keys", len(ff.Keys))
	return nil
}

func (b *Backend) create(cfg Config) error {
	p := kdfHeader{Name: kdfNone}
	if cfg.PassphraseFile != "" {
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		params := cfg.KDF
		if params == (KDFParams{}) {
			params = DefaultKDF
		}
		p = kdfHeader{Name: kdfArgon2id, Salt: salt, Params: params}
	}
	kek, err := deriveKEK(cfg, p)
	if err != nil {
		return err
	}
	defer kek.Destroy()
	if b.kek, err = newGCM(kek.Reveal()); err != nil {
		return backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, err)
	}
	b.file = fileFormat{Format: formatV1, KDF: p, Check: b.seal(checkValue, checkAAD)}
	if err := b.persist(); err != nil {
		return err
	}
	b.logger.Info("softkms keystore created", "path", cfg.Path)
	return nil
}

func deriveKEK(cfg Config, p kdfHeader) (*secret.Bytes, error) {
	if cfg.KEKFile != "" {
		raw, err := os.ReadFile(cfg.KEKFile)
		if err != nil {
			return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, fmt.Errorf("reading KEK file: %w", err))
		}
		defer clear(raw)
		trimmed := bytes.TrimSpace(raw)
		switch len(trimmed) {
		case 32:
			if len(raw) == 32 { // raw bytes may legitimately end in whitespace
				trimmed = raw
			}
			return secret.Copy(trimmed), nil
		case 64:
			k := make([]byte, 32)
			if _, err := hex.Decode(k, trimmed); err == nil {
				return secret.New(k), nil
			}
		}
		if len(raw) == 32 {
			return secret.Copy(raw), nil
		}
		return nil, backends.Errorf(scheme, "open", "", backends.ErrInvalidArgument,
			"KEK file %s must hold 32 raw bytes or 64 hex digits", cfg.KEKFile)
	}
	pass, err := os.ReadFile(cfg.PassphraseFile)
	if err != nil {
		return nil, backends.NewError(scheme, "open", "", backends.ErrInvalidArgument, fmt.Errorf("reading passphrase file: %w", err))
	}
	defer clear(pass)
	pass = bytes.TrimRight(pass, "\r\n")
	if len(pass) < 8 {
		return nil, backends.Errorf(scheme, "open", "", backends.ErrInvalidArgument,
			"passphrase in %s is shorter than 8 bytes", cfg.PassphraseFile)
	}
	return secret.New(argon2id(pass, p)), nil
}

func newGCM(k []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (b *Backend) seal(pt, aad []byte) []byte {
	nonce := make([]byte, b.kek.NonceSize(), b.kek.NonceSize()+len(pt)+b.kek.Overhead())
	_, _ = rand.Read(nonce)
	return b.kek.Seal(nonce, nonce, pt, aad)
}

func (b *Backend) unseal(ct, aad []byte) (*secret.Bytes, error) {
	n := b.kek.NonceSize()
	if len(ct) < n+b.kek.Overhead() {
		return nil, errors.New("sealed value too short")
	}
	pt, err := b.kek.Open(nil, ct[:n], ct[n:], aad)
	if err != nil {
		return nil, errors.New("sealed value does not open under the KEK")
	}
	return secret.New(pt), nil
}

func keyAAD(name string, alg backends.Algorithm) []byte {
	return []byte(formatV1 + "\x00key\x00" + name + "\x00" + string(alg))
}

func (b *Backend) unsealKey(e keyEntry) (*key, error) {
	if !backends.ValidSoftKMSName(e.Name) || !e.Algorithm.Valid() {
		return nil, fmt.Errorf("bad key entry %q (%s)", e.Name, e.Algorithm)
	}
	raw, err := b.unseal(e.Sealed, keyAAD(e.Name, e.Algorithm))
	if err != nil {
		return nil, err
	}
	k, err := prepare(e.Algorithm, raw)
	if err != nil {
		raw.Destroy()
		return nil, err
	}
	k.enabled = e.Enabled
	return k, nil
}

// prepare turns raw secret bytes into a ready key.
func prepare(alg backends.Algorithm, raw *secret.Bytes) (*key, error) {
	k := &key{alg: alg, raw: raw}
	if raw.Len() != 32 {
		return nil, fmt.Errorf("%s secret is %d bytes, want 32", alg, raw.Len())
	}
	var err error
	switch alg {
	case backends.AES256:
		k.aead, err = newGCM(raw.Reveal())
	case backends.HMAC256:
	case backends.ECDSAP256:
		k.ecdsa, err = ecdsa.ParseRawPrivateKey(elliptic.P256(), raw.Reveal())
	case backends.Ed25519:
		k.ed = ed25519.NewKeyFromSeed(raw.Reveal())
	default:
		err = fmt.Errorf("unknown algorithm %q", alg)
	}
	return k, err
}

func newSecret(alg backends.Algorithm) (*secret.Bytes, error) {
	if alg == backends.ECDSAP256 {
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		raw, err := priv.Bytes()
		return secret.New(raw), err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	return secret.New(raw), nil
}

// persist writes b.file atomically. Callers hold b.mu for writing (or own b
// exclusively during Open).
func (b *Backend) persist() error {
	data, err := b.file.encode()
	if err != nil {
		return backends.NewError(scheme, "persist", "", backends.ErrUnavailable, err)
	}
	if err := atomicfile.Write(b.path, data, 0o600); err != nil {
		return backends.NewError(scheme, "persist", "", backends.ErrUnavailable, err)
	}
	return nil
}

// get returns a usable key of algorithm alg (any algorithm when alg is
// empty), checking the context, existence and state.
func (b *Backend) get(ctx context.Context, op, name string, alg backends.Algorithm) (*key, func(), error) {
	if err := backends.ContextError(scheme, op, name, ctx); err != nil {
		return nil, nil, err
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return nil, nil, backends.Errorf(scheme, op, name, backends.ErrUnavailable, "backend is closed")
	}
	k, ok := b.keys[name]
	switch {
	case !ok:
		b.mu.RUnlock()
		return nil, nil, backends.NewError(scheme, op, name, backends.ErrNotFound, nil)
	case alg != "" && k.alg != alg:
		b.mu.RUnlock()
		return nil, nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument, "key is %s, operation needs %s", k.alg, alg)
	case !k.enabled:
		b.mu.RUnlock()
		return nil, nil, backends.NewError(scheme, op, name, backends.ErrDisabled, nil)
	}
	return k, b.mu.RUnlock, nil
}

const ciphertextV1 = 0x01

// Encrypt implements backends.Backend. The ciphertext is 0x01 ‖ nonce(12) ‖
// AES-256-GCM(plaintext, aad).
func (b *Backend) Encrypt(ctx context.Context, name string, plaintext, aad []byte) ([]byte, error) {
	k, release, err := b.get(ctx, "encrypt", name, backends.AES256)
	if err != nil {
		return nil, err
	}
	defer release()
	out := make([]byte, 1+12, 1+12+len(plaintext)+16)
	out[0] = ciphertextV1
	_, _ = rand.Read(out[1:13])
	return k.aead.Seal(out, out[1:13], plaintext, aad), nil
}

// Decrypt implements backends.Backend.
func (b *Backend) Decrypt(ctx context.Context, name string, ciphertext, aad []byte) (*secret.Bytes, error) {
	k, release, err := b.get(ctx, "decrypt", name, backends.AES256)
	if err != nil {
		return nil, err
	}
	defer release()
	if len(ciphertext) < 1+12+16 || ciphertext[0] != ciphertextV1 {
		return nil, backends.Errorf(scheme, "decrypt", name, backends.ErrDecryptionFailed, "not a softkms ciphertext")
	}
	pt, err := k.aead.Open(nil, ciphertext[1:13], ciphertext[13:], aad)
	if err != nil {
		return nil, backends.NewError(scheme, "decrypt", name, backends.ErrDecryptionFailed, err)
	}
	return secret.New(pt), nil
}

// GenerateDataKey implements backends.DataKeyGenerator.
func (b *Backend) GenerateDataKey(ctx context.Context, name string, aad []byte) (*secret.Bytes, []byte, error) {
	dek := make([]byte, 32)
	_, _ = rand.Read(dek)
	s := secret.New(dek)
	wrapped, err := b.Encrypt(ctx, name, dek, aad)
	if err != nil {
		s.Destroy()
		return nil, nil, err
	}
	return s, wrapped, nil
}

// GenerateRandom implements backends.Backend with crypto/rand.
func (b *Backend) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	if err := backends.ContextError(scheme, "generate-random", "", ctx); err != nil {
		return nil, err
	}
	if b.isClosed() {
		return nil, backends.Errorf(scheme, "generate-random", "", backends.ErrUnavailable, "backend is closed")
	}
	out := make([]byte, n)
	_, _ = rand.Read(out)
	return out, nil
}

func (b *Backend) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// Describe implements backends.Backend.
func (b *Backend) Describe(ctx context.Context, name string) (backends.KeyInfo, error) {
	if err := backends.ContextError(scheme, "describe", name, ctx); err != nil {
		return backends.KeyInfo{}, err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return backends.KeyInfo{}, backends.Errorf(scheme, "describe", name, backends.ErrUnavailable, "backend is closed")
	}
	k, ok := b.keys[name]
	if !ok {
		return backends.KeyInfo{}, backends.NewError(scheme, "describe", name, backends.ErrNotFound, nil)
	}
	return backends.KeyInfo{Key: name, Algorithm: k.alg, Enabled: k.enabled}, nil
}

// MAC implements backends.MACer.
func (b *Backend) MAC(ctx context.Context, name string, data []byte) (*secret.Bytes, error) {
	k, release, err := b.get(ctx, "mac", name, backends.HMAC256)
	if err != nil {
		return nil, err
	}
	defer release()
	h := hmac.New(sha256.New, k.raw.Reveal())
	h.Write(data)
	return secret.New(h.Sum(nil)), nil
}

// VerifyMAC implements backends.MACer.
func (b *Backend) VerifyMAC(ctx context.Context, name string, data, tag []byte) error {
	want, err := b.MAC(ctx, name, data)
	if err != nil {
		return err
	}
	defer want.Destroy()
	if !hmac.Equal(want.Reveal(), tag) {
		return backends.Errorf(scheme, "verify-mac", name, backends.ErrDecryptionFailed, "tag does not match")
	}
	return nil
}

// Sign implements backends.Signer: ECDSA P-256 over a 32-byte SHA-256
// digest (ASN.1 DER), or pure Ed25519 over the message.
func (b *Backend) Sign(ctx context.Context, name string, digest []byte) ([]byte, error) {
	k, release, err := b.get(ctx, "sign", name, "")
	if err != nil {
		return nil, err
	}
	defer release()
	switch k.alg {
	case backends.ECDSAP256:
		if len(digest) != sha256.Size {
			return nil, backends.Errorf(scheme, "sign", name, backends.ErrInvalidArgument, "digest is %d bytes, want 32", len(digest))
		}
		sig, err := ecdsa.SignASN1(rand.Reader, k.ecdsa, digest)
		if err != nil {
			return nil, backends.NewError(scheme, "sign", name, backends.ErrUnavailable, err)
		}
		return sig, nil
	case backends.Ed25519:
		return ed25519.Sign(k.ed, digest), nil
	}
	return nil, backends.Errorf(scheme, "sign", name, backends.ErrInvalidArgument, "key is %s, not a signing key", k.alg)
}

// PublicKey implements backends.Signer.
func (b *Backend) PublicKey(ctx context.Context, name string) (crypto.PublicKey, error) {
	k, release, err := b.get(ctx, "public-key", name, "")
	if err != nil {
		return nil, err
	}
	defer release()
	switch k.alg {
	case backends.ECDSAP256:
		return k.ecdsa.Public(), nil
	case backends.Ed25519:
		return k.ed.Public(), nil
	}
	return nil, backends.Errorf(scheme, "public-key", name, backends.ErrInvalidArgument, "key is %s, not a signing key", k.alg)
}

// CreatableAlgorithms implements backends.CreatesAlgorithms.
func (b *Backend) CreatableAlgorithms() []backends.Algorithm {
	return []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256, backends.Ed25519}
}

// CreateKey implements backends.KeyCreator. name becomes the key's name.
func (b *Backend) CreateKey(ctx context.Context, name string, alg backends.Algorithm) (backends.KeyInfo, error) {
	if err := backends.ContextError(scheme, "create-key", name, ctx); err != nil {
		return backends.KeyInfo{}, err
	}
	if !backends.ValidSoftKMSName(name) {
		return backends.KeyInfo{}, backends.Errorf(scheme, "create-key", name, backends.ErrInvalidArgument,
			"name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if !alg.Valid() {
		return backends.KeyInfo{}, backends.Errorf(scheme, "create-key", name, backends.ErrInvalidArgument, "unknown algorithm %q", alg)
	}
	raw, err := newSecret(alg)
	if err != nil {
		return backends.KeyInfo{}, backends.NewError(scheme, "create-key", name, backends.ErrUnavailable, err)
	}
	k, err := prepare(alg, raw)
	if err != nil {
		raw.Destroy()
		return backends.KeyInfo{}, backends.NewError(scheme, "create-key", name, backends.ErrUnavailable, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		k.destroy()
		return backends.KeyInfo{}, backends.Errorf(scheme, "create-key", name, backends.ErrUnavailable, "backend is closed")
	}
	if _, dup := b.keys[name]; dup {
		k.destroy()
		return backends.KeyInfo{}, backends.Errorf(scheme, "create-key", name, backends.ErrInvalidArgument, "a key with this name exists")
	}
	entry := keyEntry{Name: name, Algorithm: alg, Enabled: true, Created: time.Now().UTC(),
		Sealed: b.seal(raw.Reveal(), keyAAD(name, alg))}
	b.file.Keys = append(b.file.Keys, entry)
	if err := b.persist(); err != nil {
		b.file.Keys = b.file.Keys[:len(b.file.Keys)-1]
		k.destroy()
		return backends.KeyInfo{}, err
	}
	k.enabled = true
	b.keys[name] = k
	b.logger.Info("softkms key created", "key", name, "algorithm", alg)
	return backends.KeyInfo{Key: name, Algorithm: alg, Enabled: true}, nil
}

// SetEnabled enables or disables a key. A disabled key refuses every
// operation with backends.ErrDisabled but stays in the keystore.
func (b *Backend) SetEnabled(ctx context.Context, name string, enabled bool) error {
	if err := backends.ContextError(scheme, "set-enabled", name, ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k, ok := b.keys[name]
	if !ok {
		return backends.NewError(scheme, "set-enabled", name, backends.ErrNotFound, nil)
	}
	for i := range b.file.Keys {
		if b.file.Keys[i].Name == name {
			b.file.Keys[i].Enabled = enabled
			if err := b.persist(); err != nil {
				b.file.Keys[i].Enabled = !enabled
				return err
			}
		}
	}
	k.enabled = enabled
	return nil
}

// Health implements backends.HealthChecker: the keystore file is still
// there and readable.
func (b *Backend) Health(ctx context.Context) error {
	if err := backends.ContextError(scheme, "health", "", ctx); err != nil {
		return err
	}
	if b.isClosed() {
		return backends.Errorf(scheme, "health", "", backends.ErrUnavailable, "backend is closed")
	}
	if _, err := os.Stat(b.path); err != nil {
		return backends.NewError(scheme, "health", "", backends.ErrUnavailable, err)
	}
	return nil
}

func (b *Backend) destroyKeys() {
	for name, k := range b.keys {
		k.destroy()
		delete(b.keys, name)
	}
}

// Close zeroes every key and releases the keystore lock.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.destroyKeys()
	return b.lock.Close()
}
