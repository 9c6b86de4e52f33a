package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
)

// TestInterruptible checks that a read blocked on a silent pipe returns
// the interruption as soon as the context ends, and keeps returning it;
// data read before is delivered whole.
func TestInterruptible(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancelCause(t.Context())
	r := interruptible(ctx, pr)
	go func() { _, _ = pw.Write([]byte("before")) }()
	buf := make([]byte, 3)
	var got []byte
	for len(got) < len("before") {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "before" {
		t.Fatalf("read %q, want %q", got, "before")
	}
	ie := &interruptError{syscall.SIGINT}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(buf) // blocks: nobody writes
		done <- err
	}()
	cancel(ie)
	if err := <-done; err != ie {
		t.Errorf("blocked Read after the signal = %v, want %v", err, ie)
	}
	if _, err := r.Read(buf); err != ie {
		t.Errorf("Read after that = %v, want %v again", err, ie)
	}
	if !errors.Is(ie, context.Canceled) {
		t.Error("an interruption is not a cancellation")
	}
}

// TestInterruptedExit maps errors of interrupted commands to 128+N.
func TestInterruptedExit(t *testing.T) {
	sigint, sigterm := &interruptError{syscall.SIGINT}, &interruptError{syscall.SIGTERM}
	cancelled := func(cause error) context.Context {
		ctx, cancel := context.WithCancelCause(t.Context())
		cancel(cause)
		return ctx
	}
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		err      error
		wantCode int
		wantMsg  string
	}{
		{"not interrupted", t.Context(), errors.New("boom"), exitFailure, "boom"},
		{"cancelled without a signal", cancelled(nil), errors.New("boom"), exitFailure, "boom"},
		{"success despite the signal", cancelled(sigint), nil, exitOK, ""},
		{"SIGINT while reading", cancelled(sigint), fmt.Errorf("read stdin: %w", sigint), 130, "interrupted by SIGINT while reading the input: no output written"},
		{"SIGTERM, an RPC cancelled", cancelled(sigterm), &exitError{exitUnavailable, errors.New("encrypt: canceled")}, 143, "interrupted by SIGTERM: encrypt: canceled"},
		{"the command said it", cancelled(sigint), &exitError{130, errors.New("interrupted by SIGINT: no output written (x was not created)")}, 130, "interrupted by SIGINT: no output written (x was not created)"},
	} {
		err := interrupted(tc.ctx, tc.err)
		code := exitOK
		if err != nil {
			code = exitCode(err, true)
		}
		if code != tc.wantCode || (err != nil && !strings.Contains(err.Error(), tc.wantMsg)) {
			t.Errorf("%s: exit %d, %v; want %d, %q", tc.name, code, err, tc.wantCode, tc.wantMsg)
		}
	}
}
