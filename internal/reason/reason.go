// Package reason gives keybroker's gRPC refusals a machine-readable reason
// — a google.rpc.ErrorInfo with domain Domain — that a client or an edge
// acts on without parsing the message: an edge told it is not enrolled
// forgets its replica, a client asked for a forward proof signs and
// retries.
package reason

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of keybroker's reasons.
const Domain = "keybroker.dev"

// Status is a status error of code with msg, carrying reason.
func Status(code codes.Code, reason, msg string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: Domain}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// Is says whether err is a status of code carrying reason.
func Is(err error, code codes.Code, reason string) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == reason && ei.GetDomain() == Domain {
			return true
		}
	}
	return false
}
