package pipeline

import (
	"context"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// CheckKeyID refuses a malformed key id.
func CheckKeyID(id string) error {
	if !envelope.ValidKeyID(id) {
		return managed.Errorf(managed.ErrInvalidArgument, "key_id %s must be 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", clip.Quote(id))
	}
	return nil
}

// KeyCall runs one operation on a key: begin the audited call, check the
// id, resolve the key and authorize the caller on it (Call.AuthorizeKey),
// perform, end. perform gets the authorized key and the context that
// traces backend calls. Every key operation of the pipeline is one; the
// admin operations (the central tier's KeyAdmin) use it too.
func KeyCall[T any](ctx context.Context, p *Pipeline, caller Caller, op policy.Action, keyID string, perform func(ctx context.Context, c *Call, k *managed.Key) (T, error)) (T, error) {
	var zero T
	ctx, c := p.Begin(ctx, caller, op, keyID)
	if err := CheckKeyID(keyID); err != nil {
		return zero, c.End(ctx, err)
	}
	k, err := c.AuthorizeKey(ctx, op)
	if err != nil {
		return zero, c.End(ctx, err)
	}
	out, err := perform(ctx, c, k)
	if err != nil {
		return zero, c.End(ctx, err)
	}
	return out, c.End(ctx, nil)
}

// usable checks k may be used for op on version v (0: the primary), when
// checkVersion is set: once, here, unless the performer forwards the
// operation (the performing node checks it then).
func (p *Pipeline) usable(k *managed.Key, op managed.Operation, v uint32, checkVersion bool) error {
	if p.fwd != nil && p.fwd.Forwards(k, op, v) {
		return nil
	}
	if err := managed.CheckUsable(k, op); err != nil {
		return err
	}
	if checkVersion {
		return k.CheckDecryptVersion(k.At(v))
	}
	return nil
}

// EncryptInput is an Encrypt request.
type EncryptInput struct {
	KeyID     string
	Plaintext []byte
	Context   map[string]string
}

// Encrypt seals under the key in.KeyID names.
func (p *Pipeline) Encrypt(ctx context.Context, caller Caller, in EncryptInput) (managed.Encrypted, error) {
	return p.encrypt(ctx, caller, in, policy.Encrypt)
}

// encrypt is Encrypt authorized as op: Encrypt, or ReEncrypt for the
// destination of a ReEncrypt.
func (p *Pipeline) encrypt(ctx context.Context, caller Caller, in EncryptInput, op policy.Action) (managed.Encrypted, error) {
	return KeyCall(ctx, p, caller, op, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Encrypted, error) {
		if err := p.usable(k, managed.OpEncrypt, 0, false); err != nil {
			return managed.Encrypted{}, err
		}
		out, err := p.perf.Encrypt(ctx, k, in.Plaintext, in.Context)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// DecryptInput is a Decrypt request.
type DecryptInput struct {
	Ciphertext []byte
	Context    map[string]string
	// KeyID, when set, must be the key the ciphertext names.
	KeyID string
}

// Decrypt opens a ciphertext, authorized on the key its header names.
func (p *Pipeline) Decrypt(ctx context.Context, caller Caller, in DecryptInput) (managed.Decrypted, error) {
	return p.decrypt(ctx, caller, in, policy.Decrypt)
}

// decrypt is Decrypt authorized as op: Decrypt, or ReEncrypt for the
// source of a ReEncrypt. The header is parsed here, once.
func (p *Pipeline) decrypt(ctx context.Context, caller Caller, in DecryptInput, op policy.Action) (managed.Decrypted, error) {
	h, body, err := managed.ParseCiphertext(in.Ciphertext)
	if err != nil {
		ctx, c := p.Begin(ctx, caller, op, "")
		return managed.Decrypted{}, c.End(ctx, err)
	}
	return KeyCall(ctx, p, caller, op, h.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Decrypted, error) {
		if in.KeyID != "" && in.KeyID != h.KeyID {
			return managed.Decrypted{}, managed.Errorf(managed.ErrInvalidArgument, "the ciphertext belongs to key %q, not %q", h.KeyID, in.KeyID)
		}
		if err := p.usable(k, managed.OpDecrypt, h.Version, true); err != nil {
			return managed.Decrypted{}, err
		}
		out, err := p.perf.Decrypt(ctx, k, h, body, in.Context)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// ReEncryptInput is a ReEncrypt request.
type ReEncryptInput struct {
	Ciphertext    []byte
	SourceContext map[string]string
	// DestinationKeyID is the key to seal under ("": the source key).
	DestinationKeyID   string
	DestinationContext map[string]string
}

// ReEncrypted is what ReEncrypt returns: the source's key and version (no
// plaintext: it never leaves the node) and the new ciphertext.
type ReEncrypted struct {
	Source      managed.Decrypted
	Destination managed.Encrypted
}

// ReEncrypt opens a ciphertext and seals its plaintext under another key
// (or the same). It needs the ReEncrypt action on both keys, as AWS KMS
// needs ReEncryptFrom on the source and ReEncryptTo on the destination:
// the plaintext never leaves the node, so neither Decrypt nor Encrypt is
// asked, and a grant of Decrypt alone does not let a caller move
// ciphertexts under a key of its choosing. Each key's decision is its own
// audit line (operation ReEncrypt), both under the call's request id.
func (p *Pipeline) ReEncrypt(ctx context.Context, caller Caller, in ReEncryptInput) (ReEncrypted, error) {
	src, err := p.decrypt(ctx, caller, DecryptInput{Ciphertext: in.Ciphertext, Context: in.SourceContext}, policy.ReEncrypt)
	if err != nil {
		return ReEncrypted{}, err
	}
	defer clear(src.Plaintext)
	dst := in.DestinationKeyID
	if dst == "" {
		dst = src.Key.ID
	}
	enc, err := p.encrypt(ctx, caller, EncryptInput{KeyID: dst, Plaintext: src.Plaintext, Context: in.DestinationContext}, policy.ReEncrypt)
	if err != nil {
		return ReEncrypted{}, err
	}
	src.Plaintext = nil
	return ReEncrypted{Source: src, Destination: enc}, nil
}

// GenerateDataKeyInput is a GenerateDataKey request.
type GenerateDataKeyInput struct {
	KeyID   string
	Context map[string]string
	// WithPlaintext is GenerateDataKey (the plaintext and the wrapped
	// form are returned); unset, GenerateDataKeyWithoutPlaintext.
	WithPlaintext bool
}

// GenerateDataKey returns a fresh data key and the key's ciphertext of it.
// The caller destroys the plaintext.
func (p *Pipeline) GenerateDataKey(ctx context.Context, caller Caller, in GenerateDataKeyInput) (*managed.DataKey, error) {
	op := policy.GenerateDataKey
	if !in.WithPlaintext {
		op = policy.GenerateDataKeyWithoutPlaintext
	}
	return KeyCall(ctx, p, caller, op, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (*managed.DataKey, error) {
		if err := p.usable(k, managed.OpEncrypt, 0, false); err != nil {
			return nil, err
		}
		dk, err := p.perf.GenerateDataKey(ctx, k, in.Context, in.WithPlaintext)
		if err != nil {
			return nil, err
		}
		c.SetVersion(dk.Version)
		return dk, nil
	})
}

// DecryptDataKeyInput is a DecryptDataKey request: the key, version and
// wrapped data key of a ciphertext's header.
type DecryptDataKeyInput struct {
	KeyID   string
	Version uint32
	Wrapped []byte
	Context map[string]string
}

// DecryptDataKey returns the data key of a ciphertext header; the caller
// destroys it.
func (p *Pipeline) DecryptDataKey(ctx context.Context, caller Caller, in DecryptDataKeyInput) (managed.UnwrappedDataKey, error) {
	return KeyCall(ctx, p, caller, policy.DecryptDataKey, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.UnwrappedDataKey, error) {
		c.SetVersion(in.Version)
		if err := p.usable(k, managed.OpDecryptDataKey, in.Version, true); err != nil {
			return managed.UnwrappedDataKey{}, err
		}
		return p.perf.DecryptDataKey(ctx, k, in.Version, in.Wrapped, in.Context)
	})
}

// signInput is the one of message and digest given.
func signInput(message, digest []byte) ([]byte, bool, error) {
	switch {
	case len(message) > 0 && len(digest) > 0:
		return nil, false, managed.Errorf(managed.ErrInvalidArgument, "give message or digest, not both")
	case len(digest) > 0:
		return digest, true, nil
	case len(message) > 0:
		return message, false, nil
	}
	return nil, false, managed.Errorf(managed.ErrInvalidArgument, "give a message or a digest")
}

// SignInput is a Sign request: a message, or its SHA-256 digest.
type SignInput struct {
	KeyID           string
	Message, Digest []byte
}

// Sign signs with the key's primary version.
func (p *Pipeline) Sign(ctx context.Context, caller Caller, in SignInput) (managed.Signature, error) {
	return KeyCall(ctx, p, caller, policy.Sign, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Signature, error) {
		msg, digest, err := signInput(in.Message, in.Digest)
		if err != nil {
			return managed.Signature{}, err
		}
		if err := p.usable(k, managed.OpSign, 0, false); err != nil {
			return managed.Signature{}, err
		}
		out, err := p.perf.Sign(ctx, k, msg, digest)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// VerifyInput is a Verify request.
type VerifyInput struct {
	KeyID string
	// Version is the version to verify with (0: the primary).
	Version         uint32
	Message, Digest []byte
	Signature       []byte
}

// Verify checks a signature with the key's public key.
func (p *Pipeline) Verify(ctx context.Context, caller Caller, in VerifyInput) (managed.Verification, error) {
	return KeyCall(ctx, p, caller, policy.Verify, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Verification, error) {
		msg, digest, err := signInput(in.Message, in.Digest)
		if err != nil {
			return managed.Verification{}, err
		}
		if err := p.usable(k, managed.OpPublicKey, in.Version, true); err != nil {
			return managed.Verification{}, err
		}
		out, err := p.perf.Verify(ctx, k, k.At(in.Version), msg, digest, in.Signature)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// GetPublicKeyInput is a GetPublicKey request.
type GetPublicKeyInput struct {
	KeyID string
	// Version is the version (0: the primary).
	Version uint32
}

// GetPublicKey returns a version's public key.
func (p *Pipeline) GetPublicKey(ctx context.Context, caller Caller, in GetPublicKeyInput) (managed.PublicKey, error) {
	return KeyCall(ctx, p, caller, policy.GetPublicKey, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.PublicKey, error) {
		if err := p.usable(k, managed.OpPublicKey, in.Version, true); err != nil {
			return managed.PublicKey{}, err
		}
		out, err := p.perf.PublicKey(ctx, k, k.At(in.Version))
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// GenerateMacInput is a GenerateMac request.
type GenerateMacInput struct {
	KeyID   string
	Message []byte
}

// GenerateMac computes a MAC with the key's primary version.
func (p *Pipeline) GenerateMac(ctx context.Context, caller Caller, in GenerateMacInput) (managed.MAC, error) {
	return KeyCall(ctx, p, caller, policy.GenerateMac, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.MAC, error) {
		if err := p.usable(k, managed.OpGenerateMac, 0, false); err != nil {
			return managed.MAC{}, err
		}
		out, err := p.perf.GenerateMac(ctx, k, in.Message)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// VerifyMacInput is a VerifyMac request.
type VerifyMacInput struct {
	KeyID string
	// Version is the version (0: the primary).
	Version      uint32
	Message, Mac []byte
}

// VerifyMac checks a MAC in constant time.
func (p *Pipeline) VerifyMac(ctx context.Context, caller Caller, in VerifyMacInput) (managed.Verification, error) {
	return KeyCall(ctx, p, caller, policy.VerifyMac, in.KeyID, func(ctx context.Context, c *Call, k *managed.Key) (managed.Verification, error) {
		if err := p.usable(k, managed.OpVerifyMac, in.Version, true); err != nil {
			return managed.Verification{}, err
		}
		out, err := p.perf.VerifyMac(ctx, k, k.At(in.Version), in.Message, in.Mac)
		if err != nil {
			return out, err
		}
		c.SetVersion(out.Version)
		return out, nil
	})
}

// DescribeKey returns a key's metadata. The front-end shows the root key
// URI to admins only (Caller.Admin).
func (p *Pipeline) DescribeKey(ctx context.Context, caller Caller, keyID string) (*managed.Key, error) {
	return KeyCall(ctx, p, caller, policy.DescribeKey, keyID, func(_ context.Context, _ *Call, k *managed.Key) (*managed.Key, error) {
		return k, nil
	})
}

// LookupKeyInput is a LookupKey request.
type LookupKeyInput struct {
	KeyID string
	// Operation is the operation to place ("": none was named, which is
	// refused once the caller is authorized).
	Operation    policy.Action
	ClientLabels map[string]string
}

// LookupKey answers from this node's view of the cluster: the nodes able
// to perform the operation on the key now, best first, with why each
// qualifies.
func (p *Pipeline) LookupKey(ctx context.Context, caller Caller, in LookupKeyInput) ([]placement.Candidate, error) {
	return KeyCall(ctx, p, caller, policy.LookupKey, in.KeyID, func(ctx context.Context, _ *Call, k *managed.Key) ([]placement.Candidate, error) {
		if in.Operation == "" {
			return nil, managed.Errorf(managed.ErrInvalidArgument, "operation is required: one of encrypt, decrypt, re-encrypt, generate-data-key, sign, verify, get-public-key, generate-mac, verify-mac, describe-key")
		}
		return p.perf.LookupKey(ctx, k, in.Operation, in.ClientLabels)
	})
}

// GenerateRandom returns n random bytes from a root of trust.
func (p *Pipeline) GenerateRandom(ctx context.Context, caller Caller, n int) ([]byte, error) {
	ctx, c := p.Begin(ctx, caller, policy.GenerateRandom, "")
	if err := c.AuthorizeService(policy.GenerateRandom); err != nil {
		return nil, c.End(ctx, err)
	}
	out, err := p.perf.GenerateRandom(ctx, n)
	if err != nil {
		return nil, c.End(ctx, err)
	}
	return out, c.End(ctx, nil)
}

// ListKeysInput is a ListKeys request.
type ListKeysInput struct {
	Selector  map[string]string
	PageSize  int
	PageToken string
}

// KeyPage is a page of ListKeys.
type KeyPage struct {
	Keys          []*managed.Key
	NextPageToken string
}

// ListKeys answers only the keys the caller may DescribeKey: each key the
// selector matches is put to the policy (a warm key costs a map lookup in
// the decision cache), and a page is filled from those the caller may see.
// The next-page token is the id of the page's last key, one the caller was
// just shown, so neither the token nor the page sizes say anything about
// keys it may not describe.
func (p *Pipeline) ListKeys(ctx context.Context, caller Caller, in ListKeysInput) (KeyPage, error) {
	tctx, c := p.Begin(ctx, caller, policy.ListKeys, "")
	if err := c.AuthorizeService(policy.ListKeys); err != nil {
		return KeyPage{}, c.End(tctx, err)
	}
	set := p.policy.Current()
	principal := c.Principal()
	visible := func(k *managed.Key) bool {
		return p.decisions.decide(set, caller.Who, policy.DescribeKey, k, func() policy.Decision {
			return set.AuthorizeKey(principal, policy.DescribeKey, k.PolicyKey())
		}).Allowed
	}
	keys, next, err := p.perf.ListKeys(ctx, in.Selector, in.PageSize, in.PageToken, visible)
	if err != nil {
		return KeyPage{}, c.End(tctx, err)
	}
	return KeyPage{Keys: keys, NextPageToken: next}, c.End(tctx, nil)
}
