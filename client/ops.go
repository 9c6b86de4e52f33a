package client

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
)

// Result names the key version an operation used.
type Result struct {
	KeyID   string
	Version uint32
}

// Ciphertext is the result of Encrypt and ReEncrypt.
type Ciphertext struct {
	Result
	Ciphertext []byte
}

// Encrypt seals plaintext (at most 4 MiB) under the key's primary version
// at the node that serves the key best. The encryption context is bound to
// the ciphertext and needed to decrypt it.
func (c *Client) Encrypt(ctx context.Context, key string, plaintext []byte, ectx map[string]string) (*Ciphertext, error) {
	return call(ctx, c, "Encrypt", key, kbv1.Operation_OPERATION_ENCRYPT, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*Ciphertext, error) {
		r, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: plaintext, EncryptionContext: ectx})
		if err != nil {
			return nil, err
		}
		return &Ciphertext{Result{r.KeyId, r.KeyVersion}, r.Ciphertext}, nil
	})
}

// Plaintext is the result of Decrypt.
type Plaintext struct {
	Result
	Plaintext []byte
}

// Decrypt opens a ciphertext sealed by any node or by an Encryptor,
// routed by the key its header names.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string) (*Plaintext, error) {
	h, _, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, invalid("Decrypt", "", err)
	}
	return call(ctx, c, "Decrypt", h.KeyID, kbv1.Operation_OPERATION_DECRYPT, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*Plaintext, error) {
		r, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ciphertext, EncryptionContext: ectx})
		if err != nil {
			return nil, err
		}
		return &Plaintext{Result{r.KeyId, r.KeyVersion}, r.Plaintext}, nil
	})
}

// ReEncrypt opens a ciphertext and seals its plaintext under key (which
// may be the same key, to move to its primary version) without the
// plaintext reaching the client.
func (c *Client) ReEncrypt(ctx context.Context, ciphertext []byte, srcCtx map[string]string, key string, dstCtx map[string]string) (*Ciphertext, error) {
	if _, _, err := envelope.ParseHeader(ciphertext); err != nil {
		return nil, invalid("ReEncrypt", "", err)
	}
	return call(ctx, c, "ReEncrypt", key, kbv1.Operation_OPERATION_REENCRYPT, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*Ciphertext, error) {
		r, err := kb.ReEncrypt(ctx, &kbv1.ReEncryptRequest{Ciphertext: ciphertext, SourceEncryptionContext: srcCtx,
			DestinationKeyId: key, DestinationEncryptionContext: dstCtx})
		if err != nil {
			return nil, err
		}
		return &Ciphertext{Result{r.KeyId, r.KeyVersion}, r.Ciphertext}, nil
	})
}

// DataKey is a generated data key.
type DataKey struct {
	Result
	// Plaintext is the 32-byte data key (nil from
	// GenerateDataKeyWithoutPlaintext). Clear it when done.
	Plaintext []byte
	// Encrypted is the key's ciphertext of the data key: Decrypt, with
	// the same encryption context, returns Plaintext.
	Encrypted []byte
	// Wrapped is the data key as a ciphertext header carries it; an
	// Encryptor seals messages with it (nil without plaintext).
	Wrapped []byte
}

// GenerateDataKey returns a fresh 256-bit data key in plaintext, encrypted
// and wrapped form. Most applications want an Encryptor instead, which
// reuses data keys.
func (c *Client) GenerateDataKey(ctx context.Context, key string, ectx map[string]string) (*DataKey, error) {
	return c.generateDataKey(ctx, key, ectx, true)
}

// GenerateDataKeyWithoutPlaintext returns only the encrypted form of a
// fresh data key, for a party that will decrypt it later.
func (c *Client) GenerateDataKeyWithoutPlaintext(ctx context.Context, key string, ectx map[string]string) (*DataKey, error) {
	return c.generateDataKey(ctx, key, ectx, false)
}

