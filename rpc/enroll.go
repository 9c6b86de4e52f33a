package rpc

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NotEnrolledReason is the ErrorInfo reason (domain ErrorDomain) of the
// PermissionDenied status the central tier gives an edge that is not, or
// no longer, enrolled — at Register, or as the end of its Watch stream
// when an admin removes it. An edge that receives it forgets its replica
// and its material.
const NotEnrolledReason = "EDGE_NOT_ENROLLED"

// ErrorDomain is the ErrorInfo domain of keybroker's reasons.
const ErrorDomain = "keybroker.dev"

// NotEnrolled is the status refusing an edge that is not enrolled; msg
// says why and how to enroll it.
func NotEnrolled(msg string) error {
	st := status.New(codes.PermissionDenied, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: NotEnrolledReason, Domain: ErrorDomain}); err == nil {
		return d.Err()
	}
	return st.Err()
}

// IsNotEnrolled says whether err is the central tier telling an edge that
// it is not, or no longer, enrolled.
func IsNotEnrolled(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == NotEnrolledReason && ei.GetDomain() == ErrorDomain {
			return true
		}
	}
	return false
}
