package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// input is a command's input opened for streaming: the reader, the name
// to use in messages and its size when known (-1 otherwise). Its reads
// stop when the command's context ends, even a read that blocks on a pipe
// or a FIFO whose writer is silent.
type input struct {
	r    io.Reader
	name string
	size int64
	f    *os.File
}

func (a *app) openInput(ctx context.Context, path string) (*input, error) {
	if isStdio(path) {
		return &input{r: interruptible(ctx, a.env.stdin), name: "stdin", size: -1}, nil
	}
	// Opening a FIFO blocks until a writer opens it: do that out of the
	// way of a signal too.
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		f, err := os.Open(path)
		ch <- opened{f, err}
	}()
	var o opened
	select {
	case o = <-ch:
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.f != nil {
				_ = o.f.Close()
			}
		}()
		return nil, context.Cause(ctx)
	}
	if o.err != nil {
		return nil, o.err
	}
	in := &input{r: interruptible(ctx, o.f), name: path, size: -1, f: o.f}
	if fi, err := o.f.Stat(); err == nil && fi.Mode().IsRegular() {
		in.size = fi.Size()
	}
	return in, nil
}

func (in *input) close() {
	if in.f != nil {
		_ = in.f.Close()
	}
}

// output is where a stream's result goes. A regular file is written under
// a temporary name next to it and renamed into place only when the whole
// stream succeeded, so a failed or refused stream leaves nothing behind —
// in particular no prefix of a plaintext whose end did not authenticate.
// Stdout, a FIFO or a device is written as the stream goes.
type output struct {
	w        io.Writer
	f        *os.File
	tmp, dst string
}

func (a *app) createOutput(path string) (*output, error) {
	if isStdio(path) {
		return &output{w: a.env.stdout}, nil
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		return &output{w: f, f: f}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, err
	}
	return &output{w: f, f: f, tmp: f.Name(), dst: path}, nil
}

// commit makes the output final.
func (o *output) commit() error {
	if o.f == nil {
		return nil
	}
	if o.tmp == "" {
		return o.f.Close()
	}
	err := o.f.Sync()
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(o.tmp, o.dst)
	}
	if err != nil {
		_ = os.Remove(o.tmp)
	}
	return err
}

// abort drops a temporary output.
func (o *output) abort() {
	if o.f == nil {
		return
	}
	_ = o.f.Close()
	if o.tmp != "" {
		_ = os.Remove(o.tmp)
	}
}

// sdkError makes an SDK error the CLI's: its status, named by op, and
// note (if any) after the message. A stream cut short exits 9; one that
// also may have the wrong key or context (cut in its first segment) stays
// invalid input.
func sdkError(op string, err error, note string) error {
	if note != "" {
		note = "; " + note
	}
	var ce *client.Error
	if errors.As(err, &ce) {
		if errors.Is(err, client.ErrTruncated) && !errors.Is(err, envelope.ErrDecrypt) {
			return &exitError{exitTruncated, fmt.Errorf("%s: %s%s", op, ce.Message, note)}
		}
		return &rpcError{op: op, st: status.New(ce.Code, ce.Message+note)}
	}
	if note != "" {
		return fmt.Errorf("%w%s", err, note)
	}
	return err
}

// interruptedStream is the error of a stream command that ie interrupted,
// with what became of its output: o, written to out.
func interruptedStream(ie *interruptError, o *output, out, what string) error {
	var msg string
	switch {
	case isStdio(out) && what == "ciphertext":
		msg = "the stream on stdout stops without its final segment: it will not decrypt"
	case isStdio(out):
		msg = "the plaintext on stdout is incomplete: discard it"
	case o != nil && o.tmp == "" && what == "ciphertext":
		msg = "the stream written to " + out + " stops without its final segment: it will not decrypt"
	case o != nil && o.tmp == "":
		msg = "the plaintext written to " + out + " is incomplete: discard it"
	default:
		msg = "no output written (" + out + " was not created)"
	}
	return &exitError{ie.code(), fmt.Errorf("%s: %s", ie, msg)}
}

// streamOutputOK refuses to stream binary data to a terminal or into a
// JSON document.
func (a *app) streamOutputOK(out, what string) error {
	if !isStdio(out) {
		return nil
	}
	switch {
	case a.jsonOutput():
		return usageErrorf("a streamed %s is not put in JSON: give --out FILE", what)
	case a.env.stdoutIsTerminal:
		return usageErrorf("a streamed %s is binary: give --out FILE or pipe stdout", what)
	}
	return nil
}

