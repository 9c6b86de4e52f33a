package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// TestStreamWriterAborts ends streams the ways a caller can get wrong — a
// context cancelled mid-stream (a Ctrl-C), an input that fails under
// io.Copy, an explicit Abort — each followed by the Close a `defer
// w.Close()` would make, and wants no final segment: Close returns
// ErrAborted with the cause, and what was written reads as truncated,
// never as complete.
func TestStreamWriterAborts(t *testing.T) {
	c := startCluster(t)
	cl := c.client(t, "us", c.us)
	const seg = envelope.MinSegmentSize
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "shared", SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	ectx := map[string]string{"file": "backup"}
	errDisk := errors.New("input device failed")
	msg, _ := io.ReadAll(seeded(5*seg + 100))

	for _, tc := range []struct {
		name string
		// run writes part of msg to w and ends the stream some way but
		// Close; cancel cancels w's context.
		run       func(w *client.StreamWriter, cancel context.CancelCauseFunc) error
		wantCause error
		wantCode  codes.Code
	}{
		{"context cancelled between writes", func(w *client.StreamWriter, cancel context.CancelCauseFunc) error {
			if _, err := w.Write(msg[:3*seg+10]); err != nil {
				return err
			}
			cancel(nil)
			_, err := w.Write(msg[3*seg+10:])
			return err
		}, context.Canceled, codes.Canceled},
		{"context cancelled with a cause, then only Close", func(w *client.StreamWriter, cancel context.CancelCauseFunc) error {
			if _, err := w.Write(msg); err != nil {
				return err
			}
			cancel(errInterrupt)
			return nil
		}, errInterrupt, codes.Canceled},
		{"context cancelled during io.Copy", func(w *client.StreamWriter, cancel context.CancelCauseFunc) error {
			r := io.MultiReader(bytes.NewReader(msg[:2*seg]), readFunc(func([]byte) (int, error) {
				cancel(nil)
				return 0, nil
			}), bytes.NewReader(msg[2*seg:]))
			_, err := io.Copy(w, r)
			return err
		}, context.Canceled, codes.Canceled},
		{"input fails under io.Copy", func(w *client.StreamWriter, _ context.CancelCauseFunc) error {
			_, err := io.Copy(w, io.MultiReader(bytes.NewReader(msg[:3*seg]), iotest.ErrReader(errDisk)))
			return err
		}, errDisk, codes.Aborted},
		{"Abort", func(w *client.StreamWriter, _ context.CancelCauseFunc) error {
			if _, err := w.Write(msg[:4*seg+1]); err != nil {
				return err
			}
			w.Abort(errDisk)
			return nil
		}, errDisk, codes.Aborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(t.Context())
			defer cancel(nil)
			var out bytes.Buffer
			w, err := enc.NewWriter(ctx, &out, ectx)
			if err != nil {
				t.Fatal(err)
			}
			runErr := tc.run(w, cancel)
			if runErr != nil && (!errors.Is(runErr, tc.wantCause) || !errors.Is(runErr, client.ErrAborted)) {
				t.Errorf("the write failed with %v, want ErrAborted and %v", runErr, tc.wantCause)
			}
			written := out.Len()
			err = w.Close()
			if !errors.Is(err, client.ErrAborted) || !errors.Is(err, tc.wantCause) {
				t.Errorf("Close = %v, want ErrAborted and %v", err, tc.wantCause)
			}
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Code != tc.wantCode {
				t.Errorf("Close = %v (%T), want a *client.Error with code %v", err, err, tc.wantCode)
			}
			if out.Len() != written {
				t.Errorf("Close after the abort wrote %d bytes", out.Len()-written)
			}
			// What was written is a prefix of whole segments that no
			// reader takes for a complete stream.
			pt, err := dec.Decrypt(t.Context(), out.Bytes(), ectx)
			wantCode(t, "Decrypt of the aborted stream", err, client.ErrInvalidArgument, codes.InvalidArgument)
			if !errors.Is(err, client.ErrTruncated) || pt != nil {
				t.Errorf("Decrypt of the aborted stream (%d bytes): %d bytes, %v; want ErrTruncated", out.Len(), len(pt), err)
			}
		})
	}

	// A reader stops at its context's end too.
	var full bytes.Buffer
	w, err := enc.NewWriter(t.Context(), &full, ectx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(t.Context())
	r, err := dec.NewReader(ctx, bytes.NewReader(full.Bytes()), ectx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, seg)); err != nil {
		t.Fatal(err)
	}
	cancel(errInterrupt)
	for range 2 {
		if n, err := r.Read(make([]byte, seg)); n != 0 || !errors.Is(err, errInterrupt) || errCode(err) != codes.Canceled {
			t.Errorf("Read after cancel = %d, %v; want 0 and the cause, code Canceled", n, err)
		}
	}
}

// TestStreamTruncatedOrTampered cuts a stream at every segment boundary and
// inside every segment, and flips a byte in every whole segment: every cut
// is ErrTruncated, every flip ErrInvalidArgument without ErrTruncated.
func TestStreamTruncatedOrTampered(t *testing.T) {
	c := startCluster(t)
	cl := c.client(t, "us", c.us)
	const seg = envelope.MinSegmentSize
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "shared", SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	msg, _ := io.ReadAll(seeded(3*seg + 100))
	var buf bytes.Buffer
	w, err := enc.NewWriter(t.Context(), &buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ct := buf.Bytes()
	whole := seg + envelope.TagSize
	hdr := len(ct) - 3*whole - 100 - envelope.TagSize
	for _, cut := range []int{1, hdr / 2, hdr, hdr + 1, hdr + whole - 1, hdr + whole, hdr + whole + 17, hdr + 2*whole, hdr + 3*whole, hdr + 3*whole + 50, len(ct) - 1} {
		_, err := dec.Decrypt(t.Context(), ct[:cut], nil)
		if !errors.Is(err, client.ErrTruncated) || !errors.Is(err, client.ErrInvalidArgument) {
			t.Errorf("cut at %d of %d (header %d): err = %v, want ErrTruncated", cut, len(ct), hdr, err)
		}
	}
	for i := range 3 {
		bad := bytes.Clone(ct)
		bad[hdr+i*whole+seg/2] ^= 1
		_, err := dec.Decrypt(t.Context(), bad, nil)
		if !errors.Is(err, client.ErrInvalidArgument) || errors.Is(err, client.ErrTruncated) {
			t.Errorf("byte flipped in segment %d: err = %v, want ErrInvalidArgument and not ErrTruncated", i, err)
		}
	}
}

var errInterrupt = errors.New("interrupted by SIGINT")

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

func errCode(err error) codes.Code {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return codes.Unknown
}
