package rpc

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
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

// CheckKeyID refuses a malformed key id (pipeline.CheckKeyID).
func CheckKeyID(id string) error { return pipeline.CheckKeyID(id) }

// call runs one pipeline operation for the caller in ctx and turns its
// error into what the caller is told (answer): every handler is build the
// Caller, convert, call the pipeline, convert.
func call[In, Out any](ctx context.Context, s *Server, op policy.Action, key string, in In, run func(context.Context, pipeline.Caller, In) (Out, error)) (Out, error) {
	caller, err := CallerOf(ctx)
	if err != nil {
		var zero Out
		return zero, err
	}
	out, err := run(ctx, caller, in)
	return out, s.answer(caller, audit.Operation(op), key, err)
}

func (b *keyBroker) Encrypt(ctx context.Context, r *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	return b.s.encrypt(ctx, r)
}

func (s *Server) encrypt(ctx context.Context, r *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	out, err := call(ctx, s, policy.Encrypt, r.GetKeyId(), pipeline.EncryptInput{KeyID: r.GetKeyId(), Plaintext: r.GetPlaintext(), Context: r.GetEncryptionContext()}, s.pipe.Encrypt)
	if err != nil {
		return nil, err
	}
	return &kbv1.EncryptResponse{Ciphertext: out.Ciphertext, KeyId: out.Key.ID, KeyVersion: out.Version}, nil
}

func (b *keyBroker) Decrypt(ctx context.Context, r *kbv1.DecryptRequest) (*kbv1.DecryptResponse, error) {
	return b.s.decrypt(ctx, r)
}

func (s *Server) decrypt(ctx context.Context, r *kbv1.DecryptRequest) (*kbv1.DecryptResponse, error) {
	out, err := call(ctx, s, policy.Decrypt, r.GetKeyId(), pipeline.DecryptInput{Ciphertext: r.GetCiphertext(), Context: r.GetEncryptionContext(), KeyID: r.GetKeyId()}, s.pipe.Decrypt)
	if err != nil {
		return nil, err
	}
	return &kbv1.DecryptResponse{Plaintext: out.Plaintext, KeyId: out.Key.ID, KeyVersion: out.Version}, nil
}

// ReEncrypt needs the ReEncrypt action on both keys (pipeline.ReEncrypt).
func (b *keyBroker) ReEncrypt(ctx context.Context, r *kbv1.ReEncryptRequest) (*kbv1.ReEncryptResponse, error) {
	out, err := call(ctx, b.s, policy.ReEncrypt, r.GetDestinationKeyId(), pipeline.ReEncryptInput{Ciphertext: r.GetCiphertext(), SourceContext: r.GetSourceEncryptionContext(),
		DestinationKeyID: r.GetDestinationKeyId(), DestinationContext: r.GetDestinationEncryptionContext()}, b.s.pipe.ReEncrypt)
	if err != nil {
		return nil, err
	}
	return &kbv1.ReEncryptResponse{Ciphertext: out.Destination.Ciphertext, SourceKeyId: out.Source.Key.ID, SourceKeyVersion: out.Source.Version,
		KeyId: out.Destination.Key.ID, KeyVersion: out.Destination.Version}, nil
}

func (s *Server) generateDataKey(ctx context.Context, r *kbv1.GenerateDataKeyRequest, withPlaintext bool) (*kbv1.GenerateDataKeyResponse, error) {
	op := policy.GenerateDataKey
	if !withPlaintext {
		op = policy.GenerateDataKeyWithoutPlaintext
	}
	dk, err := call(ctx, s, op, r.GetKeyId(), pipeline.GenerateDataKeyInput{KeyID: r.GetKeyId(), Context: r.GetEncryptionContext(), WithPlaintext: withPlaintext}, s.pipe.GenerateDataKey)
	if err != nil {
		return nil, err
	}
	defer dk.Plaintext.Destroy()
	out := &kbv1.GenerateDataKeyResponse{EncryptedDataKey: dk.Encrypted, KeyId: dk.Key.ID, KeyVersion: dk.Version}
	if withPlaintext {
		out.Plaintext = append([]byte(nil), dk.Plaintext.Reveal()...)
		out.WrappedDataKey = dk.Wrapped
	}
	return out, nil
}

