// Package forwardproof is the wire form of a forward proof: a client's
// signature, made with its certificate's key, over one call it makes to one
// edge — the method, the SHA-256 of the request's deterministic
// serialization, the edge's SPIFFE id, the time and a nonce. An edge that
// forwards the call to the central tier passes the proof and the client's
// certificate chain on, and the central tier performs the call only as the
// principal the chain and signature prove (broker/server).
//
// The package holds what the three parties share: making a proof (the SDK),
// carrying it in metadata and asking for one (the edge), and checking its
// signature (the central tier). Deciding whether a proof is acceptable —
// chain, freshness, replay, audience — is the central tier's.
package forwardproof

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

const (
	// MetadataKey carries a marshalled kbv1.ForwardProof from the client
	// to the edge.
	MetadataKey = "x-keybroker-forward-proof-bin"
	// RequiredTrailer is set by an edge that must forward a call which
	// came without a proof; the client signs and retries once.
	RequiredTrailer = "x-keybroker-forward-proof-required"
	// domain separates forward-proof signatures from every other use of a
	// client certificate's key.
	domain = "keybroker/v1/forward-proof"
	// NonceSize is the length of a proof's nonce.
	NonceSize = 16
)

// Marshal is the serialization a proof's request digest covers: the
// deterministic one, so that the client and the edge produce equal bytes
// from equal messages.
func Marshal(m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

// signedDigest is what the signature covers.
func signedDigest(claims []byte) []byte {
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write(claims)
	return h.Sum(nil)
}

// Claims are the fields of a proof to make.
type Claims struct {
	Method   string // full gRPC method
	Request  []byte // the request's Marshal form
	Audience string // the edge's SPIFFE id
	IssuedAt time.Time
}

// Sign makes a marshalled kbv1.ForwardProof for c with signer (ECDSA,
// Ed25519 or RSA, which signs with PSS). rnd supplies the nonce and the
// signature's randomness (nil: crypto/rand).
func Sign(signer crypto.Signer, c Claims, rnd io.Reader) ([]byte, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("forwardproof: nonce: %w", err)
	}
	sum := sha256.Sum256(c.Request)
	claims, err := Marshal(&kbv1.ForwardProofClaims{Method: c.Method, RequestSha256: sum[:], Audience: c.Audience,
		IssuedAt: timestamppb.New(c.IssuedAt), Nonce: nonce})
	if err != nil {
		return nil, fmt.Errorf("forwardproof: claims: %w", err)
	}
	digest := signedDigest(claims)
	var sig []byte
	switch signer.Public().(type) {
	case *ecdsa.PublicKey:
		sig, err = signer.Sign(rnd, digest, crypto.SHA256)
	case ed25519.PublicKey:
		sig, err = signer.Sign(rnd, digest, crypto.Hash(0))
	case *rsa.PublicKey:
		sig, err = signer.Sign(rnd, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		return nil, fmt.Errorf("forwardproof: cannot sign with a %T key", signer.Public())
	}
	if err != nil {
		return nil, fmt.Errorf("forwardproof: signing: %w", err)
	}
	return proto.Marshal(&kbv1.ForwardProof{Claims: claims, Signature: sig})
}

// ErrBadSignature is a proof whose signature does not verify.
var ErrBadSignature = errors.New("forwardproof: the signature does not verify with the certificate's key")

// Parse decodes a marshalled proof and checks its signature with pub, the
// public key of the client certificate that claims to have made it. It
// returns the claims only when the signature holds.
func Parse(raw []byte, pub crypto.PublicKey) (*kbv1.ForwardProofClaims, error) {
	var p kbv1.ForwardProof
	if err := proto.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("forwardproof: malformed proof: %w", err)
	}
	digest := signedDigest(p.GetClaims())
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, digest, p.GetSignature())
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, digest, p.GetSignature())
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(k, crypto.SHA256, digest, p.GetSignature(), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	default:
		return nil, fmt.Errorf("forwardproof: a %T certificate key cannot sign proofs", pub)
	}
	if !ok {
		return nil, ErrBadSignature
	}
	var c kbv1.ForwardProofClaims
	if err := proto.Unmarshal(p.GetClaims(), &c); err != nil {
		return nil, fmt.Errorf("forwardproof: malformed claims: %w", err)
	}
	if len(c.GetNonce()) != NonceSize || len(c.GetRequestSha256()) != sha256.Size || c.GetIssuedAt() == nil {
		return nil, errors.New("forwardproof: the claims lack a nonce, a request digest or a time")
	}
	return &c, nil
}
