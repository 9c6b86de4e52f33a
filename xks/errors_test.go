package xks

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// TestErrorNames: every error the pipeline or the node can return is
// named with the spec's errorName and HTTP status, including those a
// server test cannot easily provoke (throttling, an unreachable root of
// trust, an unsupported call, an internal failure, the audit down).
func TestErrorNames(t *testing.T) {
	s := &Server{cfg: Config{Status: func(err error) *status.Status {
		if st, ok := status.FromError(err); ok {
			return st
		}
		return status.New(codes.InvalidArgument, err.Error())
	}}}
	for _, tc := range []struct {
		err    error
		status int
		name   string
	}{
		{status.Error(codes.NotFound, "x"), http.StatusNotFound, KeyNotFoundException},
		{status.Error(codes.PermissionDenied, "x"), http.StatusForbidden, AccessDeniedException},
		{status.Error(codes.InvalidArgument, "x"), http.StatusBadRequest, ValidationException},
		{status.Error(codes.FailedPrecondition, "x"), http.StatusBadRequest, InvalidStateException},
		{status.Error(codes.ResourceExhausted, "x"), http.StatusTooManyRequests, ThrottlingException},
		{status.Error(codes.Unavailable, "x"), http.StatusServiceUnavailable, DependencyTimeoutException},
		{status.Error(codes.DeadlineExceeded, "x"), http.StatusServiceUnavailable, DependencyTimeoutException},
		{status.Error(codes.Unimplemented, "x"), http.StatusNotImplemented, UnsupportedOperationException},
		{status.Error(codes.Internal, "x"), http.StatusInternalServerError, InternalException},
		{fmt.Errorf("%w", managed.ErrBadCiphertext), http.StatusBadRequest, InvalidCiphertextException},
		{fmt.Errorf("%w", managed.ErrXKSKeyUsage), http.StatusBadRequest, InvalidKeyUsageException},
		{pipeline.ErrAuditDown, http.StatusServiceUnavailable, DependencyTimeoutException},
		{&Error{http.StatusBadRequest, ValidationException, "x"}, http.StatusBadRequest, ValidationException},
	} {
		got := s.xksError(tc.err)
		if got.Status != tc.status || got.Name != tc.name {
			t.Errorf("xksError(%v) = %d %s, want %d %s", tc.err, got.Status, got.Name, tc.status, tc.name)
		}
	}
	var e *Error
	if !errors.As(s.xksError(status.Error(codes.Unknown, "x")), &e) {
		t.Error("xksError does not return an *Error")
	}
}

type nopCredentials struct{}

func (nopCredentials) SigningKey(context.Context, string, string, string, string) ([]byte, identity.Identity, error) {
	return nil, identity.Identity{}, sigv4.ErrUnknownKey
}

// TestNewRefusesBadConfig: New refuses what the spec or the node cannot
// serve, and accepts the good configuration.
func TestNewRefusesBadConfig(t *testing.T) {
	good := func() Config {
		return Config{Pipeline: &pipeline.Pipeline{}, Status: status.Convert, Credentials: nopCredentials{}, Region: "eu-west-1", Prefix: "/kb/xks_1", HealthKey: "h"}
	}
	if _, err := New(good()); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	for name, change := range map[string]func(*Config){
		"no credentials":     func(c *Config) { c.Credentials = nil },
		"bad region":         func(c *Config) { c.Region = "Europe" },
		"prefix with a dot":  func(c *Config) { c.Prefix = "/a/../b" },
		"prefix ending in /": func(c *Config) { c.Prefix = "/a/" },
		"prefix without /":   func(c *Config) { c.Prefix = "a" },
		"prefix too long":    func(c *Config) { c.Prefix = "/" + strings.Repeat("a", MaxPrefix) },
		"no health key":      func(c *Config) { c.HealthKey = "" },
	} {
		c := good()
		change(&c)
		if _, err := New(c); err == nil {
			t.Errorf("New with %s: no error", name)
		}
	}
}
