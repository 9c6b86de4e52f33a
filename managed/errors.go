package managed

import "fmt"

// Error is an error of one of the kinds above (Kind: ErrNotFound,
// ErrInvalidArgument, …) that keeps its cause. errors.Is(err, kind) matches
// the kind, errors.Is and errors.As see through to the cause (an envelope
// or policy error, say), and the text is "kind: message", the message
// being the cause's own text.
//
// Op and Key, when set, name the operation and the key the error is
// about, for programs (metrics, logs) that want them without parsing the
// text; the text already names them where it matters, and does not repeat
// them.
type Error struct {
	// Kind is one of the Err values of this package.
	Kind error
	// Op is the operation, as the audit log names it ("Encrypt"), or "".
	Op string
	// Key is the key id, or "".
	Key string
	// Err is the message and the cause.
	Err error
}

// Error is "kind: message".
func (e *Error) Error() string { return e.Kind.Error() + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is matches the kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Message is the error's text without the kind, which a caller that maps
// the kind to a code of its own (a gRPC status) need not repeat.
func (e *Error) Message() string { return e.Err.Error() }

// Errorf returns an error of the given kind (one of the Err values) whose
// message is fmt.Errorf(format, args...): a %w verb keeps the cause.
func Errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Err: fmt.Errorf(format, args...)}
}
