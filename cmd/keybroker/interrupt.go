package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// interruptError is the cause of the root context's end when a signal
// interrupted the process.
type interruptError struct{ sig syscall.Signal }

func (e *interruptError) Error() string { return "interrupted by " + signalName(e.sig) }

// Is makes the interruption a cancellation to whoever checks for one.
func (e *interruptError) Is(target error) bool { return target == context.Canceled }

// code is the exit code of a command the signal interrupted: 128+N, what a
// shell reports for a process the signal killed.
func (e *interruptError) code() int { return 128 + int(e.sig) }

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// interruptContext returns a context that the first SIGINT or SIGTERM
// cancels, with an *interruptError naming the signal as its cause. The
// handler is removed at that moment, so a second signal kills the process
// at once: a command stuck where cancellation cannot reach it (a write to
// a pipe nobody reads) is not kept alive. stop releases the handler.
func interruptContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			// Stop first: the default action is back before anyone
			// starts shutting down.
			signal.Stop(ch)
			sig, _ := s.(syscall.Signal)
			cancel(&interruptError{sig})
		case <-done:
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(ch)
			close(done)
			cancel(nil)
		})
	}
}

// interruptOf returns the signal that ended ctx, or nil.
func interruptOf(ctx context.Context) *interruptError {
	ie, _ := errors.AsType[*interruptError](context.Cause(ctx))
	return ie
}

// interrupted gives err, the error of a command whose context a signal
// ended, that signal's exit code, and says so, unless the command did.
// A command that succeeded despite the signal (its output was complete and
// committed) keeps its nil.
func interrupted(ctx context.Context, err error) error {
	ie := interruptOf(ctx)
	if ie == nil || err == nil {
		return err
	}
	if ee, ok := errors.AsType[*exitError](err); ok && ee.code == ie.code() {
		return err
	}
	if errors.Is(err, ie) {
		// The input's read was cut off: nothing was written, for every
		// command writes its output only once its input is read.
		return &exitError{ie.code(), fmt.Errorf("%s while reading the input: no output written", ie)}
	}
	return &exitError{ie.code(), fmt.Errorf("%s: %w", ie, err)}
}

// interruptible returns a reader of r whose Read returns ctx's cause as
// soon as ctx is done, even while a read of r blocks — a pipe whose writer
// is silent, a terminal. The blocked read is left behind, its data
// dropped: a command that stops reading is about to exit. Each read of r
// runs in a goroutine of its own, into a buffer of the reader's, and asks
// r for no more than the caller asked for.
func interruptible(ctx context.Context, r io.Reader) io.Reader {
	return &ctxReader{ctx: ctx, r: r, buf: make([]byte, 64<<10), res: make(chan readResult, 1)}
}

type ctxReader struct {
	ctx  context.Context
	r    io.Reader
	buf  []byte
	left []byte // read from r, not yet returned
	err  error  // r's error, returned once left is empty
	res  chan readResult
	busy bool // a read of r is running
}

type readResult struct {
	n   int
	err error
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if len(c.left) > 0 {
		n := copy(p, c.left)
		c.left = c.left[n:]
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !c.busy {
		c.busy = true
		// No more than p asks for: the caller's limits on what is read
		// (readInput's limit+1) hold for r too.
		buf := c.buf[:min(len(p), len(c.buf))]
		go func() {
			n, err := c.r.Read(buf)
			c.res <- readResult{n, err}
		}()
	}
	select {
	case r := <-c.res:
		c.busy = false
		c.left, c.err = c.buf[:r.n], r.err
		n := copy(p, c.left)
		c.left = c.left[n:]
		if len(c.left) == 0 && c.err != nil {
			return n, c.err
		}
		return n, nil
	case <-c.ctx.Done():
		return 0, context.Cause(c.ctx)
	}
}
