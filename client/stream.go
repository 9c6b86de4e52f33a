package client

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/envelope"
)

// Stream errors, beside the sentinels of errors.go; test with errors.Is.
// Both come with ErrInvalidArgument (a truncated stream) or with the
// code of what ended the stream (an aborted one).
var (
	// ErrTruncated: a streaming ciphertext ends before its final segment,
	// wherever it was cut — inside the header, at a segment boundary or
	// inside a segment; a stream whose writer was aborted reads so. A
	// complete segment that was altered is ErrInvalidArgument without
	// ErrTruncated. The envelope package's # Truncation says how the two
	// are told apart, and the one case (a cut inside segment 0) where the
	// wrong key or context could be the cause too.
	ErrTruncated = envelope.ErrTruncated
	// ErrAborted: a StreamWriter was ended without its final segment —
	// by Abort, a failed read in ReadFrom, or its context ending — and
	// what it wrote reads as truncated.
	ErrAborted = envelope.ErrAborted
)

// NewWriter returns a writer that seals everything written to it into w as
// one streaming ciphertext (docs/ciphertext.md): segments of
// EncryptorConfig.SegmentSize, each with its own nonce, under a key derived
// for this stream from the current data key, so payloads of any size
// stream in constant memory.
//
// ctx governs the whole stream, not only the data-key call: once it is
// done, the next Write fails and Close writes no final segment, so a
// cancelled stream (a Ctrl-C, a deadline) can never be mistaken for a
// complete one. Close seals the final segment: call it when the whole input
// has been written. Abort ends the stream without one; a failed Write, a
// failed read in ReadFrom (which io.Copy uses) and a done ctx abort it for
// you, after which Close returns the reason (ErrAborted, or the write's
// error) instead of sealing. Neither closes w. The writer is not safe for concurrent use.
func (e *Encryptor) NewWriter(ctx context.Context, w io.Writer, ectx map[string]string) (*StreamWriter, error) {
	canon, err := envelope.CanonicalContext(ectx)
	if err != nil {
		return nil, invalid("Encrypt", e.key, err)
	}
	// A stream uses the data key once, to derive its own key: it counts
	// as one message of no bytes against the reuse policy.
	dk, err := e.dataKey(ctx, 0, ectx, string(canon))
	if err != nil {
		return nil, err
	}
	sw, err := envelope.NewStreamWriter(w, dk, ectx, e.segment)
	if err != nil {
		return nil, invalid("Encrypt", e.key, err)
	}
	e.streams.Add(1)
	return &StreamWriter{ctx: ctx, w: sw, key: e.key, size: cmp.Or(e.segment, envelope.DefaultSegmentSize)}, nil
}

// StreamWriter seals a stream; see [Encryptor.NewWriter].
type StreamWriter struct {
	// ctx is the stream's: a writer outlives the call that made it, and
	// every Write and Close must see the caller's cancellation.
	ctx  context.Context
	w    *envelope.StreamWriter
	key  string
	size int
}

// live aborts the stream if its context is done, and then returns why.
func (s *StreamWriter) live() error {
	err := s.ctx.Err()
	if err == nil {
		return nil
	}
	// The cause says who ended the context (a signal, say); the context's
	// own error keeps it Canceled or DeadlineExceeded.
	if cause := context.Cause(s.ctx); !errors.Is(cause, err) {
		err = fmt.Errorf("%w (%w)", cause, err)
	}
	s.w.Abort(err)
	return streamErr("Encrypt", s.key, s.w.Close())
}

// Write seals p as the stream goes. It fails, and the stream is aborted,
// once the context is done or the underlying writer fails.
func (s *StreamWriter) Write(p []byte) (int, error) {
	_ = s.live() // the Write below returns the same error
	n, err := s.w.Write(p)
	if err != nil {
		s.w.Abort(err)
	}
	return n, streamErr("Encrypt", s.key, err)
}

// ReadFrom writes all of r into the stream (io.Copy calls it). A read error
// aborts the stream, so that a Close after a failed copy cannot seal a
// stream whose input ended early; the context is checked between reads (a
// Read that blocks is not interrupted). io.EOF ends the input normally;
// Close must still be called.
func (s *StreamWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, s.size)
	var total int64
	for {
		if err := s.live(); err != nil {
			clear(buf)
			return total, err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			m, err := s.Write(buf[:n])
			total += int64(m)
			if err != nil {
				clear(buf)
				return total, err
			}
		}
		switch {
		case rerr == io.EOF:
			clear(buf)
			return total, nil
		case rerr != nil:
			clear(buf)
			s.w.Abort(rerr)
			return total, streamErr("Encrypt", s.key, s.w.Close())
		case n == 0:
			// A reader may return 0, nil now and then; the context
			// check above keeps a reader that always does from
			// spinning past a cancellation.
		}
	}
}

