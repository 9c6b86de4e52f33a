package awsjson

import (
	"context"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// symmetricDefault is the only EncryptionAlgorithm of AES keys: keybroker's
// own versioned AES-256-GCM envelope.
const symmetricDefault = "SYMMETRIC_DEFAULT"

func checkAlgorithm(alg string) error {
	if alg != "" && alg != symmetricDefault {
		return validation("EncryptionAlgorithm %s is not supported: keybroker's AES keys use %s", clipText(alg), symmetricDefault)
	}
	return nil
}

type encryptRequest struct {
	KeyID               string            `json:"KeyId"`
	Plaintext           []byte            `json:"Plaintext"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
}

type encryptResponse struct {
	CiphertextBlob      []byte `json:"CiphertextBlob"`
	KeyID               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

func (s *Server) encrypt(ctx context.Context, caller pipeline.Caller, in *encryptRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	if len(in.Plaintext) == 0 || len(in.Plaintext) > MaxPlaintext {
		return nil, validation("Plaintext must be 1 to %d bytes, not %d", MaxPlaintext, len(in.Plaintext))
	}
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.Encrypt(ctx, caller, pipeline.EncryptInput{KeyID: id, Plaintext: in.Plaintext, Context: in.EncryptionContext})
	if err != nil {
		return nil, err
	}
	return encryptResponse{CiphertextBlob: out.Ciphertext, KeyID: s.arn(out.Key.ID), EncryptionAlgorithm: symmetricDefault}, nil
}

type decryptRequest struct {
	CiphertextBlob      []byte            `json:"CiphertextBlob"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	KeyID               string            `json:"KeyId"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
}

type decryptResponse struct {
	Plaintext           []byte `json:"Plaintext"`
	KeyID               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

func (s *Server) decrypt(ctx context.Context, caller pipeline.Caller, in *decryptRequest) (any, error) {
	if len(in.CiphertextBlob) == 0 {
		return nil, validation("CiphertextBlob is required")
	}
	if err := checkAlgorithm(in.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := s.checkKeyIs(ctx, in.KeyID, in.CiphertextBlob); err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.Decrypt(ctx, caller, pipeline.DecryptInput{Ciphertext: in.CiphertextBlob, Context: in.EncryptionContext})
	if err != nil {
		return nil, err
	}
	return decryptResponse{Plaintext: out.Plaintext, KeyID: s.arn(out.Key.ID), EncryptionAlgorithm: symmetricDefault}, nil
}

// checkKeyIs refuses, as AWS does (IncorrectKeyException), a Decrypt whose
// KeyId is not the key the ciphertext names. A ciphertext that does not
// parse is left for the pipeline to refuse (and audit).
func (s *Server) checkKeyIs(ctx context.Context, keyID string, ciphertext []byte) error {
	if keyID == "" {
		return nil
	}
	want, err := s.resolveKey(ctx, keyID)
	if err != nil {
		return err
	}
	h, _, err := managed.ParseCiphertext(ciphertext)
	if err != nil || h.KeyID == want {
		return nil
	}
	return &Error{Status: 400, Type: "IncorrectKeyException", Message: "the ciphertext was not made under the key KeyId names"}
}

type reEncryptRequest struct {
	CiphertextBlob                 []byte            `json:"CiphertextBlob"`
	SourceEncryptionContext        map[string]string `json:"SourceEncryptionContext"`
	SourceKeyID                    string            `json:"SourceKeyId"`
	DestinationKeyID               string            `json:"DestinationKeyId"`
	DestinationEncryptionContext   map[string]string `json:"DestinationEncryptionContext"`
	SourceEncryptionAlgorithm      string            `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string            `json:"DestinationEncryptionAlgorithm"`
}

type reEncryptResponse struct {
	CiphertextBlob                 []byte `json:"CiphertextBlob"`
	SourceKeyID                    string `json:"SourceKeyId"`
	KeyID                          string `json:"KeyId"`
	SourceEncryptionAlgorithm      string `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string `json:"DestinationEncryptionAlgorithm"`
}

func (s *Server) reEncrypt(ctx context.Context, caller pipeline.Caller, in *reEncryptRequest) (any, error) {
	if len(in.CiphertextBlob) == 0 {
		return nil, validation("CiphertextBlob is required")
	}
	dst, err := s.resolveKey(ctx, in.DestinationKeyID)
	if err != nil {
		return nil, err
	}
	for _, alg := range []string{in.SourceEncryptionAlgorithm, in.DestinationEncryptionAlgorithm} {
		if err := checkAlgorithm(alg); err != nil {
			return nil, err
		}
	}
	if err := s.checkKeyIs(ctx, in.SourceKeyID, in.CiphertextBlob); err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.ReEncrypt(ctx, caller, pipeline.ReEncryptInput{Ciphertext: in.CiphertextBlob, SourceContext: in.SourceEncryptionContext,
		DestinationKeyID: dst, DestinationContext: in.DestinationEncryptionContext})
	if err != nil {
		return nil, err
	}
	return reEncryptResponse{CiphertextBlob: out.Destination.Ciphertext, SourceKeyID: s.arn(out.Source.Key.ID), KeyID: s.arn(out.Destination.Key.ID),
		SourceEncryptionAlgorithm: symmetricDefault, DestinationEncryptionAlgorithm: symmetricDefault}, nil
}

type generateDataKeyRequest struct {
	KeyID             string            `json:"KeyId"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	KeySpec           string            `json:"KeySpec"`
	NumberOfBytes     *int              `json:"NumberOfBytes"`
}

type generateDataKeyResponse struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	Plaintext      []byte `json:"Plaintext,omitempty"`
	KeyID          string `json:"KeyId"`
}

