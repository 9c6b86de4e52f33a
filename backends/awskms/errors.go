package awskms

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/keybroker/keybroker/backends"
)

// errorKinds classifies AWS KMS error codes (smithy.APIError.ErrorCode()).
// Codes not listed are classified by HTTP status in classify.
var errorKinds = map[string]error{
	"NotFoundException": backends.ErrNotFound,

	"DisabledException":        backends.ErrDisabled,
	"KMSInvalidStateException": backends.ErrDisabled, // pending deletion or import, unavailable key

	"InvalidCiphertextException":   backends.ErrDecryptionFailed,
	"IncorrectKeyException":        backends.ErrDecryptionFailed,
	"KMSInvalidMacException":       backends.ErrDecryptionFailed,
	"KMSInvalidSignatureException": backends.ErrDecryptionFailed,

	"AccessDeniedException":               backends.ErrPermissionDenied,
	"NotAuthorizedException":              backends.ErrPermissionDenied,
	"UnrecognizedClientException":         backends.ErrPermissionDenied,
	"InvalidClientTokenId":                backends.ErrPermissionDenied,
	"InvalidSignatureException":           backends.ErrPermissionDenied,
	"IncompleteSignatureException":        backends.ErrPermissionDenied,
	"MissingAuthenticationTokenException": backends.ErrPermissionDenied,
	"ExpiredTokenException":               backends.ErrPermissionDenied,
	"InvalidGrantTokenException":          backends.ErrPermissionDenied,

	"ThrottlingException":      backends.ErrThrottled,
	"LimitExceededException":   backends.ErrThrottled,
	"TooManyRequestsException": backends.ErrThrottled,

	"KMSInternalException":        backends.ErrUnavailable,
	"DependencyTimeoutException":  backends.ErrUnavailable,
	"KeyUnavailableException":     backends.ErrUnavailable,
	"ServiceUnavailableException": backends.ErrUnavailable,
	"InternalFailure":             backends.ErrUnavailable,

	"ValidationException":           backends.ErrInvalidArgument,
	"InvalidKeyUsageException":      backends.ErrInvalidArgument,
	"UnsupportedOperationException": backends.ErrInvalidArgument,
	"InvalidArnException":           backends.ErrInvalidArgument,
	"InvalidAliasNameException":     backends.ErrInvalidArgument,
	"AlreadyExistsException":        backends.ErrInvalidArgument,
	"SerializationException":        backends.ErrInvalidArgument,
	"DryRunOperationException":      backends.ErrInvalidArgument,
}

// classify maps an error from the SDK to the backends taxonomy. ctx is the
// caller's context: once it is done, an error without a service answer in
// it is the context's doing.
func classify(ctx context.Context, err error) (kind, cause error) {
	if _, ok := errors.AsType[*limitError](err); ok {
		return backends.ErrThrottled, err
	}
	if apiErr, ok := errors.AsType[smithy.APIError](err); ok {
		return apiKind(apiErr, err), err
	}
	ctxErr := ctx.Err()
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(ctxErr, context.Canceled):
		return context.Canceled, withCause(err, context.Canceled)
	case errors.Is(err, context.DeadlineExceeded) || ctxErr != nil:
		return backends.ErrUnavailable, withCause(err, context.DeadlineExceeded)
	}
	if _, ok := errors.AsType[smithy.InvalidParamsError](err); ok {
		return backends.ErrInvalidArgument, err
	}
	// Connection failures, unreadable answers, credentials that cannot be
	// resolved: the service could not be reached or understood.
	return backends.ErrUnavailable, err
}

func apiKind(apiErr smithy.APIError, err error) error {
	code := apiErr.ErrorCode()
	if kind, ok := errorKinds[code]; ok {
		return kind
	}
	switch {
	case strings.HasPrefix(code, "CloudHsm"), strings.HasPrefix(code, "Xks"), strings.HasPrefix(code, "CustomKeyStore"):
		// The key lives in a custom key store that is not answering.
		return backends.ErrUnavailable
	}
	status := 0
	if re, ok := errors.AsType[*smithyhttp.ResponseError](err); ok {
		status = re.HTTPStatusCode()
	}
	switch {
	case status == 403:
		return backends.ErrPermissionDenied
	case status == 429:
		return backends.ErrThrottled
	case status >= 500 || apiErr.ErrorFault() == smithy.FaultServer:
		return backends.ErrUnavailable
	case status >= 400 || apiErr.ErrorFault() == smithy.FaultClient:
		return backends.ErrInvalidArgument
	}
	return backends.ErrUnavailable
}

// withCause makes sure target is reachable from err with errors.Is.
func withCause(err, target error) error {
	if errors.Is(err, target) {
		return err
	}
	return fmt.Errorf("%w: %w", target, err)
}
