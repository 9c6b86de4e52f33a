package rpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// MaxBatch is the most items in one batch request.
const MaxBatch = 1000

type keyBroker struct {
	kbv1.UnimplementedKeyBrokerServer
	s *Server
}

// Invalid is an InvalidArgument status.
func Invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// CheckKeyID refuses a malformed key id.
func CheckKeyID(id string) error {
	if !envelope.ValidKeyID(id) {
		return Invalid("key_id %s must be 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", clip.Quote(id))
	}
	return nil
}

// KeyOp runs one key operation: begin, check the id, authorize, run, end.
func KeyOp[T any](ctx context.Context, s *Server, op policy.Action, keyID string, run func(c *Call, k *managed.Key) (T, error)) (T, error) {
	var zero T
	c, err := s.Begin(ctx, op, keyID)
	if err != nil {
		return zero, err
	}
	if err := CheckKeyID(keyID); err != nil {
		return zero, c.End(err)
	}
	k, err := c.AuthorizeKey(op)
	if err != nil {
		return zero, c.End(err)
	}
	out, err := run(c, k)
	if err != nil {
		return zero, c.End(err)
	}
	return out, c.End(nil)
}

func (b *keyBroker) Encrypt(ctx context.Context, r *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	return b.s.encrypt(ctx, r, policy.Encrypt)
}

// encrypt seals under the key r names, authorized as op: Encrypt, or
// ReEncrypt for the destination of a ReEncrypt.
func (s *Server) encrypt(ctx context.Context, r *kbv1.EncryptRequest, op policy.Action) (*kbv1.EncryptResponse, error) {
	return KeyOp(ctx, s, op, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.EncryptResponse, error) {
		ct, k, err := s.node.Encrypt(c.Ctx, r.GetKeyId(), r.GetPlaintext(), r.GetEncryptionContext())
		if err != nil {
			return nil, err
		}
		c.Rec.Version = k.Primary
		return &kbv1.EncryptResponse{Ciphertext: ct, KeyId: k.ID, KeyVersion: k.Primary}, nil
	})
}

func (b *keyBroker) Decrypt(ctx context.Context, r *kbv1.DecryptRequest) (*kbv1.DecryptResponse, error) {
	return b.s.decrypt(ctx, r, policy.Decrypt)
}

// decrypt opens a ciphertext, authorized as op on the key it names:
// Decrypt, or ReEncrypt for the source of a ReEncrypt.
func (s *Server) decrypt(ctx context.Context, r *kbv1.DecryptRequest, op policy.Action) (*kbv1.DecryptResponse, error) {
	// The key to authorize is the one the ciphertext names.
	keyID, _, err := managed.PeekKeyID(r.GetCiphertext())
	if err != nil {
		c, berr := s.Begin(ctx, op, "")
		if berr != nil {
			return nil, berr
		}
		return nil, c.End(err)
	}
	return KeyOp(ctx, s, op, keyID, func(c *Call, _ *managed.Key) (*kbv1.DecryptResponse, error) {
		pt, k, v, err := s.node.Decrypt(c.Ctx, r.GetCiphertext(), r.GetEncryptionContext(), r.GetKeyId())
		c.Rec.Version = v
		if err != nil {
			return nil, err
		}
		return &kbv1.DecryptResponse{Plaintext: pt, KeyId: k.ID, KeyVersion: v}, nil
	})
}

// ReEncrypt needs the ReEncrypt action on both keys, as AWS KMS needs
// ReEncryptFrom on the source and ReEncryptTo on the destination: the
// plaintext never leaves the node, so neither Decrypt nor Encrypt is asked,
// and a grant of Decrypt alone does not let a caller move ciphertexts under
// a key of its choosing. Each key's decision is its own audit line
// (operation ReEncrypt), both under the call's request id.
func (b *keyBroker) ReEncrypt(ctx context.Context, r *kbv1.ReEncryptRequest) (*kbv1.ReEncryptResponse, error) {
	dec, err := b.s.decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: r.GetCiphertext(), EncryptionContext: r.GetSourceEncryptionContext()}, policy.ReEncrypt)
	if err != nil {
		return nil, err
	}
	defer clear(dec.Plaintext)
	dst := r.GetDestinationKeyId()
	if dst == "" {
		dst = dec.KeyId
	}
	enc, err := b.s.encrypt(ctx, &kbv1.EncryptRequest{KeyId: dst, Plaintext: dec.Plaintext, EncryptionContext: r.GetDestinationEncryptionContext()}, policy.ReEncrypt)
	if err != nil {
		return nil, err
	}
	return &kbv1.ReEncryptResponse{Ciphertext: enc.Ciphertext, SourceKeyId: dec.KeyId, SourceKeyVersion: dec.KeyVersion,
		KeyId: enc.KeyId, KeyVersion: enc.KeyVersion}, nil
}