func (c *Client) generateDataKey(ctx context.Context, key string, ectx map[string]string, plaintext bool) (*DataKey, error) {
	op := "GenerateDataKey"
	if !plaintext {
		op = "GenerateDataKeyWithoutPlaintext"
	}
	return call(ctx, c, op, key, kbv1.Operation_OPERATION_GENERATE_DATA_KEY, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*DataKey, error) {
		rpc := kb.GenerateDataKey
		if !plaintext {
			rpc = kb.GenerateDataKeyWithoutPlaintext
		}
		r, err := rpc(ctx, &kbv1.GenerateDataKeyRequest{KeyId: key, EncryptionContext: ectx})
		if err != nil {
			return nil, err
		}
		return &DataKey{Result{r.KeyId, r.KeyVersion}, r.Plaintext, r.EncryptedDataKey, r.WrappedDataKey}, nil
	})
}

// DecryptDataKey returns the data key a ciphertext header names (its key,
// version and wrapped data key). The caller's policy must allow the
// DecryptDataKey action.
func (c *Client) DecryptDataKey(ctx context.Context, key string, version uint32, wrapped []byte, ectx map[string]string) ([]byte, error) {
	return call(ctx, c, "DecryptDataKey", key, kbv1.Operation_OPERATION_DECRYPT_DATA_KEY, func(ctx context.Context, kb kbv1.KeyBrokerClient) ([]byte, error) {
		r, err := kb.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: key, KeyVersion: version, WrappedDataKey: wrapped, EncryptionContext: ectx})
		if err != nil {
			return nil, err
		}
		if len(r.Plaintext) != envelope.DEKSize {
			return nil, local("DecryptDataKey", key, codes.Internal, errors.New("the node returned a data key of the wrong size"))
		}
		return r.Plaintext, nil
	})
}

// Signature is the result of Sign.
type Signature struct {
	Result
	// Signature is ASN.1 DER for ECDSA, 64 bytes for Ed25519.
	Signature []byte
}

// Sign signs message (at most 64 KiB) with the key's primary version.
func (c *Client) Sign(ctx context.Context, key string, message []byte) (*Signature, error) {
	return c.sign(ctx, key, &kbv1.SignRequest{KeyId: key, Input: &kbv1.SignRequest_Message{Message: message}})
}

// SignDigest signs a SHA-256 digest (ECDSA P-256 keys only).
func (c *Client) SignDigest(ctx context.Context, key string, digest []byte) (*Signature, error) {
	return c.sign(ctx, key, &kbv1.SignRequest{KeyId: key, Input: &kbv1.SignRequest_Digest{Digest: digest}})
}

func (c *Client) sign(ctx context.Context, key string, req *kbv1.SignRequest) (*Signature, error) {
	return call(ctx, c, "Sign", key, kbv1.Operation_OPERATION_SIGN, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*Signature, error) {
		r, err := kb.Sign(ctx, req)
		if err != nil {
			return nil, err
		}
		return &Signature{Result{r.KeyId, r.KeyVersion}, r.Signature}, nil
	})
}

// Verify checks a signature of message by version of key (0: the
// primary). A signature that does not verify is (false, nil).
func (c *Client) Verify(ctx context.Context, key string, version uint32, message, signature []byte) (bool, error) {
	return c.verify(ctx, key, &kbv1.VerifyRequest{KeyId: key, KeyVersion: version, Input: &kbv1.VerifyRequest_Message{Message: message}, Signature: signature})
}

// VerifyDigest checks a signature of a SHA-256 digest.
func (c *Client) VerifyDigest(ctx context.Context, key string, version uint32, digest, signature []byte) (bool, error) {
	return c.verify(ctx, key, &kbv1.VerifyRequest{KeyId: key, KeyVersion: version, Input: &kbv1.VerifyRequest_Digest{Digest: digest}, Signature: signature})
}

