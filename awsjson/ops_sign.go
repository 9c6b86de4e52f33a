package awsjson

import (
	"context"
	"net/http"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// MaxMessage is AWS KMS's bound on a message to sign or MAC.
const MaxMessage = 4096

// signingAlgorithm is the AWS name of a key type's signing algorithm.
func signingAlgorithm(t managed.KeyType) string {
	switch t {
	case managed.ECDSAP256:
		return "ECDSA_SHA_256"
	case managed.Ed25519:
		return "ED25519_SHA_512"
	}
	return ""
}

type signRequest struct {
	KeyID            string `json:"KeyId"`
	Message          []byte `json:"Message"`
	MessageType      string `json:"MessageType"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
	Signature        []byte `json:"Signature"` // Verify's
}

// signInput checks a Sign or Verify request: RAW (the default) signs the
// message, DIGEST a SHA-256 digest of 32 bytes; the algorithm is given.
func (s *Server) signInput(ctx context.Context, in signRequest) (id string, msg, digest []byte, err error) {
	if id, err = s.resolveKey(ctx, in.KeyID); err != nil {
		return "", nil, nil, err
	}
	if in.SigningAlgorithm == "" {
		return "", nil, nil, validation("SigningAlgorithm is required")
	}
	if len(in.Message) == 0 || len(in.Message) > MaxMessage {
		return "", nil, nil, validation("Message must be 1 to %d bytes, not %d", MaxMessage, len(in.Message))
	}
	switch in.MessageType {
	case "", "RAW":
		return id, in.Message, nil, nil
	case "DIGEST":
		if len(in.Message) != 32 {
			return "", nil, nil, validation("a DIGEST message is the 32-byte SHA-256 digest, not %d bytes", len(in.Message))
		}
		return id, nil, in.Message, nil
	}
	return "", nil, nil, validation("MessageType %s is not RAW or DIGEST", clipText(in.MessageType))
}

// checkSigningAlgorithm refuses an algorithm the key does not sign with.
func checkSigningAlgorithm(k *managed.Key, alg string) error {
	if want := signingAlgorithm(k.Type); alg != want {
		return &Error{http.StatusBadRequest, "InvalidKeyUsageException", "key " + k.ID + " signs with " + orNone(want) + ", not " + clipText(alg)}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "no algorithm (it does not sign)"
	}
	return s
}

type signResponse struct {
	KeyID            string `json:"KeyId"`
	Signature        []byte `json:"Signature"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

func (s *Server) sign(ctx context.Context, caller pipeline.Caller, in *signRequest) (any, error) {
	id, msg, digest, err := s.signInput(ctx, *in)
	if err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.Sign(ctx, caller, pipeline.SignInput{KeyID: id, Message: msg, Digest: digest})
	if err != nil {
		return nil, err
	}
	if err := checkSigningAlgorithm(out.Key, in.SigningAlgorithm); err != nil {
		return nil, err
	}
	return signResponse{KeyID: s.arn(out.Key.ID), Signature: out.Signature, SigningAlgorithm: in.SigningAlgorithm}, nil
}

type verifyResponse struct {
	KeyID            string `json:"KeyId"`
	SignatureValid   bool   `json:"SignatureValid"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

// verify answers as AWS does: a signature that does not verify is
// KMSInvalidSignatureException, not SignatureValid false.
func (s *Server) verify(ctx context.Context, caller pipeline.Caller, in *signRequest) (any, error) {
	id, msg, digest, err := s.signInput(ctx, *in)
	if err != nil {
		return nil, err
	}
	if len(in.Signature) == 0 {
		return nil, validation("Signature is required")
	}
	out, err := s.cfg.Pipeline.Verify(ctx, caller, pipeline.VerifyInput{KeyID: id, Message: msg, Digest: digest, Signature: in.Signature})
	if err != nil {
		return nil, err
	}
	if err := checkSigningAlgorithm(out.Key, in.SigningAlgorithm); err != nil {
		return nil, err
	}
	if !out.Valid {
		return nil, &Error{http.StatusBadRequest, "KMSInvalidSignatureException", "the signature does not verify"}
	}
	return verifyResponse{KeyID: s.arn(out.Key.ID), SignatureValid: true, SigningAlgorithm: in.SigningAlgorithm}, nil
}

type getPublicKeyResponse struct {
	KeyID             string   `json:"KeyId"`
	PublicKey         []byte   `json:"PublicKey"`
	KeySpec           string   `json:"KeySpec"`
	KeyUsage          string   `json:"KeyUsage"`
	SigningAlgorithms []string `json:"SigningAlgorithms"`
}

func (s *Server) getPublicKey(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.GetPublicKey(ctx, caller, pipeline.GetPublicKeyInput{KeyID: id})
	if err != nil {
		return nil, err
	}
	m := s.metadata(out.Key)
	return getPublicKeyResponse{KeyID: s.arn(out.Key.ID), PublicKey: out.DER, KeySpec: m.KeySpec, KeyUsage: m.KeyUsage,
		SigningAlgorithms: []string{signingAlgorithm(out.Key.Type)}}, nil
}

type macRequest struct {
	KeyID        string `json:"KeyId"`
	Message      []byte `json:"Message"`
	MacAlgorithm string `json:"MacAlgorithm"`
	Mac          []byte `json:"Mac"` // VerifyMac's
}

const hmacSHA256 = "HMAC_SHA_256"

func (s *Server) macInput(ctx context.Context, in macRequest) (string, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return "", err
	}
	if in.MacAlgorithm != hmacSHA256 {
		return "", validation("MacAlgorithm %s is not supported: keybroker's MAC keys are %s", clipText(in.MacAlgorithm), hmacSHA256)
	}
	if len(in.Message) == 0 || len(in.Message) > MaxMessage {
		return "", validation("Message must be 1 to %d bytes, not %d", MaxMessage, len(in.Message))
	}
	return id, nil
}

type macResponse struct {
	KeyID        string `json:"KeyId"`
	Mac          []byte `json:"Mac,omitempty"`
	MacValid     bool   `json:"MacValid,omitempty"`
	MacAlgorithm string `json:"MacAlgorithm"`
}

func (s *Server) generateMac(ctx context.Context, caller pipeline.Caller, in *macRequest) (any, error) {
	id, err := s.macInput(ctx, *in)
	if err != nil {
		return nil, err
	}
	out, err := s.cfg.Pipeline.GenerateMac(ctx, caller, pipeline.GenerateMacInput{KeyID: id, Message: in.Message})
	if err != nil {
		return nil, err
	}
	return macResponse{KeyID: s.arn(out.Key.ID), Mac: out.Tag, MacAlgorithm: hmacSHA256}, nil
}

// verifyMac answers as AWS does: a tag that does not verify is
// KMSInvalidMacException.
func (s *Server) verifyMac(ctx context.Context, caller pipeline.Caller, in *macRequest) (any, error) {
	id, err := s.macInput(ctx, *in)
	if err != nil {
		return nil, err
	}
	if len(in.Mac) == 0 {
		return nil, validation("Mac is required")
	}
	out, err := s.cfg.Pipeline.VerifyMac(ctx, caller, pipeline.VerifyMacInput{KeyID: id, Message: in.Message, Mac: in.Mac})
	if err != nil {
		return nil, err
	}
	if !out.Valid {
		return nil, &Error{http.StatusBadRequest, "KMSInvalidMacException", "the MAC does not verify"}
	}
	return macResponse{KeyID: s.arn(out.Key.ID), MacValid: true, MacAlgorithm: hmacSHA256}, nil
}

type listKeysRequest struct {
	Limit  int    `json:"Limit"`
	Marker string `json:"Marker"`
}

type listEntry struct {
	KeyID  string `json:"KeyId"`
	KeyArn string `json:"KeyArn"`
}

type listKeysResponse struct {
	Keys       []listEntry `json:"Keys"`
	NextMarker string      `json:"NextMarker,omitempty"`
	Truncated  bool        `json:"Truncated"`
}

// listKeys pages with keybroker's own page token as AWS's Marker.
func (s *Server) listKeys(ctx context.Context, caller pipeline.Caller, in *listKeysRequest) (any, error) {
	if in.Limit == 0 {
		in.Limit = 100
	}
	if in.Limit < 1 || in.Limit > 1000 {
		return nil, validation("Limit must be 1 to 1000")
	}
	page, err := s.cfg.Pipeline.ListKeys(ctx, caller, pipeline.ListKeysInput{PageSize: in.Limit, PageToken: in.Marker})
	if err != nil {
		return nil, err
	}
	out := listKeysResponse{Keys: []listEntry{}, NextMarker: page.NextPageToken, Truncated: page.NextPageToken != ""}
	for _, k := range page.Keys {
		out.Keys = append(out.Keys, listEntry{KeyID: k.ID, KeyArn: s.arn(k.ID)})
	}
	return out, nil
}