// encryptStream seals in (whose first bytes, already read, are head) into
// out as a streaming ciphertext made with the SDK's client-side envelope.
func (a *app) encryptStream(ctx context.Context, s *session, key string, ectx map[string]string, head []byte, in *input, out string) error {
	if err := a.streamOutputOK(out, "ciphertext"); err != nil {
		return err
	}
	c, err := s.sdk(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	enc, err := c.NewEncryptor(client.EncryptorConfig{Key: key})
	if err != nil {
		return invalidInputf("%v", err)
	}
	defer enc.Close()
	o, err := a.createOutput(out)
	if err != nil {
		return err
	}
	counted := &countingWriter{w: o.w}
	// The stream's context is the command's (a signal ends it); --timeout
	// bounds only the data-key call inside NewWriter.
	dkctx, timedOut := s.rpcBound(ctx)
	w, err := enc.NewWriter(dkctx, counted, ectx)
	if timedOut() {
		err = s.timeoutError("encrypt")
	}
	if err != nil {
		o.abort()
		if ie := interruptOf(ctx); ie != nil {
			return interruptedStream(ie, nil, out, "ciphertext")
		}
		return sdkError("encrypt", err, "")
	}
	p := a.startProgress("encrypting", in.size)
	// in.r stops at the signal even when blocked; the writer then aborts:
	// no final segment is ever written after a signal or a failed read.
	_, err = io.Copy(w, io.TeeReader(io.MultiReader(bytes.NewReader(head), in.r), p))
	if err == nil {
		err = w.Close()
	}
	if err == nil && ctx.Err() != nil && !isStdio(out) {
		// The signal came after the final segment: the ciphertext is
		// whole, but the caller asked to stop before it was committed,
		// and the end of input may be the signal's doing (a producer it
		// killed): the file is not committed. (On stdout the whole stream
		// has gone out already.)
		err = context.Cause(ctx)
	}
	p.finish(err == nil)
	if err != nil {
		w.Abort(err)
		o.abort()
		if ie := interruptOf(ctx); ie != nil {
			return interruptedStream(ie, o, out, "ciphertext")
		}
		return sdkError("encrypt", fmt.Errorf("%s: %w", in.name, err), "")
	}
	if err := o.commit(); err != nil {
		return err
	}
	return a.streamSummary(out, fmt.Sprintf("encrypted %d bytes under key %s as a stream", p.n(), key), streamJSON{KeyID: key, Stream: true, BytesIn: p.n(), BytesOut: counted.n})
}

// rpcBound returns a context for the one RPC a stream makes, from the
// stream's ctx: it also ends when --timeout runs out, until timedOut is
// called, which says whether it did. (A deadline cannot be lifted from a
// context the stream goes on with.)
func (s *session) rpcBound(ctx context.Context) (_ context.Context, timedOut func() bool) {
	if s.timeout == 0 {
		return ctx, func() bool { return false }
	}
	c, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(s.timeout, func() { cancel(context.DeadlineExceeded) })
	return c, func() bool { return !t.Stop() }
}

// timeoutError is the error of an RPC op that --timeout cut short.
func (s *session) timeoutError(op string) error {
	return &rpcError{op: op, st: status.New(codes.DeadlineExceeded, "the broker did not answer in time"), hint: fmt.Sprintf("--timeout %s ran out", s.timeout)}
}

// decryptStream opens the streaming ciphertext in (its first byte, already
// read, is head) into out.
func (a *app) decryptStream(ctx context.Context, s *session, key string, ectx map[string]string, head []byte, in *input, out string) error {
	if err := a.streamOutputOK(out, "plaintext"); err != nil {
		return err
	}
	c, err := s.sdk(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	dec := c.NewDecryptor(client.DecryptorConfig{})
	defer dec.Close()
	p := a.startProgress("decrypting", in.size)
	src := io.TeeReader(io.MultiReader(bytes.NewReader(head), in.r), p)
	br := bufio.NewReader(src)
	named, _ := peekStreamKey(br)
	if key != "" && named != key {
		p.finish(false)
		return invalidInputf("the ciphertext belongs to key %q, not %q", named, key)
	}
	dkctx, timedOut := s.rpcBound(ctx)
	r, err := dec.NewReader(dkctx, br, ectx)
	if timedOut() {
		err = s.timeoutError("decrypt")
	}
	if err != nil {
		p.finish(false)
		if ie := interruptOf(ctx); ie != nil {
			return interruptedStream(ie, nil, out, "plaintext")
		}
		return sdkError("decrypt", err, "")
	}
	o, err := a.createOutput(out)
	if err != nil {
		p.finish(false)
		return err
	}
	counted := &countingWriter{w: o.w}
	_, err = io.Copy(counted, r)
	if err == nil && ctx.Err() != nil && !isStdio(out) {
		err = context.Cause(ctx) // as in encryptStream: not committed
	}
	p.finish(err == nil)
	if err != nil {
		o.abort()
		if ie := interruptOf(ctx); ie != nil {
			return interruptedStream(ie, o, out, "plaintext")
		}
		if !isStdio(out) {
			return sdkError("decrypt", err, "nothing was written to "+out)
		}
		return sdkError("decrypt", err, "")
	}
	if err := o.commit(); err != nil {
		return err
	}
	return a.streamSummary(out, fmt.Sprintf("decrypted a stream of key %s", named), streamJSON{KeyID: named, Stream: true, BytesIn: p.n(), BytesOut: counted.n})
}

// peekStreamKey reads the key id from a stream header without consuming it.
func peekStreamKey(br *bufio.Reader) (string, error) {
	b, err := br.Peek(2)
	if err != nil || len(b) < 2 {
		return "", errors.New("short")
	}
	b, err = br.Peek(2 + int(b[1]))
	if err != nil {
		return "", err
	}
	return string(b[2:]), nil
}

type streamJSON struct {
	KeyID    string `json:"key_id,omitempty"`
	Stream   bool   `json:"stream"`
	BytesIn  int64  `json:"bytes_in"`
	BytesOut int64  `json:"bytes_out"`
}

// streamSummary reports a finished stream written to a file (a stream to
// stdout says nothing more there).
func (a *app) streamSummary(out, summary string, j streamJSON) error {
	if isStdio(out) {
		return nil
	}
	if a.jsonOutput() {
		return a.printJSON(j)
	}
	_, err := fmt.Fprintf(a.env.stdout, "%s; wrote %d bytes to %s\n", summary, j.BytesOut, out)
	return err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// progress draws a progress line on stderr while a stream runs, when
// stderr is a terminal; otherwise it only counts.
type progress struct {
	what  string
	total int64
	start time.Time
	w     io.Writer // nil: count only

	mu    sync.Mutex
	count int64
	stop  chan struct{}
	done  chan struct{}
}

func (a *app) startProgress(what string, total int64) *progress {
	p := &progress{what: what, total: total, start: time.Now()}
	if !a.env.stderrIsTerminal {
		return p
	}
	p.w, p.stop, p.done = a.env.stderr, make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				fmt.Fprint(p.w, "\r"+progressLine(p.what, p.n(), p.total, time.Since(p.start))+"\x1b[K")
			}
		}
	}()
	return p
}

// Write counts bytes read from the input.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	p.count += int64(len(b))
	p.mu.Unlock()
	return len(b), nil
}

func (p *progress) n() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// finish stops drawing, leaving the final line when the stream succeeded.
func (p *progress) finish(ok bool) {
	if p.w == nil {
		return
	}
	close(p.stop)
	<-p.done
	if ok {
		fmt.Fprintln(p.w, "\r"+progressLine(p.what, p.n(), p.total, time.Since(p.start))+"\x1b[K")
	} else {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// progressLine renders one progress line: bytes done (of the total, when
// known, with a bar) and the rate.
func progressLine(what string, n, total int64, elapsed time.Duration) string {
	rate := ""
	if s := elapsed.Seconds(); s > 0 {
		rate = "  " + byteText(int64(float64(n)/s)) + "/s"
	}
	if total <= 0 {
		return fmt.Sprintf("%s %s%s", what, byteText(n), rate)
	}
	frac := min(float64(n)/float64(total), 1)
	const width = 24
	filled := int(frac * width)
	return fmt.Sprintf("%s [%s%s] %3.0f%%  %s / %s%s", what, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		frac*100, byteText(n), byteText(total), rate)
}

// byteText spells a byte count with a binary unit.
func byteText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
