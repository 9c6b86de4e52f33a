package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/clip"
)

// Sentinels for the ways an operation fails; test with errors.Is. Every
// error from a Client operation is an *Error matching exactly one of them
// (or none, for codes outside this set), and status.Code works on it too.
var (
	// ErrInvalidArgument: bad input — a malformed or tampered ciphertext,
	// the wrong encryption context, a request over the API's limits.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: the key (or key version) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a key with that id exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrPermissionDenied: the policy does not allow this caller the
	// operation on this key.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnauthenticated: the node did not accept the client certificate.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrFailedPrecondition: the key cannot do this now — disabled,
	// pending deletion, the wrong type, below its minimum version.
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrUnavailable: no node could perform the operation before the
	// deadline or the retry budget ran out.
	ErrUnavailable = errors.New("unavailable")
	// ErrDeadlineExceeded: the caller's deadline passed.
	ErrDeadlineExceeded = errors.New("deadline exceeded")
	// ErrResourceExhausted: a node or backend is throttling.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrInternal: a fault inside keybroker.
	ErrInternal = errors.New("internal error")
)

var codeErrors = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalidArgument,
	codes.OutOfRange:         ErrInvalidArgument,
	codes.NotFound:           ErrNotFound,
	codes.AlreadyExists:      ErrAlreadyExists,
	codes.PermissionDenied:   ErrPermissionDenied,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.FailedPrecondition: ErrFailedPrecondition,
	codes.Unavailable:        ErrUnavailable,
	codes.DeadlineExceeded:   ErrDeadlineExceeded,
	codes.Canceled:           context.Canceled,
	codes.ResourceExhausted:  ErrResourceExhausted,
	codes.Internal:           ErrInternal,
	codes.DataLoss:           ErrInternal,
	codes.Unknown:            ErrInternal,
}

// Error is the error of one operation: what was asked, of which key, the
// node that answered last, and the broker's status.
type Error struct {
	// Op is the operation, e.g. "Encrypt".
	Op string
	// Key is the managed key id, when the operation has one.
	Key string
	// Node is the address of the node whose answer this is ("" when the
	// error arose in the client).
	Node string
	// Code and Message are the broker's gRPC status.
	Code    codes.Code
	Message string
	// Attempts counts the nodes tried, over all passes.
	Attempts int
	cause    error
}

func (e *Error) Error() string {
	s := "keybroker: " + e.Op
	if e.Key != "" {
		// A key id the caller got wrong may be any length: quote at
		// most clip.Max bytes of it.
		if len(e.Key) > clip.Max {
			s += " " + clip.Quote(e.Key)
		} else {
			s += " " + e.Key
		}
	}
	if e.Node != "" {
		s += " at " + e.Node
	}
	s += ": " + e.Message
	if e.Attempts > 1 {
		s += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return s
}

// Is matches the sentinel of the error's code.
func (e *Error) Is(target error) bool {
	return codeErrors[e.Code] == target && target != nil
}

// Unwrap returns the cause when the error arose in the client (a context
// error, an envelope error).
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus lets status.Code and status.Convert see the broker's status.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// fromRPC wraps the error of an RPC.
func fromRPC(op, key, node string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st := status.Convert(err)
	out := &Error{Op: op, Key: key, Node: node, Code: st.Code(), Message: st.Message(), Attempts: 1}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		out.Code, out.cause = codes.DeadlineExceeded, err
	case errors.Is(err, context.Canceled):
		out.Code, out.cause = codes.Canceled, err
	}
	return out
}

// local is an error found in the client before or after any RPC.
func local(op, key string, code codes.Code, cause error) *Error {
	return &Error{Op: op, Key: key, Code: code, Message: cause.Error(), cause: cause}
}

// invalid wraps an envelope error: a ciphertext that does not parse or
// open, or a context over the limits.
func invalid(op, key string, err error) *Error {
	var e *Error
	if errors.As(streamErr(op, key, err), &e) {
		return e
	}
	return local(op, key, codes.Internal, err)
}
