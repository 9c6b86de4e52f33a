package backends

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// The error taxonomy. Every backend error wraps exactly one of these.
var (
	ErrNotFound         = errors.New("key not found")
	ErrPermissionDenied = errors.New("permission denied")
	ErrInvalidArgument  = errors.New("invalid argument")
	ErrDecryptionFailed = errors.New("decryption failed")
	ErrDisabled         = errors.New("key disabled")
	ErrThrottled        = errors.New("throttled")
	ErrUnavailable      = errors.New("backend unavailable")
	ErrUnsupported      = errors.ErrUnsupported
)

// Code is the closed set of error classes, used on the wire and as a metric
// label (so its cardinality is bounded).
type Code string

// Codes, one per sentinel, plus OK, Canceled and Internal.
const (
	CodeOK               Code = "ok"
	CodeNotFound         Code = "not_found"
	CodePermissionDenied Code = "permission_denied"
	CodeInvalidArgument  Code = "invalid_argument"
	CodeDecryptionFailed Code = "decryption_failed"
	CodeDisabled         Code = "disabled"
	CodeThrottled        Code = "throttled"
	CodeUnavailable      Code = "unavailable"
	CodeUnsupported      Code = "unsupported"
	CodeCanceled         Code = "canceled"
	CodeInternal         Code = "internal"
)

var codeOf = []struct {
	err  error
	code Code
}{
	{ErrNotFound, CodeNotFound},
	{ErrPermissionDenied, CodePermissionDenied},
	{ErrInvalidArgument, CodeInvalidArgument},
	{ErrDecryptionFailed, CodeDecryptionFailed},
	{ErrDisabled, CodeDisabled},
	{ErrThrottled, CodeThrottled},
	{ErrUnavailable, CodeUnavailable},
	{ErrUnsupported, CodeUnsupported},
	{context.Canceled, CodeCanceled},
	{context.DeadlineExceeded, CodeUnavailable},
}

// CodeOf classifies err. nil is CodeOK; an error outside the taxonomy is
// CodeInternal.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeInternal
}

// Retryable reports whether err is transient: throttling or unavailability.
// A cancelled or expired context is not retryable.
func Retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return errors.Is(err, ErrThrottled) || errors.Is(err, ErrUnavailable)
}

// Error is the error every backend operation returns. errors.Is matches its
// Kind; errors.As reaches its Err (the backend's own error).
type Error struct {
	Backend string // scheme, e.g. "pkcs11"
	Op      string // operation, e.g. "encrypt"
	Key     string // key name, may be empty
	Kind    error  // one of the sentinels
	Err     error  // the cause, may be nil
}

// NewError builds an *Error. kind must be one of the sentinels.
func NewError(backend, op, key string, kind, cause error) *Error {
	return &Error{Backend: backend, Op: op, Key: key, Kind: kind, Err: cause}
}

// Errorf builds an *Error whose cause is a formatted message.
func Errorf(backend, op, key string, kind error, format string, args ...any) *Error {
	return NewError(backend, op, key, kind, fmt.Errorf(format, args...))
}

func (e *Error) Error() string {
	msg := e.Backend + ": " + e.Op
	if e.Key != "" {
		msg += " key " + strconv.Quote(e.Key)
	}
	if e.Kind != nil {
		msg += ": " + e.Kind.Error()
	}
	if e.Err != nil && (e.Kind == nil || e.Err.Error() != e.Kind.Error()) {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap exposes both the kind and the cause.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// ContextError converts a context error into the taxonomy: Canceled stays
// context.Canceled, DeadlineExceeded is also ErrUnavailable. It returns nil
// when ctx is live.
func ContextError(backend, op, key string, ctx context.Context) error {
	err := ctx.Err()
	if err == nil {
		return nil
	}
	kind := error(context.Canceled)
	if errors.Is(err, context.DeadlineExceeded) {
		kind = ErrUnavailable
	}
	return NewError(backend, op, key, kind, err)
}
