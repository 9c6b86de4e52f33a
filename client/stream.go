package client

import (
	"bytes"
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/envelope"
)

// NewWriter returns a writer that seals everything written to it into w as
// one streaming ciphertext (docs/ciphertext.md): segments of
// EncryptorConfig.SegmentSize, each with its own nonce, under a key derived
// for this stream from the current data key, so payloads of any size
// stream in constant memory. Close must be called to seal the final
// segment; it does not close w. The writer is not safe for concurrent use.
func (e *Encryptor) NewWriter(ctx context.Context, w io.Writer, ectx map[string]string) (io.WriteCloser, error) {
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
	return &streamWriter{w: sw, key: e.key}, nil
}

type streamWriter struct {
	w   io.WriteCloser
	key string
}

func (s *streamWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	return n, streamErr("Encrypt", s.key, err)
}

func (s *streamWriter) Close() error { return streamErr("Encrypt", s.key, s.w.Close()) }

// NewReader reads a streaming ciphertext's header from r, gets its data
// key (from the cache or with DecryptDataKey) and returns a reader of its
// plaintext.
//
// The reader's contract: each segment is returned only once it
// authenticates, in order; a stream cut short, reordered, altered or
// extended fails with ErrInvalidArgument, and every Read after an error
// returns it again with no data. io.EOF comes only after the final segment
// authenticates. What a stream reader cannot do is take back the segments
// it already returned: before an error, a consumer has received the
// authenticated prefix of the stream (whole segments, never part of one).
// So the consumer must not act on the output — publish it, rename it into
// place, execute it — until Read returns io.EOF, and must discard it on
// any error (keybroker decrypt writes a file under a temporary name and
// renames it only at io.EOF). Decrypt, which holds the whole ciphertext,
// returns no plaintext at all on error.
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
	return &streamReader{r: sr, key: sh.KeyID}, nil
}

type streamReader struct {
	r   io.Reader
	key string
}

func (s *streamReader) Read(p []byte) (int, error) {
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
// input; the underlying reader's or writer's own errors pass through.
func streamErr(op, key string, err error) error {
	switch {
	case err == nil:
		return nil
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