// Close seals the final segment, if the stream was not aborted and its
// context is not done; otherwise it writes nothing and returns why, an
// error matching ErrAborted. It does not close the underlying writer.
// Calling it again returns the first call's result.
func (s *StreamWriter) Close() error {
	_ = s.live() // Close below returns the same error
	return streamErr("Encrypt", s.key, s.w.Close())
}

// Abort ends the stream without its final segment and zeroes the plaintext
// it buffered; what was written reads as truncated. Use it when the input
// cannot be read to its end. Close then returns ErrAborted with cause (nil
// for none). After Close, Abort does nothing.
func (s *StreamWriter) Abort(cause error) { s.w.Abort(cause) }

// NewReader reads a streaming ciphertext's header from r, gets its data
// key (from the cache or with DecryptDataKey) and returns a reader of its
// plaintext. ctx governs the whole stream: once it is done, Read fails.
//
// The reader's contract: each segment is returned only once it
// authenticates, in order; a stream cut short, reordered, altered or
// extended fails with ErrInvalidArgument (and ErrTruncated when it was cut
// short), and every Read after an error returns it again with no data.
// io.EOF comes only after the final segment authenticates. What a stream
// reader cannot do is take back the segments it already returned: before
// an error, a consumer has received the authenticated prefix of the stream
// (whole segments, never part of one). So the consumer must not act on the
// output — publish it, rename it into place, execute it — until Read
// returns io.EOF, and must discard it on any error (keybroker decrypt
// writes a file under a temporary name and renames it only at io.EOF).
// Decrypt, which holds the whole ciphertext, returns no plaintext at all
// on error.
func (d *Decryptor) NewReader(ctx context.Context, r io.Reader, ectx map[string]string) (io.Reader, error) {
	sh, err := envelope.ReadStreamHeader(r)
	if err != nil {
		return nil, streamErr("Decrypt", "", err)
	}
	dk, err := d.dataKey(ctx, sh.DataKeyHeader(), ectx)
	if err != nil {
		return nil, err
	}
	sr, err := envelope.NewStreamReader(r, sh, dk, ectx)
	if err != nil {
		return nil, streamErr("Decrypt", sh.KeyID, err)
	}
	d.streams.Add(1)
	return &streamReader{ctx: ctx, r: sr, key: sh.KeyID}, nil
}

type streamReader struct {
	ctx context.Context
	r   io.Reader
	key string
	err error // sticky: the context's end
}

func (s *streamReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); s.err == nil && err != nil {
		if cause := context.Cause(s.ctx); !errors.Is(cause, err) {
			err = fmt.Errorf("%w (%w)", cause, err)
		}
		s.err = streamErr("Decrypt", s.key, err)
	}
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	if err == io.EOF {
		return n, err
	}
	return n, streamErr("Decrypt", s.key, err)
}

// openStream opens a whole streaming ciphertext held in memory. On any
// error it returns no plaintext: the segments that authenticated before
// the failure are zeroed, not handed out. The plaintext is read into one
// buffer the size of the ciphertext (a plaintext is never longer), so no
// copy of it is left behind by a growing buffer and the one zeroed on
// error is the only one.
func (d *Decryptor) openStream(ctx context.Context, ciphertext []byte, ectx map[string]string) ([]byte, error) {
	r, err := d.NewReader(ctx, bytes.NewReader(ciphertext), ectx)
	if err != nil {
		return nil, err
	}
	pt := make([]byte, len(ciphertext))
	n := 0
	for {
		if n == len(pt) {
			// A plaintext is shorter than its ciphertext (which has a
			// header and a tag per segment), so this cannot happen.
			clear(pt)
			return nil, errors.New("client: Decrypt: the stream yields more plaintext than its ciphertext holds")
		}
		m, err := r.Read(pt[n:])
		n += m
		if err == io.EOF {
			return pt[:n], nil
		}
		if err != nil {
			clear(pt)
			return nil, err
		}
	}
}

// streamErr maps a stream's errors: the format's refusals are invalid
// input; an aborted stream, or one whose context ended, takes the code of
// the cause (Canceled, DeadlineExceeded, or Aborted for any other); the
// underlying reader's or writer's own errors pass through.
func streamErr(op, key string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, envelope.ErrAborted), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		var e *Error
		if errors.As(err, &e) {
			return e
		}
		code := codes.Aborted
		if errors.Is(err, context.DeadlineExceeded) {
			code = codes.DeadlineExceeded
		} else if errors.Is(err, context.Canceled) {
			code = codes.Canceled
		}
		return local(op, key, code, err)
	case errors.Is(err, envelope.ErrTruncated), errors.Is(err, envelope.ErrMalformed), errors.Is(err, envelope.ErrDecrypt),
		errors.Is(err, envelope.ErrContext), errors.Is(err, envelope.ErrTooLarge):
		return local(op, key, codes.InvalidArgument, err)
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return err
}