func (b *keyBroker) DecryptDataKey(ctx context.Context, r *kbv1.DecryptDataKeyRequest) (*kbv1.DecryptDataKeyResponse, error) {
	dek, err := call(ctx, b.s, policy.DecryptDataKey, r.GetKeyId(), pipeline.DecryptDataKeyInput{KeyID: r.GetKeyId(), Version: r.GetKeyVersion(),
		Wrapped: r.GetWrappedDataKey(), Context: r.GetEncryptionContext()}, b.s.pipe.DecryptDataKey)
	if err != nil {
		return nil, err
	}
	defer dek.Plaintext.Destroy()
	return &kbv1.DecryptDataKeyResponse{Plaintext: append([]byte(nil), dek.Plaintext.Reveal()...), KeyId: dek.Key.ID, KeyVersion: r.GetKeyVersion()}, nil
}

func (b *keyBroker) GenerateDataKey(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	return b.s.generateDataKey(ctx, r, true)
}

func (b *keyBroker) GenerateDataKeyWithoutPlaintext(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	return b.s.generateDataKey(ctx, r, false)
}

func (b *keyBroker) Sign(ctx context.Context, r *kbv1.SignRequest) (*kbv1.SignResponse, error) {
	out, err := call(ctx, b.s, policy.Sign, r.GetKeyId(), pipeline.SignInput{KeyID: r.GetKeyId(), Message: r.GetMessage(), Digest: r.GetDigest()}, b.s.pipe.Sign)
	if err != nil {
		return nil, err
	}
	return &kbv1.SignResponse{Signature: out.Signature, KeyId: out.Key.ID, KeyVersion: out.Version}, nil
}

func (b *keyBroker) Verify(ctx context.Context, r *kbv1.VerifyRequest) (*kbv1.VerifyResponse, error) {
	out, err := call(ctx, b.s, policy.Verify, r.GetKeyId(), pipeline.VerifyInput{KeyID: r.GetKeyId(), Version: r.GetKeyVersion(), Message: r.GetMessage(),
		Digest: r.GetDigest(), Signature: r.GetSignature()}, b.s.pipe.Verify)
	if err != nil {
		return nil, err
	}
	return &kbv1.VerifyResponse{Valid: out.Valid, KeyVersion: out.Version}, nil
}

func (b *keyBroker) GetPublicKey(ctx context.Context, r *kbv1.GetPublicKeyRequest) (*kbv1.GetPublicKeyResponse, error) {
	out, err := call(ctx, b.s, policy.GetPublicKey, r.GetKeyId(), pipeline.GetPublicKeyInput{KeyID: r.GetKeyId(), Version: r.GetKeyVersion()}, b.s.pipe.GetPublicKey)
	if err != nil {
		return nil, err
	}
	return &kbv1.GetPublicKeyResponse{PublicKey: out.DER, KeyType: wire.TypeToProto(out.Key.Type), KeyId: out.Key.ID, KeyVersion: out.Version}, nil
}

func (b *keyBroker) GenerateMac(ctx context.Context, r *kbv1.GenerateMacRequest) (*kbv1.GenerateMacResponse, error) {
	out, err := call(ctx, b.s, policy.GenerateMac, r.GetKeyId(), pipeline.GenerateMacInput{KeyID: r.GetKeyId(), Message: r.GetMessage()}, b.s.pipe.GenerateMac)
	if err != nil {
		return nil, err
	}
	return &kbv1.GenerateMacResponse{Mac: out.Tag, KeyId: out.Key.ID, KeyVersion: out.Version}, nil
}

func (b *keyBroker) VerifyMac(ctx context.Context, r *kbv1.VerifyMacRequest) (*kbv1.VerifyMacResponse, error) {
	out, err := call(ctx, b.s, policy.VerifyMac, r.GetKeyId(), pipeline.VerifyMacInput{KeyID: r.GetKeyId(), Version: r.GetKeyVersion(), Message: r.GetMessage(), Mac: r.GetMac()}, b.s.pipe.VerifyMac)
	if err != nil {
		return nil, err
	}
	return &kbv1.VerifyMacResponse{Valid: out.Valid, KeyVersion: out.Version}, nil
}