func (s *Server) generateDataKey(ctx context.Context, r *kbv1.GenerateDataKeyRequest, withPlaintext bool) (*kbv1.GenerateDataKeyResponse, error) {
	op := policy.GenerateDataKey
	if !withPlaintext {
		op = policy.GenerateDataKeyWithoutPlaintext
	}
	return KeyOp(ctx, s, op, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.GenerateDataKeyResponse, error) {
		dk, err := s.node.GenerateDataKey(c.Ctx, r.GetKeyId(), r.GetEncryptionContext(), withPlaintext)
		if err != nil {
			return nil, err
		}
		defer dk.Plaintext.Destroy()
		c.Rec.Version = dk.Key.Primary
		out := &kbv1.GenerateDataKeyResponse{EncryptedDataKey: dk.Encrypted, KeyId: dk.Key.ID, KeyVersion: dk.Key.Primary}
		if withPlaintext {
			out.Plaintext = append([]byte(nil), dk.Plaintext.Reveal()...)
			out.WrappedDataKey = dk.Wrapped
		}
		return out, nil
	})
}

func (b *keyBroker) DecryptDataKey(ctx context.Context, r *kbv1.DecryptDataKeyRequest) (*kbv1.DecryptDataKeyResponse, error) {
	return KeyOp(ctx, b.s, policy.DecryptDataKey, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.DecryptDataKeyResponse, error) {
		c.Rec.Version = r.GetKeyVersion()
		dek, k, err := b.s.node.DecryptDataKey(c.Ctx, r.GetKeyId(), r.GetKeyVersion(), r.GetWrappedDataKey(), r.GetEncryptionContext())
		if err != nil {
			return nil, err
		}
		defer dek.Destroy()
		return &kbv1.DecryptDataKeyResponse{Plaintext: append([]byte(nil), dek.Reveal()...), KeyId: k.ID, KeyVersion: r.GetKeyVersion()}, nil
	})
}

func (b *keyBroker) GenerateDataKey(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	return b.s.generateDataKey(ctx, r, true)
}

func (b *keyBroker) GenerateDataKeyWithoutPlaintext(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	return b.s.generateDataKey(ctx, r, false)
}

func signInput(message, digest []byte) ([]byte, bool, error) {
	switch {
	case len(message) > 0 && len(digest) > 0:
		return nil, false, Invalid("give message or digest, not both")
	case len(digest) > 0:
		return digest, true, nil
	case len(message) > 0:
		return message, false, nil
	}
	return nil, false, Invalid("give a message or a digest")
}

func (b *keyBroker) Sign(ctx context.Context, r *kbv1.SignRequest) (*kbv1.SignResponse, error) {
	return KeyOp(ctx, b.s, policy.Sign, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.SignResponse, error) {
		in, digest, err := signInput(r.GetMessage(), r.GetDigest())
		if err != nil {
			return nil, err
		}
		sig, k, err := b.s.node.Sign(c.Ctx, r.GetKeyId(), in, digest)
		if err != nil {
			return nil, err
		}
		c.Rec.Version = k.Primary
		return &kbv1.SignResponse{Signature: sig, KeyId: k.ID, KeyVersion: k.Primary}, nil
	})
}

func (b *keyBroker) Verify(ctx context.Context, r *kbv1.VerifyRequest) (*kbv1.VerifyResponse, error) {
	return KeyOp(ctx, b.s, policy.Verify, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.VerifyResponse, error) {
		in, digest, err := signInput(r.GetMessage(), r.GetDigest())
		if err != nil {
			return nil, err
		}
		ok, v, err := b.s.node.Verify(c.Ctx, r.GetKeyId(), r.GetKeyVersion(), in, digest, r.GetSignature())
		c.Rec.Version = v
		if err != nil {
			return nil, err
		}
		return &kbv1.VerifyResponse{Valid: ok, KeyVersion: v}, nil
	})
}

