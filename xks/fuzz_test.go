package xks

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keybroker/keybroker/managed"
)

// FuzzRequestDecoding: any body decodes into every operation's request or
// is a ValidationException, never a panic; the checks that follow
// decoding (request metadata, the path, the ciphertext metadata) refuse
// with the spec's errors; detail lines stay one line of valid text.
func FuzzRequestDecoding(f *testing.F) {
	for _, seed := range []string{
		`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}`,
		`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Decrypt","awsPrincipalArn":"a","kmsKeyArn":"k"},"encryptionAlgorithm":"AES_GCM","ciphertext":"aGk=","initializationVector":"AAAAAAAAAAAAAAAA","authenticationTag":"AAAAAAAAAAAAAAAAAAAAAA==","ciphertextMetadata":"AQAAAAE="}`,
		`{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"KmsHealthCheck"}}`,
		`{"plaintext":5}`, `{"plaintext":"***"}`, `[]`, `null`, `{"requestMetadata":{"kmsRequestId":"\u0000"}}`, `{`,
	} {
		f.Add([]byte(seed), "/p/kms/xks/v1/keys/k1/encrypt")
	}
	f.Add([]byte(`{}`), "/p/kms/xks/v1/health")
	f.Add([]byte(`{}`), "/p/kms/xks/v1/keys/../decrypt")
	s := &Server{base: "/p/kms/xks/v1/"}
	f.Fuzz(func(t *testing.T, body []byte, path string) {
		rt, ok := s.parsePath(path)
		if ok && rt.op != "health" && !keyIDRe.MatchString(rt.key) {
			t.Fatalf("parsePath(%q) = %+v: a key id outside the spec", path, rt)
		}
		for _, v := range []interface{ meta() *RequestMetadata }{&encryptRequest{}, &decryptRequest{}, &metadataRequest{}, &healthRequest{}} {
			if err := decode(body, v); err != nil {
				if e, ok := err.(*Error); !ok || e.Name != ValidationException || e.Status != 400 {
					t.Fatalf("decode error %v is not a 400 ValidationException", err)
				}
				continue
			}
			m := v.meta()
			if err := m.check(true); err == nil {
				if d := m.detail(); !utf8.ValidString(d) || strings.ContainsAny(d, "\n\r") {
					t.Fatalf("detail %q is not valid UTF-8", d)
				}
			}
			if d, ok := v.(*decryptRequest); ok {
				if _, err := managed.ParseXKSMetadata(d.CiphertextMetadata); err == nil && (len(d.CiphertextMetadata) != 5 || !bytes.HasPrefix(d.CiphertextMetadata, []byte{1})) {
					t.Fatalf("ParseXKSMetadata accepted %x", d.CiphertextMetadata)
				}
			}
		}
	})
}
