package awsjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzRequest: any KeyId and any body, decoded as each operation's
// request, is a key id that passes the key-id check or an AWS-shaped
// error — never a panic.
func FuzzRequest(f *testing.F) {
	s := &Server{cfg: Config{Region: "eu-west-1", Account: "111122223333"}}
	f.Add("alias/demo", []byte(`{"KeyId":"alias/demo","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}`))
	f.Add("arn:aws:kms:eu-west-1:111122223333:key/demo", []byte(`{"CiphertextBlob":"AAAA","NumberOfBytes":32}`))
	f.Add("arn:aws:kms:eu-west-1:111122223333:alias/x", []byte(`{"KeySpec":"AES_256"}`))
	f.Add("arn:aws:kms:::", []byte(`[`))
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		id, err := s.keyID(name)
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Fatalf("keyID(%q): %v is not an AWS error", name, err)
		}
		if err == nil {
			if _, err := checkID(id); err != nil {
				t.Fatalf("keyID(%q) = %q, which is not a key id", name, id)
			}
		}
		for _, v := range []any{&encryptRequest{}, &decryptRequest{}, &reEncryptRequest{}, &generateDataKeyRequest{}, &generateRandomRequest{}, &keyRequest{}, &signRequest{}, &macRequest{}, &listKeysRequest{}} {
			if err := decode(body, v); err != nil && !errors.As(err, &e) {
				t.Fatalf("decode: %v is not an AWS error", err)
			}
		}
	})
}

// TestKeyNames: what names a key, and what does not.
func TestKeyNames(t *testing.T) {
	s := &Server{cfg: Config{Region: "eu-west-1", Account: "111122223333"}}
	for name, want := range map[string]string{
		"demo": "demo", "alias/demo": "demo", "team/app": "team/app",
		"arn:aws:kms:eu-west-1:111122223333:key/demo":    "demo",
		"arn:aws:kms:eu-west-1:111122223333:alias/demo":  "demo",
		"arn:aws:kms:eu-west-1:111122223333:key/team/ap": "team/ap",
	} {
		if got, err := s.keyID(name); err != nil || got != want {
			t.Errorf("keyID(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	for name, typ := range map[string]string{
		"": "ValidationException", "alias/": "ValidationException", "bad id!": "ValidationException",
		"arn:aws:kms:us-east-1:111122223333:key/demo":   "NotFoundException",
		"arn:aws:kms:eu-west-1:999999999999:key/demo":   "NotFoundException",
		"arn:aws:s3:eu-west-1:111122223333:key/demo":    "NotFoundException",
		"arn:aws:kms:eu-west-1:111122223333:grant/demo": "NotFoundException",
	} {
		_, err := s.keyID(name)
		var e *Error
		if !errors.As(err, &e) || e.Type != typ {
			t.Errorf("keyID(%q) = %v, want %s", name, err, typ)
		}
	}
}

// FuzzFastDecode: whatever the fast reader accepts, it reads exactly as
// encoding/json does (the requests, and the key names an edge's relay
// decision reads); what it does not accept goes to encoding/json.
func FuzzFastDecode(f *testing.F) {
	f.Add([]byte(`{"KeyId":"alias/demo","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}`))
	f.Add([]byte(` { "CiphertextBlob" : "AAAA" , "KeyId":"k", "EncryptionContext":{} } `))
	f.Add([]byte(`{"SourceKeyId":"a","DestinationKeyId":"b","CiphertextBlob":"","DestinationEncryptionContext":{"x":"é"}}`))
	f.Add([]byte(`{"keyid":"a","KeyId":"b"}`))
	f.Add([]byte(`{"KeyId":"a\u0041","Plaintext":null}`))
	f.Add([]byte(`{"EncryptionContext":{"a":"b","a":"c"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(fast fastDecoder, slow any) {
			if !fastDecode(body, fast.fastFields()) {
				return
			}
			if err := json.Unmarshal(body, slow); err != nil {
				t.Fatalf("the fast reader took %q, which encoding/json refuses: %v", body, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%q: fast reader %+v, encoding/json %+v", body, fast, slow)
			}
		}
		check(&encryptRequest{}, &encryptRequest{})
		check(&decryptRequest{}, &decryptRequest{})
		check(&reEncryptRequest{}, &reEncryptRequest{})
		for _, op := range []string{"Encrypt", "Decrypt", "ReEncrypt"} {
			if got, ok := fastKeyNames(op, body); ok {
				var want keyNames
				if err := json.Unmarshal(body, &want); err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("%s %q: fastKeyNames %+v, encoding/json %+v, %v", op, body, got, want, err)
				}
			}
		}
	})
}

// TestFastEncode: the answers that write their own JSON write what
// json.Marshal writes.
func TestFastEncode(t *testing.T) {
	for _, v := range []fastEncoder{
		encryptResponse{CiphertextBlob: []byte{0, 1, 2, 0xff}, KeyID: "arn:aws:kms:eu-west-1:111122223333:key/demo", EncryptionAlgorithm: symmetricDefault},
		encryptResponse{KeyID: "a<b>&\"c\\\n\u2028é\xff"},
		decryptResponse{Plaintext: []byte{}, KeyID: "k"},
		decryptResponse{Plaintext: bytes.Repeat([]byte("p"), 1025), KeyID: "k", EncryptionAlgorithm: symmetricDefault},
		reEncryptResponse{CiphertextBlob: []byte("x"), SourceKeyID: "s", KeyID: "d", SourceEncryptionAlgorithm: "A", DestinationEncryptionAlgorithm: "B"},
	} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got := v.appendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("appendJSON = %s, want %s", got, want)
		}
	}
}

// plainASCII's eight-bytes-at-a-time check agrees with the byte-by-byte
// one on every input.
func FuzzPlainASCII(f *testing.F) {
	f.Add([]byte("AQIDBAUGBwgJCgsMDQ4PEA=="))
	f.Add([]byte("abcdefg\\hijklmnop"))
	f.Add([]byte("abcdefgh\x1fijklmnop"))
	f.Add([]byte("abcdefgh\x7fijklmnop\x80"))
	f.Add([]byte(" !\"#$%&'()*+,-./0123456789:;<=>?@[]^_`{|}~"))
	f.Fuzz(func(t *testing.T, v []byte) {
		want := true
		for _, c := range v {
			if c < 0x20 || c >= 0x80 || c == '\\' {
				want = false
			}
		}
		if got := plainASCII(v); got != want {
			t.Fatalf("plainASCII(%q) = %v, want %v", v, got, want)
		}
	})
}
