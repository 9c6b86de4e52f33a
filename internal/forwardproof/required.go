package forwardproof

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RequiredReason is the ErrorInfo reason of an edge's answer that it must
// forward a call which came without a proof for it (Required).
const RequiredReason = "FORWARD_PROOF_REQUIRED"

// errorDomain is the ErrorInfo domain of keybroker's reasons (the same as
// rpc.ErrorDomain, which this package cannot import).
const errorDomain = "keybroker.dev"

// Required is an edge's FailedPrecondition asking for a forward proof:
// msg says why. It carries an ErrorInfo with RequiredReason, which the
// client reads from the error itself — no trailer to ask for on every call.
// (Edges also set RequiredTrailer, for clients that read trailers.)
func Required(msg string) error {
	st := status.New(codes.FailedPrecondition, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: RequiredReason, Domain: errorDomain}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// IsRequired says whether err is an edge asking for a forward proof.
func IsRequired(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == RequiredReason && ei.GetDomain() == errorDomain {
			return true
		}
	}
	return false
}