func (b *keyBroker) GenerateRandom(ctx context.Context, r *kbv1.GenerateRandomRequest) (*kbv1.GenerateRandomResponse, error) {
	out, err := call(ctx, b.s, policy.GenerateRandom, "", int(r.GetLength()), b.s.pipe.GenerateRandom)
	if err != nil {
		return nil, err
	}
	return &kbv1.GenerateRandomResponse{Random: out}, nil
}

func (b *keyBroker) DescribeKey(ctx context.Context, r *kbv1.DescribeKeyRequest) (*kbv1.DescribeKeyResponse, error) {
	caller, err := CallerOf(ctx)
	if err != nil {
		return nil, err
	}
	k, err := b.s.pipe.DescribeKey(ctx, caller, r.GetKeyId())
	if err != nil {
		return nil, b.s.answer(caller, audit.Operation(policy.DescribeKey), r.GetKeyId(), err)
	}
	return &kbv1.DescribeKeyResponse{Key: KeyMetadata(k, caller.Admin())}, nil
}

// ListKeys answers only the keys the caller may DescribeKey
// (pipeline.ListKeys).
func (b *keyBroker) ListKeys(ctx context.Context, r *kbv1.ListKeysRequest) (*kbv1.ListKeysResponse, error) {
	caller, err := CallerOf(ctx)
	if err != nil {
		return nil, err
	}
	page, err := b.s.pipe.ListKeys(ctx, caller, pipeline.ListKeysInput{Selector: r.GetLabelSelector(), PageSize: int(r.GetPageSize()), PageToken: r.GetPageToken()})
	if err != nil {
		return nil, b.s.answer(caller, audit.Operation(policy.ListKeys), "", err)
	}
	out := &kbv1.ListKeysResponse{NextPageToken: page.NextPageToken}
	for _, k := range page.Keys {
		out.Keys = append(out.Keys, KeyMetadata(k, caller.Admin()))
	}
	return out, nil
}

// LookupKey answers from this node's view of the cluster
// (pipeline.LookupKey).
func (b *keyBroker) LookupKey(ctx context.Context, r *kbv1.LookupKeyRequest) (*kbv1.LookupKeyResponse, error) {
	op, _ := operationAction(r.GetOperation())
	nodes, err := call(ctx, b.s, policy.LookupKey, r.GetKeyId(), pipeline.LookupKeyInput{KeyID: r.GetKeyId(), Operation: op, ClientLabels: r.GetClientLabels()}, b.s.pipe.LookupKey)
	if err != nil {
		return nil, err
	}
	return &kbv1.LookupKeyResponse{Nodes: lookupToProto(nodes)}, nil
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
	ctx, c, err := s.Begin(ctx, policy.Action(op), "")
	if err != nil {
		return err
	}
	return s.End(ctx, c, Invalid("a batch holds 1..%d items, not %d", MaxBatch, n))
}

func (b *keyBroker) BatchEncrypt(ctx context.Context, r *kbv1.BatchEncryptRequest) (*kbv1.BatchEncryptResponse, error) {
	if err := b.s.checkBatch(ctx, "BatchEncrypt", len(r.GetItems())); err != nil {
		return nil, err
	}
	out := &kbv1.BatchEncryptResponse{}
	for _, it := range r.GetItems() {
		resp, err := b.s.encrypt(ctx, it)
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
		resp, err := b.s.decrypt(ctx, it)
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
// audit log is down (errors.Is, never a message compare).
func isFatal(err error) bool {
	c := status.Code(err)
	return c == codes.Unauthenticated || c == codes.Canceled || c == codes.DeadlineExceeded || errors.Is(err, ErrAuditDown)
}

// KeyCall runs an operation on a key for the node's other gRPC services
// (the central tier's KeyAdmin) as the caller in ctx, through the
// pipeline's steps (pipeline.KeyCall), and turns its error into a status.
func KeyCall[T any](ctx context.Context, s *Server, op policy.Action, keyID string, perform func(ctx context.Context, c *pipeline.Call, k *managed.Key) (T, error)) (T, error) {
	caller, err := CallerOf(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	out, err := pipeline.KeyCall(ctx, s.pipe, caller, op, keyID, perform)
	return out, s.answer(caller, audit.Operation(op), keyID, err)
}
