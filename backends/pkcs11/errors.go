package pkcs11

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
)

// scheme is the backend name in errors and the URI scheme.
const scheme = "pkcs11"

// callError is a failed Cryptoki call: the function's name and its CKR code.
// The pkcs11.Error stays reachable with errors.As.
type callError struct {
	fn string
	rv pkcs11.Error
}

func (e *callError) Error() string { return e.fn + ": " + e.rv.Error() }
func (e *callError) Unwrap() error { return e.rv }

// ck names the Cryptoki function behind err.
func ck(fn string, err error) error {
	if err == nil {
		return nil
	}
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return &callError{fn: fn, rv: rv}
	}
	return fmt.Errorf("%s: %w", fn, err)
}

// rvOf returns the CKR code inside err, or false.
func rvOf(err error) (uint, bool) {
	var rv pkcs11.Error
	if errors.As(err, &rv) {
		return uint(rv), true
	}
	return 0, false
}

// recovery is what the backend does about a failed call before retrying.
type recovery int

const (
	recoverNone recovery = iota
	// recoverObject: an object handle is stale; flush the handle caches.
	recoverObject
	// recoverSession: a session was closed under us or the login was lost;
	// sweep dead sessions and log in again.
	recoverSession
	// recoverModule: the module or token went away; finalise, initialise,
	// find the token and log in again.
	recoverModule
)

func (r recovery) String() string {
	switch r {
	case recoverObject:
		return "object"
	case recoverSession:
		return "session"
	case recoverModule:
		return "module"
	}
	return "none"
}

// recoveryFor classifies err.
func recoveryFor(err error) recovery {
	rv, ok := rvOf(err)
	if !ok {
		return recoverNone
	}
	switch rv {
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return recoverObject
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN:
		return recoverSession
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return recoverModule
	}
	return recoverNone
}

// decryptFailure reports whether rv, returned by fn, means the ciphertext or
// wrapped key did not authenticate. SoftHSM reports a bad GCM tag or AAD, and
// a bad KWP integrity check, as CKR_GENERAL_ERROR, so on the final decrypt and
// unwrap calls (whose key and mechanism were already accepted) that code is a
// decryption failure too.
func decryptFailure(fn string, rv uint) bool {
	switch fn {
	case "C_Decrypt", "C_UnwrapKey":
	default:
		return false
	}
	switch rv {
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_DATA_INVALID,
		pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_SIGNATURE_INVALID:
		return true
	}
	return false
}

// kindOf maps a CKR code to the error taxonomy.
func kindOf(rv uint) error {
	switch rv {
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return backends.ErrNotFound
	case pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_MECHANISM_INVALID,
		pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID, pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID,
		pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_READ_ONLY, pkcs11.CKR_TEMPLATE_INCOMPLETE,
		pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_CURVE_NOT_SUPPORTED,
		pkcs11.CKR_WRAPPING_KEY_TYPE_INCONSISTENT, pkcs11.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_WRAPPING_KEY_SIZE_RANGE, pkcs11.CKR_UNWRAPPING_KEY_SIZE_RANGE, pkcs11.CKR_KEY_NOT_WRAPPABLE,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_WRAPPED_KEY_LEN_RANGE, pkcs11.CKR_WRAPPED_KEY_INVALID:
		return backends.ErrInvalidArgument
	case pkcs11.CKR_SIGNATURE_INVALID, pkcs11.CKR_SIGNATURE_LEN_RANGE:
		return backends.ErrDecryptionFailed
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_USER_PIN_NOT_INITIALIZED, pkcs11.CKR_USER_TYPE_INVALID,
		pkcs11.CKR_TOKEN_WRITE_PROTECTED, pkcs11.CKR_SESSION_READ_ONLY, pkcs11.CKR_KEY_UNEXTRACTABLE,
		pkcs11.CKR_ATTRIBUTE_SENSITIVE, pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
		pkcs11.CKR_USER_TOO_MANY_TYPES:
		return backends.ErrPermissionDenied
	case pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		return backends.ErrUnsupported
	case pkcs11.CKR_FUNCTION_CANCELED:
		return context.Canceled
	}
	// CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
	// CKR_CRYPTOKI_NOT_INITIALIZED, CKR_SESSION_*, CKR_USER_NOT_LOGGED_IN,
	// CKR_HOST_MEMORY, CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED, CKR_SESSION_COUNT
	// and anything unknown: the token could not serve the request now.
	return backends.ErrUnavailable
}

// wrapErr turns whatever an operation returned into a *backends.Error naming
// op and key. A *backends.Error passes through; context errors keep
// errors.Is(err, context.Canceled) / DeadlineExceeded.
func wrapErr(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var be *backends.Error
	if errors.As(err, &be) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return backends.NewError(scheme, op, key, context.Canceled, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return backends.NewError(scheme, op, key, backends.ErrUnavailable, err)
	}
	var ce *callError
	if errors.As(err, &ce) {
		if decryptFailure(ce.fn, uint(ce.rv)) {
			return backends.NewError(scheme, op, key, backends.ErrDecryptionFailed, err)
		}
		return backends.NewError(scheme, op, key, kindOf(uint(ce.rv)), err)
	}
	if rv, ok := rvOf(err); ok {
		return backends.NewError(scheme, op, key, kindOf(rv), err)
	}
	return backends.NewError(scheme, op, key, backends.ErrUnavailable, err)
}

// errClosed is the cause of every error after Close.
var errClosed = errors.New("backend is closed")

// errBreakerOpen is the cause of fail-fast errors while the circuit is open.
var errBreakerOpen = errors.New("circuit breaker open after repeated failed recoveries; failing fast until the cool-down ends")
