package managed

import (
	"context"

	"github.com/keybroker/keybroker/secret"
)

// byID drives an Ops by key id the way package pipeline does (without
// policy and audit): resolve the id once, CheckUsable, CheckDecryptVersion,
// then the operation on the resolved key. (internal/byid does the same
// for the other packages' tests; this package's tests cannot import it.)
type byID struct {
	*Ops
	keys KeySource
}

func (o byID) key(ctx context.Context, id string, op Operation, v uint32, checkVersion bool) (*Key, error) {
	k, err := o.keys.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := CheckUsable(k, op); err != nil {
		return nil, err
	}
	if checkVersion {
		if err := k.CheckDecryptVersion(k.At(v)); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (o byID) Encrypt(ctx context.Context, id string, pt []byte, ectx map[string]string) ([]byte, *Key, error) {
	k, err := o.key(ctx, id, OpEncrypt, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.Ops.Encrypt(ctx, k, pt, ectx)
	return out.Ciphertext, out.Key, err
}

func (o byID) Decrypt(ctx context.Context, ct []byte, ectx map[string]string, expectKey string) ([]byte, *Key, uint32, error) {
	h, body, err := ParseCiphertext(ct)
	if err != nil {
		return nil, nil, 0, err
	}
	if expectKey != "" && expectKey != h.KeyID {
		return nil, nil, 0, Errorf(ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, expectKey)
	}
	k, err := o.key(ctx, h.KeyID, OpDecrypt, h.Version, true)
	if err != nil {
		return nil, nil, 0, err
	}
	out, err := o.Ops.Decrypt(ctx, k, h, body, ectx)
	return out.Plaintext, out.Key, out.Version, err
}

func (o byID) GenerateDataKey(ctx context.Context, id string, ectx map[string]string, wrapped bool) (*DataKey, error) {
	k, err := o.key(ctx, id, OpEncrypt, 0, false)
	if err != nil {
		return nil, err
	}
	return o.Ops.GenerateDataKey(ctx, k, ectx, wrapped)
}

func (o byID) DecryptDataKey(ctx context.Context, id string, v uint32, wrapped []byte, ectx map[string]string) (*secret.Bytes, *Key, error) {
	k, err := o.key(ctx, id, OpDecryptDataKey, v, true)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.Ops.DecryptDataKey(ctx, k, v, wrapped, ectx)
	return out.Plaintext, out.Key, err
}

func (o byID) Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *Key, error) {
	k, err := o.key(ctx, id, OpSign, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.Ops.Sign(ctx, k, msg, digest)
	return out.Signature, out.Key, err
}

func (o byID) Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error) {
	k, err := o.key(ctx, id, OpPublicKey, v, true)
	if err != nil {
		return false, 0, err
	}
	out, err := o.Ops.Verify(ctx, k, k.At(v), msg, digest, sig)
	return out.Valid, out.Version, err
}

func (o byID) GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *Key, error) {
	k, err := o.key(ctx, id, OpGenerateMac, 0, false)
	if err != nil {
		return nil, nil, err
	}
	out, err := o.Ops.GenerateMac(ctx, k, msg)
	return out.Tag, out.Key, err
}

func (o byID) VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error) {
	k, err := o.key(ctx, id, OpVerifyMac, v, true)
	if err != nil {
		return false, 0, err
	}
	out, err := o.Ops.VerifyMac(ctx, k, k.At(v), msg, tag)
	return out.Valid, out.Version, err
}