func (c *Client) verify(ctx context.Context, key string, req *kbv1.VerifyRequest) (bool, error) {
	return call(ctx, c, "Verify", key, kbv1.Operation_OPERATION_VERIFY, func(ctx context.Context, kb kbv1.KeyBrokerClient) (bool, error) {
		r, err := kb.Verify(ctx, req)
		return r.GetValid(), err
	})
}

// PublicKey is the result of GetPublicKey.
type PublicKey struct {
	Result
	// DER is the PKIX, ASN.1 DER public key (x509.ParsePKIXPublicKey).
	DER []byte
}

// GetPublicKey returns the public key of version of key (0: the primary).
func (c *Client) GetPublicKey(ctx context.Context, key string, version uint32) (*PublicKey, error) {
	return call(ctx, c, "GetPublicKey", key, kbv1.Operation_OPERATION_GET_PUBLIC_KEY, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*PublicKey, error) {
		r, err := kb.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: key, KeyVersion: version})
		if err != nil {
			return nil, err
		}
		return &PublicKey{Result{r.KeyId, r.KeyVersion}, r.PublicKey}, nil
	})
}

// MAC is the result of GenerateMac.
type MAC struct {
	Result
	MAC []byte
}

// GenerateMac computes HMAC-SHA256 of message (at most 64 KiB) with the
// key's primary version.
func (c *Client) GenerateMac(ctx context.Context, key string, message []byte) (*MAC, error) {
	return call(ctx, c, "GenerateMac", key, kbv1.Operation_OPERATION_GENERATE_MAC, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*MAC, error) {
		r, err := kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: key, Message: message})
		if err != nil {
			return nil, err
		}
		return &MAC{Result{r.KeyId, r.KeyVersion}, r.Mac}, nil
	})
}

// VerifyMac checks a MAC of message by version of key (0: the primary).
// A MAC that does not verify is (false, nil).
func (c *Client) VerifyMac(ctx context.Context, key string, version uint32, message, mac []byte) (bool, error) {
	return call(ctx, c, "VerifyMac", key, kbv1.Operation_OPERATION_VERIFY_MAC, func(ctx context.Context, kb kbv1.KeyBrokerClient) (bool, error) {
		r, err := kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: key, KeyVersion: version, Message: message, Mac: mac})
		return r.GetValid(), err
	})
}

// GenerateRandom returns n (1-1024) random bytes from the central tier's
// root of trust.
func (c *Client) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > 1024 {
		return nil, local("GenerateRandom", "", codes.InvalidArgument, errors.New("length must be 1 to 1024 bytes"))
	}
	return call(ctx, c, "GenerateRandom", "", 0, func(ctx context.Context, kb kbv1.KeyBrokerClient) ([]byte, error) {
		r, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: uint32(n)})
		return r.GetRandom(), err
	})
}

// DescribeKey returns a key's metadata.
func (c *Client) DescribeKey(ctx context.Context, key string) (*kbv1.KeyMetadata, error) {
	return call(ctx, c, "DescribeKey", key, kbv1.Operation_OPERATION_DESCRIBE_KEY, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*kbv1.KeyMetadata, error) {
		r, err := kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: key})
		return r.GetKey(), err
	})
}

// ListKeys returns every key whose labels include selector (nil: all),
// reading page after page.
func (c *Client) ListKeys(ctx context.Context, selector map[string]string) ([]*kbv1.KeyMetadata, error) {
	var out []*kbv1.KeyMetadata
	token := ""
	for {
		r, err := call(ctx, c, "ListKeys", "", 0, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*kbv1.ListKeysResponse, error) {
			return kb.ListKeys(ctx, &kbv1.ListKeysRequest{PageToken: token, LabelSelector: selector})
		})
		if err != nil {
			return nil, err
		}
		out = append(out, r.Keys...)
		if token = r.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// LookupKey asks a configured node which nodes can perform op with key
// now, best first, and why each qualifies. The client routes by it.
func (c *Client) LookupKey(ctx context.Context, key string, op kbv1.Operation) ([]*kbv1.LookupNode, error) {
	return call(ctx, c, "LookupKey", "", 0, func(ctx context.Context, kb kbv1.KeyBrokerClient) ([]*kbv1.LookupNode, error) {
		r, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: key, Operation: op, ClientLabels: c.labels})
		return r.GetNodes(), err
	})
}

