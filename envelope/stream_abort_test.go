package envelope

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// TestStreamAbort ends streams with Abort at every kind of point — before
// any segment, with a partial segment buffered, right after a whole one —
// and wants no final segment written: the output reads as truncated, never
// as complete, and later Writes and Close fail with ErrAborted and the
// cause without writing a byte.
func TestStreamAbort(t *testing.T) {
	const size = MinSegmentSize
	dk := streamKey(t, 16)
	errCause := errors.New("interrupted")
	for _, n := range []int{0, 1, size, size + 1, 3*size - 1, 3 * size} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewStreamWriter(&buf, dk, nil, size)
			if err != nil {
				t.Fatal(err)
			}
			pt := pattern(uint64(n), n)
			if err := writeChunks(w, pt, 100); err != nil {
				t.Fatal(err)
			}
			w.Abort(errCause)
			written := buf.Len()
			// Only whole segments known not to be the last were sealed;
			// the buffered rest is dropped.
			hdr := 104 + len("payments")
			if sealed := max(0, (n-1)/size); written != hdr+sealed*(size+TagSize) {
				t.Errorf("after Abort: %d bytes written, want the header and %d whole segments (%d)", written, sealed, hdr+sealed*(size+TagSize))
			}
			if _, err := w.Write([]byte("more")); !errors.Is(err, ErrAborted) || !errors.Is(err, errCause) {
				t.Errorf("Write after Abort: err = %v, want ErrAborted and the cause", err)
			}
			if err := w.Close(); !errors.Is(err, ErrAborted) || !errors.Is(err, errCause) {
				t.Errorf("Close after Abort: err = %v, want ErrAborted and the cause", err)
			}
			w.Abort(nil)
			if buf.Len() != written {
				t.Errorf("Write, Close and Abort after Abort wrote %d bytes", buf.Len()-written)
			}
			got, err := openStream(bytes.NewReader(buf.Bytes()), dk, nil)
			if !errors.Is(err, ErrTruncated) || errors.Is(err, ErrDecrypt) {
				t.Errorf("reading the aborted stream: %d bytes, err = %v; want ErrTruncated alone", len(got), err)
			}
		})
	}

	// Abort after Close changes nothing: the stream is complete.
	var buf bytes.Buffer
	w, _ := NewStreamWriter(&buf, dk, nil, size)
	_, _ = w.Write([]byte("whole"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w.Abort(errCause)
	if err := w.Close(); err != nil {
		t.Errorf("Close after Close and Abort = %v, want nil", err)
	}
	if got, err := openStream(bytes.NewReader(buf.Bytes()), dk, nil); err != nil || string(got) != "whole" {
		t.Errorf("closed stream = %q, %v; want \"whole\"", got, err)
	}

	// Abort with no cause.
	w, _ = NewStreamWriter(&bytes.Buffer{}, dk, nil, size)
	w.Abort(nil)
	if err := w.Close(); !errors.Is(err, ErrAborted) {
		t.Errorf("Close after Abort(nil) = %v, want ErrAborted", err)
	}
}
