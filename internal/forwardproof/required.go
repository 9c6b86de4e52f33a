package forwardproof

import (
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/internal/reason"
)

// RequiredReason is the ErrorInfo reason (package reason) of an edge's
// answer that it must forward a call which came without a proof for it
// (Required).
const RequiredReason = "FORWARD_PROOF_REQUIRED"

// Required is an edge's FailedPrecondition asking for a forward proof:
// msg says why. The client reads the reason from the error itself — no
// trailer to ask for on every call. (Edges also set RequiredTrailer, for
// clients that read trailers.)
func Required(msg string) error {
	return reason.Status(codes.FailedPrecondition, RequiredReason, msg)
}

// IsRequired says whether err is an edge asking for a forward proof.
func IsRequired(err error) bool {
	return reason.Is(err, codes.FailedPrecondition, RequiredReason)
}