func (s *Server) generateDataKey(ctx context.Context, caller pipeline.Caller, in *generateDataKeyRequest) (any, error) {
	return s.dataKey(ctx, caller, in, true)
}

func (s *Server) generateDataKeyWithoutPlaintext(ctx context.Context, caller pipeline.Caller, in *generateDataKeyRequest) (any, error) {
	return s.dataKey(ctx, caller, in, false)
}

// dataKey is GenerateDataKey[WithoutPlaintext]: keybroker's data keys are
// 32 bytes, so KeySpec AES_256 or NumberOfBytes 32 (exactly one).
func (s *Server) dataKey(ctx context.Context, caller pipeline.Caller, in *generateDataKeyRequest, withPlaintext bool) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	switch {
	case in.KeySpec != "" && in.NumberOfBytes != nil:
		return nil, validation("give KeySpec or NumberOfBytes, not both")
	case in.KeySpec == "" && in.NumberOfBytes == nil:
		return nil, validation("KeySpec or NumberOfBytes is required")
	case in.KeySpec != "" && in.KeySpec != "AES_256":
		return nil, validation("KeySpec %s is not supported: keybroker's data keys are AES_256", clipText(in.KeySpec))
	case in.NumberOfBytes != nil && *in.NumberOfBytes != 32:
		return nil, validation("NumberOfBytes %d is not supported: keybroker's data keys are 32 bytes", *in.NumberOfBytes)
	}
	dk, err := s.cfg.Pipeline.GenerateDataKey(ctx, caller, pipeline.GenerateDataKeyInput{KeyID: id, Context: in.EncryptionContext, WithPlaintext: withPlaintext})
	if err != nil {
		return nil, err
	}
	out := generateDataKeyResponse{CiphertextBlob: dk.Encrypted, KeyID: s.arn(dk.Key.ID)}
	if dk.Plaintext != nil {
		out.Plaintext = append([]byte(nil), dk.Plaintext.Reveal()...)
		dk.Plaintext.Destroy()
	}
	return out, nil
}

