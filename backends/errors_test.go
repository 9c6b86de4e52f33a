package backends

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

type causeErr struct{ code int }

func (c *causeErr) Error() string { return fmt.Sprintf("device said 0x%x", c.code) }

func TestErrorKeepsKindAndCause(t *testing.T) {
	cause := &causeErr{0x30}
	err := fmt.Errorf("wrapping: %w", NewError("pkcs11", "encrypt", "root-1", ErrUnavailable, cause))
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("errors.Is(%v, ErrUnavailable) = false", err)
	}
	var got *causeErr
	if !errors.As(err, &got) || got.code != 0x30 {
		t.Errorf("errors.As to the cause failed: %v", err)
	}
	var be *Error
	if !errors.As(err, &be) || be.Op != "encrypt" || be.Key != "root-1" {
		t.Errorf("errors.As(*Error) = %+v", be)
	}
	want := `pkcs11: encrypt key "root-1": backend unavailable: device said 0x30`
	if !strings.Contains(err.Error(), want) {
		t.Errorf("Error() = %q, want it to contain %q", err.Error(), want)
	}
	if got := NewError("softkms", "describe", "k", ErrNotFound, nil).Error(); got != `softkms: describe key "k": key not found` {
		t.Errorf("Error() without cause = %q", got)
	}
}

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err       error
		code      Code
		retryable bool
	}{
		{nil, CodeOK, false},
		{NewError("x", "op", "", ErrNotFound, nil), CodeNotFound, false},
		{NewError("x", "op", "", ErrPermissionDenied, nil), CodePermissionDenied, false},
		{NewError("x", "op", "", ErrInvalidArgument, nil), CodeInvalidArgument, false},
		{NewError("x", "op", "", ErrDecryptionFailed, nil), CodeDecryptionFailed, false},
		{NewError("x", "op", "", ErrDisabled, nil), CodeDisabled, false},
		{NewError("x", "op", "", ErrThrottled, nil), CodeThrottled, true},
		{NewError("x", "op", "", ErrUnavailable, nil), CodeUnavailable, true},
		{NewError("x", "op", "", ErrUnsupported, nil), CodeUnsupported, false},
		{context.Canceled, CodeCanceled, false},
		{NewError("x", "op", "", ErrUnavailable, context.DeadlineExceeded), CodeUnavailable, false},
		{errors.New("mystery"), CodeInternal, false},
	} {
		if got := CodeOf(tc.err); got != tc.code {
			t.Errorf("CodeOf(%v) = %s, want %s", tc.err, got, tc.code)
		}
		if got := Retryable(tc.err); got != tc.retryable {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.retryable)
		}
	}
}

func TestContextError(t *testing.T) {
	if err := ContextError("x", "op", "k", t.Context()); err != nil {
		t.Errorf("ContextError(live) = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ContextError("x", "op", "k", ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ContextError(cancelled) = %v", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 0)
	defer cancel()
	err := ContextError("x", "op", "k", ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("ContextError(expired) = %v, want deadline exceeded and unavailable", err)
	}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	var opened string
	open := func(_ context.Context, uri string, _ Options) (Backend, error) {
		opened = uri
		return nil, nil
	}
	if err := r.Register("softkms", open); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a:b", "softkms"} {
		if err := r.Register(bad, open); err == nil {
			t.Errorf("Register(%q) succeeded twice or with a bad scheme", bad)
		}
	}
	if err := r.Register("x", nil); err == nil {
		t.Error("Register with a nil function succeeded")
	}
	if _, err := r.Open(t.Context(), "softkms:root;path=/x;kek-source=/y", Options{}); err != nil || opened == "" {
		t.Errorf("Open(softkms) = %v, opened %q", err, opened)
	}
	for _, uri := range []string{"vault:x", "SOFTKMS:x", "noscheme"} {
		_, err := r.Open(t.Context(), uri, Options{})
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Open(%q) err = %v, want invalid argument", uri, err)
		}
	}
	if _, err := r.Open(t.Context(), "vault:x", Options{}); !strings.Contains(err.Error(), "registered: softkms") {
		t.Errorf("Open(unknown) error %v does not list the registered schemes", err)
	}
	if got := r.Schemes(); len(got) != 1 || got[0] != "softkms" {
		t.Errorf("Schemes() = %v", got)
	}
}