func (b *keyBroker) GetPublicKey(ctx context.Context, r *kbv1.GetPublicKeyRequest) (*kbv1.GetPublicKeyResponse, error) {
	return KeyOp(ctx, b.s, policy.GetPublicKey, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.GetPublicKeyResponse, error) {
		der, k, v, err := b.s.node.PublicKey(c.Ctx, r.GetKeyId(), r.GetKeyVersion())
		if err != nil {
			return nil, err
		}
		c.Rec.Version = v
		return &kbv1.GetPublicKeyResponse{PublicKey: der, KeyType: typeToProto[k.Type], KeyId: k.ID, KeyVersion: v}, nil
	})
}

func (b *keyBroker) GenerateMac(ctx context.Context, r *kbv1.GenerateMacRequest) (*kbv1.GenerateMacResponse, error) {
	return KeyOp(ctx, b.s, policy.GenerateMac, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.GenerateMacResponse, error) {
		tag, k, err := b.s.node.GenerateMac(c.Ctx, r.GetKeyId(), r.GetMessage())
		if err != nil {
			return nil, err
		}
		c.Rec.Version = k.Primary
		return &kbv1.GenerateMacResponse{Mac: tag, KeyId: k.ID, KeyVersion: k.Primary}, nil
	})
}

func (b *keyBroker) VerifyMac(ctx context.Context, r *kbv1.VerifyMacRequest) (*kbv1.VerifyMacResponse, error) {
	return KeyOp(ctx, b.s, policy.VerifyMac, r.GetKeyId(), func(c *Call, _ *managed.Key) (*kbv1.VerifyMacResponse, error) {
		ok, v, err := b.s.node.VerifyMac(c.Ctx, r.GetKeyId(), r.GetKeyVersion(), r.GetMessage(), r.GetMac())
		c.Rec.Version = v
		if err != nil {
			return nil, err
		}
		return &kbv1.VerifyMacResponse{Valid: ok, KeyVersion: v}, nil
	})
}

func (b *keyBroker) GenerateRandom(ctx context.Context, r *kbv1.GenerateRandomRequest) (*kbv1.GenerateRandomResponse, error) {
	c, err := b.s.Begin(ctx, policy.GenerateRandom, "")
	if err != nil {
		return nil, err
	}
	if err := c.AuthorizeService(policy.GenerateRandom); err != nil {
		return nil, c.End(err)
	}
	out, err := b.s.node.GenerateRandom(c.Ctx, int(r.GetLength()))
	if err != nil {
		return nil, c.End(err)
	}
	return &kbv1.GenerateRandomResponse{Random: out}, c.End(nil)
}

func (b *keyBroker) DescribeKey(ctx context.Context, r *kbv1.DescribeKeyRequest) (*kbv1.DescribeKeyResponse, error) {
	return KeyOp(ctx, b.s, policy.DescribeKey, r.GetKeyId(), func(c *Call, k *managed.Key) (*kbv1.DescribeKeyResponse, error) {
		return &kbv1.DescribeKeyResponse{Key: c.KeyToProto(k)}, nil
	})
}

// ListKeys answers only the keys the caller may DescribeKey: each key the
// selector matches is put to the policy (a warm key costs a map lookup in
// the decision cache), and a page is filled from those the caller may see.
// The next-page token is the id of the page's last key, one the caller was
// just shown, so neither the token nor the page sizes say anything about
// keys it may not describe.
func (b *keyBroker) ListKeys(ctx context.Context, r *kbv1.ListKeysRequest) (*kbv1.ListKeysResponse, error) {
	c, err := b.s.Begin(ctx, policy.ListKeys, "")
	if err != nil {
		return nil, err
	}
	if err := c.AuthorizeService(policy.ListKeys); err != nil {
		return nil, c.End(err)
	}
	set := b.s.policy.Current()
	principal := c.Principal()
	visible := func(k *managed.Key) bool {
		return b.s.decisions.decide(set, c.Who, policy.DescribeKey, k, func() policy.Decision {
			return set.AuthorizeKey(principal, policy.DescribeKey, k.PolicyKey())
		}).Allowed
	}
	keys, next, err := b.s.node.ListKeys(ctx, r.GetLabelSelector(), int(r.GetPageSize()), r.GetPageToken(), visible)
	if err != nil {
		return nil, c.End(err)
	}
	out := &kbv1.ListKeysResponse{NextPageToken: next}
	for _, k := range keys {
		out.Keys = append(out.Keys, c.KeyToProto(k))
	}
	return out, c.End(nil)
}

