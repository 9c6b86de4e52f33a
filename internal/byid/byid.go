// Package byid drives key operations by key id, the way package pipeline
// does without the policy and the audit: resolve the id once, check the
// key is usable for the operation (managed.CheckUsable, and
// Key.CheckDecryptVersion for the version named), then perform on the
// resolved key. Tests of the performers (managed.Ops, broker.Service, an
// edge's cache) use it to keep naming keys by id.
package byid

import (
	"context"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// Performer is what Ops does, on resolved keys, plus a way to resolve
// them.
type Performer interface {
	Get(ctx context.Context, id string) (*managed.Key, error)
	managed.KeyOperations
}

// Remote is what a performer that forwards some operations implements
// (pipeline.Forwarder): the checks of an operation it forwards are the
// central tier's.
type Remote interface {
	Forwards(k *managed.Key, op managed.Operation, v uint32) bool
}

// Ops performs by id on P.
type Ops struct{ P Performer }

func (o Ops) key(ctx context.Context, id string, op managed.Operation, v uint32, checkVersion bool) (*managed.Key, error) {
	k, err := o.P.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r, ok := o.P.(Remote); ok && r.Forwards(k, op, v) {
		return k, nil
	}
	if err := managed.CheckUsable(k, op); err != nil {
		return nil, err
	}
	if checkVersion {
		if err := k.CheckDecryptVersion(k.At(v)); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Encrypt is the old Encrypt by id.
func (o Ops) Encrypt(ctx context.Context, id string, pt []byte, ectx map[string]string) ([]byte, *managed.Key, error) {
	k, err := o.key(ctx, id, managed.OpEncrypt, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.P.Encrypt(ctx, k, pt, ectx)
	return out.Ciphertext, out.Key, err
}

// Decrypt opens ct, checking it names expectKey when set.
func (o Ops) Decrypt(ctx context.Context, ct []byte, ectx map[string]string, expectKey string) ([]byte, *managed.Key, uint32, error) {
	h, body, err := managed.ParseCiphertext(ct)
	if err != nil {
		return nil, nil, 0, err
	}
	if expectKey != "" && expectKey != h.KeyID {
		return nil, nil, 0, managed.Errorf(managed.ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, expectKey)
	}
	k, err := o.key(ctx, h.KeyID, managed.OpDecrypt, h.Version, true)
	if err != nil {
		return nil, nil, 0, err
	}
	out, err := o.P.Decrypt(ctx, k, h, body, ectx)
	return out.Plaintext, out.Key, out.Version, err
}

// GenerateDataKey by id.
func (o Ops) GenerateDataKey(ctx context.Context, id string, ectx map[string]string, wrapped bool) (*managed.DataKey, error) {
	k, err := o.key(ctx, id, managed.OpEncrypt, 0, false)
	if err != nil {
		return nil, err
	}
	return o.P.GenerateDataKey(ctx, k, ectx, wrapped)
}

// DecryptDataKey by id.
func (o Ops) DecryptDataKey(ctx context.Context, id string, v uint32, wrapped []byte, ectx map[string]string) (*secret.Bytes, *managed.Key, error) {
	k, err := o.key(ctx, id, managed.OpDecryptDataKey, v, true)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.P.DecryptDataKey(ctx, k, v, wrapped, ectx)
	return out.Plaintext, out.Key, err
}

// Sign by id.
func (o Ops) Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *managed.Key, error) {
	k, err := o.key(ctx, id, managed.OpSign, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.P.Sign(ctx, k, msg, digest)
	return out.Signature, out.Key, err
}

// PublicKey by id.
func (o Ops) PublicKey(ctx context.Context, id string, v uint32) ([]byte, *managed.Key, uint32, error) {
	k, err := o.key(ctx, id, managed.OpPublicKey, v, true)
	if err != nil {
		return nil, nil, 0, err
	}
	out, err := o.P.PublicKey(ctx, k, k.At(v))
	return out.DER, out.Key, out.Version, err
}

// Verify by id.
func (o Ops) Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error) {
	k, err := o.key(ctx, id, managed.OpPublicKey, v, true)
	if err != nil {
		return false, 0, err
	}
	out, err := o.P.Verify(ctx, k, k.At(v), msg, digest, sig)
	return out.Valid, out.Version, err
}

// GenerateMac by id.
func (o Ops) GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *managed.Key, error) {
	k, err := o.key(ctx, id, managed.OpGenerateMac, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.P.GenerateMac(ctx, k, msg)
	return out.Tag, out.Key, err
}

// VerifyMac by id.
func (o Ops) VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error) {
	k, err := o.key(ctx, id, managed.OpVerifyMac, v, true)
	if err != nil {
		return false, 0, err
	}
	out, err := o.P.VerifyMac(ctx, k, k.At(v), msg, tag)
	return out.Valid, out.Version, err
}
