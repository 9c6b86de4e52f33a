package main

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// decodeAnswer reads every answer as encoding/json does, whichever path
// it takes.
func FuzzDecodeAnswer(f *testing.F) {
	for _, s := range []string{
		`{"CiphertextBlob":"AQID","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","KeyId":"arn:aws:kms:us-east-1:111122223333:key/demo"}`,
		`{"EncryptionAlgorithm":"SYMMETRIC_DEFAULT","KeyId":"k","Plaintext":"aGVsbG8="}`,
		`{"CiphertextBlob":"AQID","KeyId":"k","Plaintext":""}`,
		`{"CiphertextBlob":"AQI","KeyId":"k"}`, `{"KeyId":"k","KeyId":"j"}`, `{"keyid":"k"}`,
		`{"KeyId":"a\/b"}`, `{ "KeyId" : "k" }`, `{"KeyId":"k",}`, `{}`, `{"KeyId":1}`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, mk := range []func() any{
			func() any { return &kms.EncryptOutput{} },
			func() any { return &kms.DecryptOutput{} },
			func() any { return &kms.GenerateDataKeyOutput{} },
		} {
			got, want := mk(), mk()
			errGot, errWant := decodeAnswer(b, got), json.Unmarshal(b, want)
			if (errGot == nil) != (errWant == nil) {
				t.Fatalf("%T of %q: error %v, encoding/json's %v", got, b, errGot, errWant)
			}
			if errWant == nil && !reflect.DeepEqual(got, want) {
				t.Fatalf("%T of %q: %+v, encoding/json's %+v", got, b, got, want)
			}
		}
	})
}
