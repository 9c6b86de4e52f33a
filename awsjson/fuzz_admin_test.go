package awsjson

import (
	"errors"
	"testing"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/managed"
)

// FuzzAdminRequest: any body, decoded as each key-management request, is
// refused with an AWS-shaped error or becomes an input the pipeline can
// take — CreateKey's a valid type and mode, a key id, and labels that are
// keybroker labels; an alias request's a valid alias name — never a
// panic.
func FuzzAdminRequest(f *testing.F) {
	f.Add([]byte(`{"Description":"d","KeySpec":"SYMMETRIC_DEFAULT","KeyUsage":"ENCRYPT_DECRYPT","Tags":[{"TagKey":"app","TagValue":"billing"}]}`))
	f.Add([]byte(`{"KeySpec":"HMAC_256","KeyUsage":"GENERATE_VERIFY_MAC","Origin":"AWS_KMS","MultiRegion":false}`))
	f.Add([]byte(`{"CustomerMasterKeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY","Policy":"{}"}`))
	f.Add([]byte(`{"KeySpec":"RSA_2048","Origin":"EXTERNAL","CustomKeyStoreId":"cks-1","XksKeyId":"x"}`))
	f.Add([]byte(`{"Tags":[{"TagKey":"a","TagValue":"1"},{"TagKey":"a","TagValue":"2"}]}`))
	f.Add([]byte(`{"Tags":[{"TagKey":"","TagValue":""}],"KeyId":"alias/x","TagKeys":["a",""]}`))
	f.Add([]byte(`{"KeyId":"arn:aws:kms:eu-west-1:111122223333:key/k","PendingWindowInDays":7}`))
	f.Add([]byte(`{"KeyId":"k","PendingWindowInDays":"7"}`))
	f.Add([]byte(`{"KeyId":"k","Limit":50,"Marker":"bWFya2Vy"}`))
	f.Add([]byte(`{"Tags":null,"TagKeys":null}`))
	f.Add([]byte(`{"AliasName":"alias/app/prod","TargetKeyId":"arn:aws:kms:eu-west-1:111122223333:key/k"}`))
	f.Add([]byte(`{"AliasName":"alias/aws/s3","TargetKeyId":"alias/x"}`))
	f.Add([]byte(`{"AliasName":"app","TargetKeyId":5}`))
	f.Add([]byte(`{"KeyId":"k","RotationPeriodInDays":90}`))
	f.Add([]byte(`{"KeyId":"k","RotationPeriodInDays":1e12}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var e *Error
		for _, v := range []any{&createKeyRequest{}, &keyRequest{}, &scheduleKeyDeletionRequest{}, &tagResourceRequest{}, &untagResourceRequest{}, &listRequest{}, &aliasRequest{}, &enableKeyRotationRequest{}} {
			if err := decode(body, v); err != nil && !errors.As(err, &e) {
				t.Fatalf("decode: %v is not an AWS error", err)
			}
		}
		var ar aliasRequest
		if decode(body, &ar) == nil {
			name, err := newAliasName(ar.AliasName)
			switch {
			case err != nil && !errors.As(err, &e):
				t.Fatalf("newAliasName(%q): %v is not an AWS error", ar.AliasName, err)
			case err == nil && managed.ValidateAlias(name) != nil:
				t.Fatalf("newAliasName(%q) = %q, which is not an alias", ar.AliasName, name)
			}
		}
		var ck createKeyRequest
		if decode(body, &ck) != nil {
			return
		}
		in, err := createKeyInput(&ck)
		if err != nil {
			if !errors.As(err, &e) {
				t.Fatalf("createKeyInput: %v is not an AWS error", err)
			}
			return
		}
		if !in.Type.Valid() || in.Mode != managed.ModeDerive || !envelope.ValidKeyID(in.KeyID) {
			t.Fatalf("createKeyInput = %+v: not a key the pipeline can create", in)
		}
		if err := managed.ValidateLabels(in.Labels); err != nil {
			t.Fatalf("createKeyInput's labels %v: %v", in.Labels, err)
		}
		if len(in.Labels) != len(ck.Tags) {
			t.Fatalf("createKeyInput's labels %v from %d tags", in.Labels, len(ck.Tags))
		}
	})
}
