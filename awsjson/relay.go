package awsjson

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/managed"
)

// Relay is an edge's way to the central tier for the AWS requests it does
// not serve itself (see Serving at an edge in the package doc).
type Relay interface {
	// Local says whether this node serves, wholly and from what it holds,
	// an operation on these keys.
	Local(ctx context.Context, keys []KeyRef) bool
	// Forward relays the request as the client sent it (r's method, URI,
	// host and headers, and body) to the central tier and writes its
	// answer to w. An error is written by nothing yet: the central tier
	// could not be reached.
	Forward(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte) error
}

// KeyRef is a key an operation names.
type KeyRef struct {
	ID string
	// Version is the version a ciphertext names; 0 for the primary.
	Version uint32
	// PublicOnly: the operation needs only the key's public part or
	// metadata (Verify, GetPublicKey, DescribeKey), which a replica holds
	// for every key.
	PublicOnly bool
}

// localOps are the operations an edge may serve from what it holds. Every
// other (the key-management calls, anything unknown) goes to the central
// tier.
var localOps = map[string]bool{
	"Encrypt": true, "Decrypt": true, "ReEncrypt": true, "GenerateDataKey": true, "GenerateDataKeyWithoutPlaintext": true,
	"GenerateRandom": true, "DescribeKey": true, "Sign": true, "Verify": true, "GetPublicKey": true,
	"GenerateMac": true, "VerifyMac": true, "ListKeys": true,
}

// servesHere says whether this edge serves op, whose request is body,
// itself: an operation it may serve whose every key it serves from what it
// holds. A request it cannot read is served here too, to be answered as
// malformed. The decision is made whole, up front, as for gRPC batches: a
// relayed request carries the client's signature over all of it.
func (s *Server) servesHere(ctx context.Context, relay Relay, op string, body []byte) bool {
	if !localOps[op] {
		return false
	}
	in, ok := fastKeyNames(op, body)
	if !ok && json.Unmarshal(body, &in) != nil {
		return true
	}
	var refs []KeyRef
	public := op == "Verify" || op == "GetPublicKey" || op == "DescribeKey"
	if in.CiphertextBlob != nil {
		id, v, err := managed.PeekKeyID(in.CiphertextBlob)
		if err != nil {
			return true
		}
		refs = append(refs, KeyRef{ID: id, Version: v})
	}
	for _, name := range []string{in.KeyID, in.DestinationKeyID} {
		if name == "" {
			continue
		}
		id, err := s.keyID(name)
		if err != nil {
			return true
		}
		refs = append(refs, KeyRef{ID: id, PublicOnly: public})
	}
	return relay.Local(ctx, refs)
}

// keyNames are the members of a request that name keys.
type keyNames struct {
	KeyID            string `json:"KeyId"`
	DestinationKeyID string `json:"DestinationKeyId"`
	CiphertextBlob   []byte `json:"CiphertextBlob"`
}

// fastKeyNames reads the key names of an Encrypt, Decrypt or ReEncrypt in
// the fast reader's plain form (fastjson.go) — what encoding/json would
// read into keyNames from such a body — and reports whether it could.
func fastKeyNames(op string, body []byte) (keyNames, bool) {
	switch op {
	case "Encrypt":
		// Only the key is wanted: the plaintext and context are read,
		// not decoded (encoding/json would not decode them into keyNames
		// either).
		var id, alg string
		ok := fastDecode(body, []fastField{{name: "KeyId", kind: fastString, str: &id}, {name: "Plaintext", kind: fastSkip},
			{name: "EncryptionContext", kind: fastSkip}, {name: "EncryptionAlgorithm", kind: fastString, str: &alg}})
		return keyNames{KeyID: id}, ok
	case "Decrypt":
		var r decryptRequest
		ok := fastDecode(body, r.fastFields())
		return keyNames{KeyID: r.KeyID, CiphertextBlob: r.CiphertextBlob}, ok
	case "ReEncrypt":
		var r reEncryptRequest
		ok := fastDecode(body, r.fastFields())
		return keyNames{DestinationKeyID: r.DestinationKeyID, CiphertextBlob: r.CiphertextBlob}, ok
	}
	return keyNames{}, false
}

// relay takes a request to the central tier as it came.
func (s *Server) relay(w http.ResponseWriter, r *http.Request, body []byte, relay Relay) {
	if err := relay.Forward(r.Context(), w, r, body); err != nil {
		w.Header().Set("x-amzn-RequestId", callinfo.NewRequestID())
		s.log.Warn("relaying a request to the central tier", "err", err)
		s.fail(w, &Error{Status: http.StatusServiceUnavailable, Type: "DependencyTimeoutException", Message: "this edge cannot reach the central tier to relay the request; retry"})
	}
}
