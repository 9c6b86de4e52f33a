package pipeline

import (
	"context"
	"fmt"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// The AWS External Key Store operations (package xks): AES-256-GCM with a
// per-version subkey of an AES key (managed.Ops.XKSEncrypt), authorized
// as Encrypt and Decrypt on the key and audited like any call. A node's
// Performer serves them when it implements managed.XKSOperations (the
// central tier's, whose broker.Service embeds managed.Ops); elsewhere they
// are refused with ErrFailedPrecondition. They are never forwarded: the
// key's state, type and version are checked here, always.

// XKSEncryptInput is an XKS encrypt request.
type XKSEncryptInput struct {
	KeyID          string
	Plaintext, AAD []byte
	// Detail goes into the audit line (the front-end's request metadata).
	Detail string
}

// XKSDecryptInput is an XKS decrypt request.
type XKSDecryptInput struct {
	KeyID string
	// Metadata is the ciphertextMetadata XKSEncrypt returned: it names
	// the version (managed.ParseXKSMetadata).
	AAD, Metadata, IV, Ciphertext, Tag []byte
	Detail                             string
}

// checkXKSKey refuses keys without an XKS subkey: other types than AES,
// and backend-mode keys.
func checkXKSKey(k *managed.Key) error {
	if k.Type != managed.AES256GCM || !k.Mode.HoldsMaterial() {
		return &managed.Error{Kind: managed.ErrInvalidArgument, Op: "XKS", Key: k.ID, Err: fmt.Errorf("%w: key %q is a %s %s-mode key", managed.ErrXKSKeyUsage, k.ID, k.Type, k.Mode)}
	}
	return nil
}

func (p *Pipeline) xksOps(k *managed.Key) (managed.XKSOperations, error) {
	ops, ok := p.perf.(managed.XKSOperations)
	if !ok {
		return nil, managed.Errorf(managed.ErrFailedPrecondition, "this node does not serve XKS operations on key %q", k.ID)
	}
	return ops, nil
}

// XKSEncrypt seals under the primary version of the key in.KeyID names.
func (p *Pipeline) XKSEncrypt(ctx context.Context, caller Caller, in XKSEncryptInput) (managed.XKSSealed, error) {
	return KeyCall(ctx, p, caller, policy.Encrypt, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.XKSSealed, error) {
		c.SetDetail(in.Detail)
		if err := checkXKSKey(k); err != nil {
			return managed.XKSSealed{}, err
		}
		if err := managed.CheckUsable(k, managed.OpEncrypt); err != nil {
			return managed.XKSSealed{}, err
		}
		ops, err := p.xksOps(k)
		if err != nil {
			return managed.XKSSealed{}, err
		}
		out, err := ops.XKSEncrypt(ctx, k, in.Plaintext, in.AAD)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// XKSDecrypt opens with the version in.Metadata names, which must be one
// the key still decrypts with (Key.CheckDecryptVersion).
func (p *Pipeline) XKSDecrypt(ctx context.Context, caller Caller, in XKSDecryptInput) (managed.Decrypted, error) {
	return KeyCall(ctx, p, caller, policy.Decrypt, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Decrypted, error) {
		c.SetDetail(in.Detail)
		if err := checkXKSKey(k); err != nil {
			return managed.Decrypted{}, err
		}
		if err := managed.CheckUsable(k, managed.OpDecrypt); err != nil {
			return managed.Decrypted{}, err
		}
		v, err := managed.ParseXKSMetadata(in.Metadata)
		if err != nil {
			return managed.Decrypted{}, err
		}
		c.SetVersion(v)
		if k.Version(v) == nil {
			return managed.Decrypted{}, &managed.Error{Kind: managed.ErrInvalidArgument, Op: "XKSDecrypt", Key: k.ID,
				Err: fmt.Errorf("%w: the ciphertextMetadata names version %d, which the key does not have", managed.ErrBadCiphertext, v)}
		}
		if err := k.CheckDecryptVersion(v); err != nil {
			return managed.Decrypted{}, err
		}
		ops, err := p.xksOps(k)
		if err != nil {
			return managed.Decrypted{}, err
		}
		return ops.XKSDecrypt(ctx, k, v, in.AAD, in.Metadata, in.IV, in.Ciphertext, in.Tag)
	})
}