// ItemResult is one item of a batch: its result or its error.
type ItemResult[T any] struct {
	Value T
	Err   error
}

// BatchEncrypt seals many plaintexts under one key in one call (at most
// 1000 items and 8 MiB); each item fails or succeeds on its own.
func (c *Client) BatchEncrypt(ctx context.Context, key string, plaintexts [][]byte, ectx map[string]string) ([]ItemResult[*Ciphertext], error) {
	req := &kbv1.BatchEncryptRequest{Items: make([]*kbv1.EncryptRequest, len(plaintexts))}
	for i, p := range plaintexts {
		req.Items[i] = &kbv1.EncryptRequest{KeyId: key, Plaintext: p, EncryptionContext: ectx}
	}
	r, err := call(ctx, c, "BatchEncrypt", key, kbv1.Operation_OPERATION_ENCRYPT, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*kbv1.BatchEncryptResponse, error) {
		return kb.BatchEncrypt(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	return batchResults(r.GetResults(), len(plaintexts), "Encrypt", key, func(x *kbv1.BatchEncryptResult) (*Ciphertext, *kbv1.ItemError) {
		if e := x.GetError(); e != nil {
			return nil, e
		}
		resp := x.GetResponse()
		return &Ciphertext{Result{resp.GetKeyId(), resp.GetKeyVersion()}, resp.GetCiphertext()}, nil
	})
}

// BatchDecrypt opens many ciphertexts, all under one key, in one call.
func (c *Client) BatchDecrypt(ctx context.Context, ciphertexts [][]byte, ectx map[string]string) ([]ItemResult[*Plaintext], error) {
	if len(ciphertexts) == 0 {
		return nil, nil
	}
	h, _, err := envelope.ParseHeader(ciphertexts[0])
	if err != nil {
		return nil, invalid("BatchDecrypt", "", err)
	}
	req := &kbv1.BatchDecryptRequest{Items: make([]*kbv1.DecryptRequest, len(ciphertexts))}
	for i, ct := range ciphertexts {
		req.Items[i] = &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx}
	}
	r, err := call(ctx, c, "BatchDecrypt", h.KeyID, kbv1.Operation_OPERATION_DECRYPT, func(ctx context.Context, kb kbv1.KeyBrokerClient) (*kbv1.BatchDecryptResponse, error) {
		return kb.BatchDecrypt(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	return batchResults(r.GetResults(), len(ciphertexts), "Decrypt", h.KeyID, func(x *kbv1.BatchDecryptResult) (*Plaintext, *kbv1.ItemError) {
		if e := x.GetError(); e != nil {
			return nil, e
		}
		resp := x.GetResponse()
		return &Plaintext{Result{resp.GetKeyId(), resp.GetKeyVersion()}, resp.GetPlaintext()}, nil
	})
}

func batchResults[R, T any](results []R, n int, op, key string, item func(R) (T, *kbv1.ItemError)) ([]ItemResult[T], error) {
	if len(results) != n {
		return nil, local("Batch"+op, key, codes.Internal, errors.New("the node answered a different number of items"))
	}
	out := make([]ItemResult[T], n)
	for i, r := range results {
		v, e := item(r)
		if e != nil {
			out[i].Err = &Error{Op: op, Key: key, Code: codes.Code(e.GetCode()), Message: e.GetMessage(), Attempts: 1}
			continue
		}
		out[i].Value = v
	}
	return out, nil
}
