package wire

import (
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/internal/reason"
)

// NotEnrolledReason is the ErrorInfo reason (package reason) of the
// PermissionDenied status the central tier gives an edge that is not, or
// no longer, enrolled — at Register, or as the end of its Watch stream
// when an admin removes it. An edge that receives it forgets its replica
// and its material.
const NotEnrolledReason = "EDGE_NOT_ENROLLED"

// NotEnrolled is the status refusing an edge that is not enrolled; msg
// says why and how to enroll it.
func NotEnrolled(msg string) error {
	return reason.Status(codes.PermissionDenied, NotEnrolledReason, msg)
}

// IsNotEnrolled says whether err is the central tier telling an edge that
// it is not, or no longer, enrolled.
func IsNotEnrolled(err error) bool {
	return reason.Is(err, codes.PermissionDenied, NotEnrolledReason)
}
