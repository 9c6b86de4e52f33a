package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
)

func TestWrapErr(t *testing.T) {
	rv := func(fn string, code uint) error { return ck(fn, pkcs11.Error(code)) }
	for _, tc := range []struct {
		name    string
		err     error
		kind    error
		recover recovery
	}{
		{"bad GCM tag", rv("C_Decrypt", pkcs11.CKR_GENERAL_ERROR), backends.ErrDecryptionFailed, recoverNone},
		{"encrypted data invalid", rv("C_Decrypt", pkcs11.CKR_ENCRYPTED_DATA_INVALID), backends.ErrDecryptionFailed, recoverNone},
		{"bad KWP", rv("C_UnwrapKey", pkcs11.CKR_GENERAL_ERROR), backends.ErrDecryptionFailed, recoverNone},
		{"general error elsewhere", rv("C_Encrypt", pkcs11.CKR_GENERAL_ERROR), backends.ErrUnavailable, recoverNone},
		{"stale object", rv("C_EncryptInit", pkcs11.CKR_OBJECT_HANDLE_INVALID), backends.ErrNotFound, recoverObject},
		{"stale key", rv("C_SignInit", pkcs11.CKR_KEY_HANDLE_INVALID), backends.ErrNotFound, recoverObject},
		{"wrong key type", rv("C_EncryptInit", pkcs11.CKR_KEY_TYPE_INCONSISTENT), backends.ErrInvalidArgument, recoverNone},
		{"usage not permitted", rv("C_SignInit", pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED), backends.ErrInvalidArgument, recoverNone},
		{"mechanism invalid", rv("C_SignInit", pkcs11.CKR_MECHANISM_INVALID), backends.ErrInvalidArgument, recoverNone},
		{"wrong PIN", rv("C_Login", pkcs11.CKR_PIN_INCORRECT), backends.ErrPermissionDenied, recoverNone},
		{"PIN locked", rv("C_Login", pkcs11.CKR_PIN_LOCKED), backends.ErrPermissionDenied, recoverNone},
		{"session closed", rv("C_Encrypt", pkcs11.CKR_SESSION_HANDLE_INVALID), backends.ErrUnavailable, recoverSession},
		{"session closed 2", rv("C_Encrypt", pkcs11.CKR_SESSION_CLOSED), backends.ErrUnavailable, recoverSession},
		{"logged out", rv("C_GetSessionInfo", pkcs11.CKR_USER_NOT_LOGGED_IN), backends.ErrUnavailable, recoverSession},
		{"device error", rv("C_Encrypt", pkcs11.CKR_DEVICE_ERROR), backends.ErrUnavailable, recoverModule},
		{"device removed", rv("C_Encrypt", pkcs11.CKR_DEVICE_REMOVED), backends.ErrUnavailable, recoverModule},
		{"token gone", rv("C_OpenSession", pkcs11.CKR_TOKEN_NOT_PRESENT), backends.ErrUnavailable, recoverModule},
		{"not initialised", rv("C_OpenSession", pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED), backends.ErrUnavailable, recoverModule},
		{"not supported", rv("C_WrapKey", pkcs11.CKR_FUNCTION_NOT_SUPPORTED), backends.ErrUnsupported, recoverNone},
		{"canceled", context.Canceled, context.Canceled, recoverNone},
		{"deadline", fmt.Errorf("waiting: %w", context.DeadlineExceeded), backends.ErrUnavailable, recoverNone},
		{"other", errors.New("boom"), backends.ErrUnavailable, recoverNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := recoveryFor(tc.err); got != tc.recover {
				t.Errorf("recoveryFor(%v) = %v, want %v", tc.err, got, tc.recover)
			}
			err := wrapErr("op", "key", tc.err)
			var be *backends.Error
			if !errors.As(err, &be) || be.Op != "op" || be.Key != "key" || be.Backend != scheme {
				t.Fatalf("wrapErr(%v) = %#v, want a *backends.Error naming pkcs11, op and key", tc.err, err)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("wrapErr(%v) = %v, want kind %v", tc.err, err, tc.kind)
			}
			if _, isRV := rvOf(tc.err); isRV {
				var p pkcs11.Error
				if !errors.As(err, &p) {
					t.Errorf("wrapErr(%v): pkcs11.Error not reachable with errors.As", tc.err)
				}
			}
		})
	}
	// A *backends.Error passes through unchanged.
	orig := backends.Errorf(scheme, "encrypt", "k", backends.ErrNotFound, "x")
	if got := wrapErr("other", "", orig); got != error(orig) {
		t.Errorf("wrapErr(*backends.Error) = %v, want it unchanged", got)
	}
}
