package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// decodeAnswer reads the answer of an Encrypt, Decrypt or GenerateDataKey
// into out (the SDK's output type) for the thin client: a flat object of
// plain strings, as the node writes it, is read in one pass without
// reflection; anything else by encoding/json, so that what the answer
// means does not depend on the path (TestDecodeAnswer).
func decodeAnswer(answer []byte, out any) error {
	if decodeFlat(answer, out) {
		return nil
	}
	return json.Unmarshal(answer, out)
}

// decodeFlat is decodeAnswer's one pass; false leaves out to encoding/json.
func decodeFlat(b []byte, out any) bool {
	var blob, plain, key, alg []byte
	if !flatStrings(b, func(name, value []byte) bool {
		switch string(name) {
		case "CiphertextBlob":
			blob = value
		case "Plaintext":
			plain = value
		case "KeyId":
			key = value
		case "EncryptionAlgorithm":
			alg = value
		default:
			return false
		}
		return true
	}) {
		return false
	}
	var ok bool
	str := func(v []byte) *string {
		if v == nil {
			return nil
		}
		s := string(v)
		return &s
	}
	switch o := out.(type) {
	case *kms.EncryptOutput:
		o.KeyId, o.EncryptionAlgorithm = str(key), types.EncryptionAlgorithmSpec(alg)
		o.CiphertextBlob, ok = unbase64(blob)
		return ok && plain == nil
	case *kms.DecryptOutput:
		o.KeyId, o.EncryptionAlgorithm = str(key), types.EncryptionAlgorithmSpec(alg)
		o.Plaintext, ok = unbase64(plain)
		return ok && blob == nil
	case *kms.GenerateDataKeyOutput:
		o.KeyId = str(key)
		if o.CiphertextBlob, ok = unbase64(blob); !ok {
			return false
		}
		o.Plaintext, ok = unbase64(plain)
		return ok && alg == nil
	}
	return false
}

func unbase64(v []byte) ([]byte, bool) {
	if v == nil {
		return nil, true
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(v)))
	n, err := base64.StdEncoding.Decode(out, v)
	return out[:n], err == nil
}

// flatStrings calls member for each member of the object b, whose values
// must all be strings; a string with an escape or a byte outside
// printable ASCII, space between tokens, or a name twice make it false.
func flatStrings(b []byte, member func(name, value []byte) bool) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	b = b[1 : len(b)-1]
	var seen [][]byte
	for len(b) > 0 {
		name, rest, ok := plainString(b)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		value, rest, ok := plainString(rest[1:])
		if !ok {
			return false
		}
		for _, s := range seen {
			if bytes.Equal(s, name) {
				return false
			}
		}
		seen = append(seen, name)
		if !member(name, value) {
			return false
		}
		if len(rest) > 0 {
			if rest[0] != ',' || len(rest) == 1 {
				return false
			}
			rest = rest[1:]
		}
		b = rest
	}
	return true
}

// plainString reads a string of printable ASCII without escapes at the
// start of b.
func plainString(b []byte) (value, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != '"' {
		return nil, nil, false
	}
	n := bytes.IndexByte(b[1:], '"')
	if n < 0 {
		return nil, nil, false
	}
	for _, c := range b[1 : 1+n] {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return nil, nil, false
		}
	}
	return b[1 : 1+n], b[2+n:], true
}