// LookupKey answers from this node's view of the cluster: the nodes able
// to perform the operation on the key now, best first, with why each
// qualifies.
func (b *keyBroker) LookupKey(ctx context.Context, r *kbv1.LookupKeyRequest) (*kbv1.LookupKeyResponse, error) {
	return KeyOp(ctx, b.s, policy.LookupKey, r.GetKeyId(), func(c *Call, k *managed.Key) (*kbv1.LookupKeyResponse, error) {
		op, ok := operationAction(r.GetOperation())
		if !ok {
			return nil, Invalid("operation is required: one of encrypt, decrypt, re-encrypt, generate-data-key, sign, verify, get-public-key, generate-mac, verify-mac, describe-key")
		}
		nodes, err := b.s.node.LookupKey(c.Ctx, k, op, r.GetClientLabels())
		if err != nil {
			return nil, err
		}
		return &kbv1.LookupKeyResponse{Nodes: lookupToProto(nodes)}, nil
	})
}

func (s *Server) itemError(err error) *kbv1.ItemError {
	st := s.Status(err)
	return &kbv1.ItemError{Code: int32(st.Code()), Message: st.Message()}
}

// checkBatch refuses a malformed batch; the refusal is audited like any
// other call.
func (s *Server) checkBatch(ctx context.Context, op string, n int) error {
	if n > 0 && n <= MaxBatch {
		return nil
	}
	c, err := s.Begin(ctx, policy.Action(op), "")
	if err != nil {
		return err
	}
	return c.End(Invalid("a batch holds 1..%d items, not %d", MaxBatch, n))
}

func (b *keyBroker) BatchEncrypt(ctx context.Context, r *kbv1.BatchEncryptRequest) (*kbv1.BatchEncryptResponse, error) {
	if err := b.s.checkBatch(ctx, "BatchEncrypt", len(r.GetItems())); err != nil {
		return nil, err
	}
	out := &kbv1.BatchEncryptResponse{}
	for _, it := range r.GetItems() {
		resp, err := b.s.encrypt(ctx, it, policy.Encrypt)
		if err != nil && isFatal(err) {
			return nil, err
		}
		res := &kbv1.BatchEncryptResult{Response: resp}
		if err != nil {
			res.Error = b.s.itemError(err)
		}
		out.Results = append(out.Results, res)
	}
	return out, nil
}

func (b *keyBroker) BatchDecrypt(ctx context.Context, r *kbv1.BatchDecryptRequest) (*kbv1.BatchDecryptResponse, error) {
	if err := b.s.checkBatch(ctx, "BatchDecrypt", len(r.GetItems())); err != nil {
		return nil, err
	}
	out := &kbv1.BatchDecryptResponse{}
	for _, it := range r.GetItems() {
		resp, err := b.s.decrypt(ctx, it, policy.Decrypt)
		if err != nil && isFatal(err) {
			return nil, err
		}
		res := &kbv1.BatchDecryptResult{Response: resp}
		if err != nil {
			res.Error = b.s.itemError(err)
		}
		out.Results = append(out.Results, res)
	}
	return out, nil
}

func (b *keyBroker) BatchGenerateDataKey(ctx context.Context, r *kbv1.BatchGenerateDataKeyRequest) (*kbv1.BatchGenerateDataKeyResponse, error) {
	if err := b.s.checkBatch(ctx, "BatchGenerateDataKey", len(r.GetItems())); err != nil {
		return nil, err
	}
	out := &kbv1.BatchGenerateDataKeyResponse{}
	for _, it := range r.GetItems() {
		resp, err := b.s.generateDataKey(ctx, it, !r.GetWithoutPlaintext())
		if err != nil && isFatal(err) {
			return nil, err
		}
		res := &kbv1.BatchGenerateDataKeyResult{Response: resp}
		if err != nil {
			res.Error = b.s.itemError(err)
		}
		out.Results = append(out.Results, res)
	}
	return out, nil
}

// isFatal reports errors that end a whole batch: the caller is gone or the
// audit log is down.
func isFatal(err error) bool {
	c := status.Code(err)
	return c == codes.Unauthenticated || c == codes.Canceled || c == codes.DeadlineExceeded || errors.Is(err, ErrAuditDown)
}
