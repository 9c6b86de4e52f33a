package main

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/backends"
)

// Exit codes; the root help, the package doc and the README list them too.
const (
	exitOK           = 0
	exitFailure      = 1
	exitUsage        = 2
	exitDenied       = 3
	exitNotFound     = 4
	exitUnavailable  = 5
	exitInvalid      = 6
	exitVerifyFailed = 7
	exitTLS          = 8
	exitTruncated    = 9
	// An interrupted command exits 128 + the signal's number (130 for
	// SIGINT, 143 for SIGTERM); see interruptError.
)

// exitError is an error that chooses its exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(err error) error { return &exitError{exitUsage, err} }

func usageErrorf(format string, args ...any) error {
	return usageError(fmt.Errorf(format, args...))
}

// invalidInputf reports input the API would refuse, found before sending.
func invalidInputf(format string, args ...any) error {
	return &exitError{exitInvalid, fmt.Errorf(format, args...)}
}

func verifyFailedf(format string, args ...any) error {
	return &exitError{exitVerifyFailed, fmt.Errorf(format, args...)}
}

// backendError gives an error of a backend opened by the CLI itself (root
// create) the exit code its class has in the API: a key that exists is the
// backends' invalid argument, so exit 6 as AlreadyExists is.
func backendError(err error) error {
	for _, m := range []struct {
		err  error
		code int
	}{
		{backends.ErrInvalidArgument, exitInvalid},
		{backends.ErrNotFound, exitNotFound},
		{backends.ErrPermissionDenied, exitDenied},
		{backends.ErrUnavailable, exitUnavailable},
	} {
		if errors.Is(err, m.err) {
			return &exitError{m.code, err}
		}
	}
	return err
}

// rpcError is a failed RPC: the operation and the broker's status.
type rpcError struct {
	op   string
	st   *status.Status
	hint string
}

func (e *rpcError) Error() string {
	msg := fmt.Sprintf("%s: %s: %s", e.op, codeText(e.st.Code()), e.st.Message())
	hint := e.hint
	if hint == "" {
		hint = statusHint(e.st)
	}
	if hint != "" {
		msg += " (" + hint + ")"
	}
	return msg
}

// GRPCStatus lets status.FromError see through the wrapping.
func (e *rpcError) GRPCStatus() *status.Status { return e.st }

// codeText spells a code for people: FailedPrecondition → "failed precondition".
func codeText(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte(' ')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// exitCode maps err to the process exit code. started says whether a
// command's Run had begun; untyped errors before that come from cobra's
// argument and flag checks.
func exitCode(err error, started bool) int {
	if ee, ok := errors.AsType[*exitError](err); ok {
		return ee.code
	}
	if st, ok := status.FromError(err); ok {
		if code, ok := statusExit(st); ok {
			return code
		}
		switch st.Code() {
		case codes.PermissionDenied, codes.Unauthenticated:
			return exitDenied
		case codes.NotFound:
			return exitNotFound
		case codes.Unavailable, codes.DeadlineExceeded:
			return exitUnavailable
		case codes.InvalidArgument, codes.FailedPrecondition, codes.AlreadyExists:
			return exitInvalid
		}
		return exitFailure
	}
	if !started {
		return exitUsage
	}
	return exitFailure
}