type generateRandomRequest struct {
	NumberOfBytes int `json:"NumberOfBytes"`
}

type generateRandomResponse struct {
	Plaintext []byte `json:"Plaintext"`
}

func (s *Server) generateRandom(ctx context.Context, caller pipeline.Caller, in *generateRandomRequest) (any, error) {
	if in.NumberOfBytes < 1 || in.NumberOfBytes > 1024 {
		return nil, validation("NumberOfBytes must be 1 to 1024")
	}
	b, err := s.cfg.Pipeline.GenerateRandom(ctx, caller, in.NumberOfBytes)
	if err != nil {
		return nil, err
	}
	return generateRandomResponse{Plaintext: b}, nil
}

// keyRequest is a request naming one key and nothing else (DescribeKey,
// GetPublicKey, EnableKey, DisableKey, CancelKeyDeletion).
type keyRequest struct {
	KeyID string `json:"KeyId"`
}

type keyMetadata struct {
	AWSAccountID          string   `json:"AWSAccountId"`
	KeyID                 string   `json:"KeyId"`
	Arn                   string   `json:"Arn"`
	CreationDate          float64  `json:"CreationDate"`
	Enabled               bool     `json:"Enabled"`
	Description           string   `json:"Description"`
	KeyUsage              string   `json:"KeyUsage"`
	KeyState              string   `json:"KeyState"`
	DeletionDate          *float64 `json:"DeletionDate,omitempty"`
	Origin                string   `json:"Origin"`
	KeyManager            string   `json:"KeyManager"`
	KeySpec               string   `json:"KeySpec"`
	CustomerMasterKeySpec string   `json:"CustomerMasterKeySpec"`
	EncryptionAlgorithms  []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms     []string `json:"SigningAlgorithms,omitempty"`
	MacAlgorithms         []string `json:"MacAlgorithms,omitempty"`
}

// keyMetadataResponse is the answer of DescribeKey and CreateKey.
type keyMetadataResponse struct {
	KeyMetadata keyMetadata `json:"KeyMetadata"`
}

func (s *Server) describeKey(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	k, err := s.cfg.Pipeline.DescribeKey(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	return keyMetadataResponse{KeyMetadata: s.metadata(k)}, nil
}

// metadata is a key as AWS's KeyMetadata describes one.
func (s *Server) metadata(k *managed.Key) keyMetadata {
	m := keyMetadata{AWSAccountID: s.cfg.Account, KeyID: k.ID, Arn: s.arn(k.ID), CreationDate: float64(k.Created.UnixMilli()) / 1000,
		Enabled: k.State == managed.StateEnabled, Description: k.Description, Origin: "EXTERNAL", KeyManager: "CUSTOMER"}
	switch k.State {
	case managed.StateEnabled:
		m.KeyState = "Enabled"
	case managed.StateDisabled:
		m.KeyState = "Disabled"
	case managed.StatePendingDeletion:
		m.KeyState = "PendingDeletion"
		d := float64(k.DeletionTime.UnixMilli()) / 1000
		m.DeletionDate = &d
	}
	switch k.Type {
	case managed.AES256GCM:
		m.KeyUsage, m.KeySpec, m.EncryptionAlgorithms = "ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT", []string{symmetricDefault}
	case managed.HMACSHA256:
		m.KeyUsage, m.KeySpec, m.MacAlgorithms = "GENERATE_VERIFY_MAC", "HMAC_256", []string{"HMAC_SHA_256"}
	case managed.ECDSAP256:
		m.KeyUsage, m.KeySpec, m.SigningAlgorithms = "SIGN_VERIFY", "ECC_NIST_P256", []string{"ECDSA_SHA_256"}
	case managed.Ed25519:
		m.KeyUsage, m.KeySpec = "SIGN_VERIFY", "ECC_NIST_EDWARDS25519"
	}
	m.CustomerMasterKeySpec = m.KeySpec
	return m
}
