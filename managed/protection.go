package managed

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/secret"
)

// protection performs the operations that differ by where a key's material
// lives: wrapping and unwrapping data keys, signing and MACs. Ops chooses
// one per key, once (Ops.protect), so the operations never branch on the
// key's mode. Verify needs no protection: it checks against the stored
// public key whatever the mode.
//
// Both implementations are values made once in New and kept in Ops, so
// choosing one per call allocates nothing.
type protection interface {
	// wrapDataKey wraps dek for a ciphertext header under version v of k.
	// ectx selects the per-context key of a derived key.
	wrapDataKey(ctx context.Context, k *Key, v uint32, ectx map[string]string, dek []byte) ([]byte, error)
	// unwrapDataKey opens the data key of h (version h.Version of k); a
	// data key that does not open is an ErrInvalidArgument.
	unwrapDataKey(ctx context.Context, k *Key, h *envelope.Header, ectx map[string]string) (*envelope.DataKey, error)
	// sign signs input: the message (Ed25519) or its SHA-256 digest
	// (ECDSA P-256).
	sign(ctx context.Context, k *Key, v uint32, input []byte) ([]byte, error)
	// mac computes HMAC-SHA256 of msg with version v.
	mac(ctx context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error)
	// macInputLimit is the longest message mac takes for k.
	macInputLimit(k *Key) int
	// ready reports whether this node can use k at all, so that a data
	// key is counted against its version only when it can be wrapped.
	ready(k *Key) error
}

var (
	_ protection = byMaterial{}
	_ protection = byBackend{}
)

// protect is k's protection: its root of trust for backend-mode keys,
// local crypto on the key's material otherwise.
func (o *Ops) protect(k *Key) protection {
	if k.Mode.HoldsMaterial() {
		return o.byMaterial
	}
	return o.byBackend
}

// byMaterial protects derive- and wrap-mode keys: their 32 bytes of
// material come from the MaterialSource and every operation is local
// crypto.
type byMaterial struct{ mat MaterialSource }

// kek is the key that wraps data keys of version v: the material, or for
// derived keys the per-context key. The caller destroys it.
func (p byMaterial) kek(ctx context.Context, k *Key, v uint32, ectx map[string]string) (*secret.Bytes, error) {
	m, err := p.mat.Material(ctx, k, v)
	if err != nil {
		return nil, err
	}
	kek, err := envelope.KEK(m, k.Derived, ectx)
	if kek != m {
		m.Destroy()
	}
	if err != nil {
		return nil, Errorf(ErrInvalidArgument, "%w", err)
	}
	return kek, nil
}

func (p byMaterial) wrapDataKey(ctx context.Context, k *Key, v uint32, ectx map[string]string, dek []byte) ([]byte, error) {
	kek, err := p.kek(ctx, k, v, ectx)
	if err != nil {
		return nil, err
	}
	defer kek.Destroy()
	return envelope.WrapDataKeyWithSalt(kek, k.ID, v, k.Salt, dek)
}

func (p byMaterial) unwrapDataKey(ctx context.Context, k *Key, h *envelope.Header, ectx map[string]string) (*envelope.DataKey, error) {
	kek, err := p.kek(ctx, k, h.Version, ectx)
	if err != nil {
		return nil, err
	}
	defer kek.Destroy()
	dk, err := envelope.UnwrapDataKeyWithSalt(kek, k.ID, h.Version, k.Salt, h.WrappedDEK)
	if errors.Is(err, envelope.ErrDecrypt) {
		return nil, &Error{Kind: ErrInvalidArgument, Err: ErrBadCiphertext}
	}
	return dk, err
}

func (p byMaterial) sign(ctx context.Context, k *Key, v uint32, input []byte) ([]byte, error) {
	m, err := p.mat.Material(ctx, k, v)
	if err != nil {
		return nil, err
	}
	sk, err := SigningKey(k.Type, m)
	m.Destroy()
	if err != nil {
		return nil, err
	}
	if k.Type == Ed25519 {
		return sk.Sign(nil, input, crypto.Hash(0))
	}
	return sk.Sign(rand.Reader, input, crypto.SHA256)
}

func (p byMaterial) mac(ctx context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error) {
	material, err := p.mat.Material(ctx, k, v)
	if err != nil {
		return nil, err
	}
	defer material.Destroy()
	h := hmac.New(sha256.New, material.Reveal())
	h.Write(msg)
	return secret.New(h.Sum(nil)), nil
}

func (byMaterial) macInputLimit(*Key) int { return MaxSignInput }

func (byMaterial) ready(*Key) error { return nil }

// byBackend protects backend-mode keys: their material never leaves the
// root of trust, which performs every operation. Only the central tier has
// a Backend; with none (an edge) every operation is refused with
// ErrFailedPrecondition.
type byBackend struct{ b Backend }

func (p byBackend) ready(k *Key) error { return p.need(k) }

func (p byBackend) need(k *Key) error {
	if p.b == nil {
		return Errorf(ErrFailedPrecondition, "key %q is a backend-mode key: only the central tier can use it", k.ID)
	}
	return nil
}

func (p byBackend) wrapDataKey(ctx context.Context, k *Key, v uint32, _ map[string]string, dek []byte) ([]byte, error) {
	if err := p.need(k); err != nil {
		return nil, err
	}
	return p.b.WrapDataKey(ctx, k, v, dek)
}

func (p byBackend) unwrapDataKey(ctx context.Context, k *Key, h *envelope.Header, _ map[string]string) (*envelope.DataKey, error) {
	if err := p.need(k); err != nil {
		return nil, err
	}
	dek, err := p.b.UnwrapDataKey(ctx, k, h.Version, h.WrappedDEK)
	if err != nil {
		return nil, err
	}
	return envelope.NewDataKey(k.ID, h.Version, dek, append([]byte(nil), h.WrappedDEK...))
}

func (p byBackend) sign(ctx context.Context, k *Key, v uint32, input []byte) ([]byte, error) {
	if err := p.need(k); err != nil {
		return nil, err
	}
	return p.b.Sign(ctx, k, v, input)
}

func (p byBackend) mac(ctx context.Context, k *Key, v uint32, msg []byte) (*secret.Bytes, error) {
	if err := p.need(k); err != nil {
		return nil, err
	}
	return p.b.MAC(ctx, k, v, msg)
}

// macInputLimit is the roots of trust's 4 KiB less the domain prefix the
// backend MACs with the message (BackendMACInput).
func (byBackend) macInputLimit(k *Key) int {
	return MaxBackendMACInput - len(k.Input(DomainBackendMAC, k.Primary))
}
