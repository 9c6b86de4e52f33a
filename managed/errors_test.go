package managed

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keybroker/keybroker/envelope"
)

func TestErrorKeepsKindTextAndCause(t *testing.T) {
	cause := fmt.Errorf("%w: 65 pairs, limit 64", envelope.ErrContext)
	err := error(Errorf(ErrInvalidArgument, "%w", cause))
	if got, want := err.Error(), "invalid argument: encryption context: 65 pairs, limit 64"; got != want && got != "invalid argument: "+cause.Error() {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("errors.Is(%v, ErrInvalidArgument) = false", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Errorf("errors.Is(%v, ErrNotFound) = true", err)
	}
	if !errors.Is(err, envelope.ErrContext) {
		t.Errorf("errors.Is(%v, envelope.ErrContext) = false: the cause is lost", err)
	}
	var me *Error
	if !errors.As(fmt.Errorf("wrapped: %w", err), &me) || me.Kind != ErrInvalidArgument || me.Message() != cause.Error() {
		t.Errorf("errors.As = %+v, want kind %v and message %q", me, ErrInvalidArgument, cause.Error())
	}
}
