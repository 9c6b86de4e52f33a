package envelope

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/keybroker/keybroker/secret"
)

// streamKey is a data key with a fixed DEK of b, under key "payments"
// version 3 with an arbitrary 60-byte wrapped form.
func streamKey(t testing.TB, b byte) *DataKey {
	t.Helper()
	dk, err := NewDataKey("payments", 3, secret.New(bytes.Repeat([]byte{b}, DEKSize)), bytes.Repeat([]byte{0xee}, WrappedDEKLen))
	if err != nil {
		t.Fatal(err)
	}
	return dk
}

// pattern returns n deterministic pseudo-random bytes, different for every
// seed, so that no two segments of a test plaintext are equal.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}).Read(b)
	return b
}

// writeChunks writes p to w in chunks of chunk bytes (all at once for 0).
func writeChunks(w io.Writer, p []byte, chunk int) error {
	if chunk == 0 {
		chunk = max(len(p), 1)
	}
	for len(p) > 0 {
		n := min(chunk, len(p))
		if k, err := w.Write(p[:n]); err != nil || k != n {
			return fmt.Errorf("Write(%d bytes) = %d, %v", n, k, err)
		}
		p = p[n:]
	}
	return nil
}

func sealStream(t testing.TB, dk *DataKey, ectx map[string]string, size int, pt []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewStreamWriter(&buf, dk, ectx, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeChunks(w, pt, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// openStream reads a whole stream and returns what the reader released
// before any error.
func openStream(r io.Reader, dk *DataKey, ectx map[string]string) ([]byte, error) {
	h, err := ReadStreamHeader(r)
	if err != nil {
		return nil, err
	}
	sr, err := NewStreamReader(r, h, dk, ectx)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(sr)
}

// splitStream cuts a stream ciphertext into its header and segments.
func splitStream(t testing.TB, ct []byte) (header []byte, segs [][]byte) {
	t.Helper()
	h, err := ReadStreamHeader(bytes.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	body := ct[len(h.raw):]
	for len(body) > 0 {
		n := min(len(body), h.SegmentSize+TagSize)
		segs = append(segs, body[:n:n])
		body = body[n:]
	}
	return ct[:len(h.raw):len(h.raw)], segs
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestStreamRoundTrip(t *testing.T) {
	dk := streamKey(t, 1)
	readers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte", iotest.OneByteReader},
		{"half", iotest.HalfReader},
		{"data with EOF", iotest.DataErrReader},
	}
	i := 0
	for _, size := range []int{MinSegmentSize, DefaultSegmentSize} {
		for _, ectx := range []map[string]string{nil, {"tenant": "42", "purpose": "invoice"}} {
			for _, chunk := range []int{0, 1, 7, 3*size + 1} {
				for _, n := range []int{0, 1, size - 1, size, size + 1, 2 * size, 3*size + 7} {
					rd := readers[i%len(readers)]
					i++
					name := fmt.Sprintf("S=%d/context=%t/chunk=%d/n=%d/%s", size, ectx != nil, chunk, n, rd.name)
					t.Run(name, func(t *testing.T) {
						pt := pattern(uint64(n), n)
						var buf bytes.Buffer
						w, err := NewStreamWriter(&buf, dk, ectx, size)
						if err != nil {
							t.Fatal(err)
						}
						if err := writeChunks(w, pt, chunk); err != nil {
							t.Fatal(err)
						}
						if err := w.Close(); err != nil {
							t.Fatalf("Close: %v", err)
						}
						ct := buf.Bytes()
						segs := max(1, (n+size-1)/size)
						if want := 104 + len("payments") + n + segs*TagSize; len(ct) != want {
							t.Errorf("ciphertext is %d bytes, want %d (%d segments)", len(ct), want, segs)
						}
						if !IsStream(ct) {
							t.Errorf("IsStream(ciphertext) = false")
						}
						r := rd.wrap(bytes.NewReader(ct))
						h, err := ReadStreamHeader(r)
						if err != nil {
							t.Fatalf("ReadStreamHeader: %v", err)
						}
						if h.KeyID != "payments" || h.Version != 3 || h.SegmentSize != size || len(h.Salt) != StreamSaltSize || !bytes.Equal(h.WrappedDEK, dk.Wrapped) {
							t.Errorf("header = %s v%d S=%d salt %d bytes, want payments v3 S=%d salt 32 bytes and the wrapped key", h.KeyID, h.Version, h.SegmentSize, len(h.Salt), size)
						}
						sr, err := NewStreamReader(r, h, dk, ectx)
						if err != nil {
							t.Fatal(err)
						}
						// TestReader reads in assorted sizes and checks
						// that the end is io.EOF and stays so.
						if err := iotest.TestReader(sr, pt); err != nil {
							t.Errorf("stream reader: %v", err)
						}
					})
				}
			}
		}
	}
}

// TestStreamLarge streams 100 MiB through a pipe, holding neither side in
// memory, and compares hashes.
func TestStreamLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MiB stream")
	}
	const n = 100 << 20
	dk := streamKey(t, 2)
	ectx := map[string]string{"tenant": "42"}
	pr, pw := io.Pipe()
	hin := sha256.New()
	done := make(chan error, 1)
	go func() {
		w, err := NewStreamWriter(pw, dk, ectx, 0)
		if err == nil {
			_, err = io.Copy(w, io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{42}), n), hin))
			if cerr := w.Close(); err == nil {
				err = cerr
			}
		}
		pw.CloseWithError(err)
		done <- err
	}()
	hout := sha256.New()
	h, err := ReadStreamHeader(pr)
	if err != nil {
		t.Fatal(err)
	}
	sr, err := NewStreamReader(pr, h, dk, ectx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(hout, sr)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if got != n {
		t.Errorf("read %d bytes, want %d", got, n)
	}
	if a, b := hin.Sum(nil), hout.Sum(nil); !bytes.Equal(a, b) {
		t.Errorf("SHA-256 of the output = %x, want %x", b, a)
	}
}

// TestStreamTruncated cuts streams at every byte offset — inside the
// header, at every segment boundary, inside every segment — and wants
// ErrTruncated each time, with only whole authenticated segments released.
func TestStreamTruncated(t *testing.T) {
	const size = MinSegmentSize
	dk := streamKey(t, 3)
	for _, n := range []int{0, 100, 2 * size, 3*size + 100} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			pt := pattern(uint64(n), n)
			ct := sealStream(t, dk, nil, size, pt)
			hdr := len(ct) - n - max(1, (n+size-1)/size)*TagSize
			for cut := 1; cut < len(ct); cut++ {
				got, err := openStream(bytes.NewReader(ct[:cut]), dk, nil)
				off := cut - hdr
				var released int
				switch {
				case off < 0:
				case off%(size+TagSize) == 0:
					// Ends after a whole segment. The segment before the
					// cut authenticated as non-final but is held back; the
					// ones before it were released.
					released = max(0, off/(size+TagSize)-1) * size
				default:
					released = off / (size + TagSize) * size
				}
				if !errors.Is(err, ErrTruncated) {
					t.Errorf("cut at %d (header %d): err = %v, want ErrTruncated", cut, hdr, err)
				}
				// Only a cut inside segment 0, where the key or context may
				// be the cause too, also matches ErrDecrypt; a cut is never
				// malformed.
				if inFirst := off > 0 && off < size+TagSize; errors.Is(err, ErrDecrypt) != inFirst || errors.Is(err, ErrMalformed) {
					t.Errorf("cut at %d (header %d): err = %v; ErrDecrypt %t, want %t; ErrMalformed %t, want false", cut, hdr, err, errors.Is(err, ErrDecrypt), inFirst, errors.Is(err, ErrMalformed))
				}
				if err != nil && !strings.Contains(err.Error(), "truncated") {
					t.Errorf("cut at %d: %q does not say truncated", cut, err)
				}
				if !bytes.Equal(got, pt[:released]) {
					t.Errorf("cut at %d: released %d bytes, want the first %d of the plaintext", cut, len(got), released)
				}
			}
			if got, err := openStream(bytes.NewReader(ct), dk, nil); err != nil || !bytes.Equal(got, pt) {
				t.Errorf("uncut stream: %d bytes, %v; want the %d-byte plaintext", len(got), err, n)
			}
		})
	}
}

func TestStreamTampered(t *testing.T) {
	const size = MinSegmentSize
	dk := streamKey(t, 4)
	for _, n := range []int{3*size + 100, 4 * size} {
		pt := pattern(1, n)
		ct := sealStream(t, dk, nil, size, pt)
		hdr, s := splitStream(t, ct)
		// Another stream under the same data key, of the same plaintext.
		ohdr, o := splitStream(t, sealStream(t, dk, nil, size, pt))
		if len(s) != 4 || len(o) != 4 {
			t.Fatalf("%d and %d segments, want 4", len(s), len(o))
		}
		// Whatever alters a short final segment alone reads as a damaged
		// end: truncated (see the package doc's # Truncation).
		lastAltered := ErrDecrypt
		if n%size != 0 {
			lastAltered = ErrTruncated
		}
		for _, tc := range []struct {
			name string
			ct   []byte
			want error
		}{
			{"swap segments 0 and 1", join(hdr, s[1], s[0], s[2], s[3]), ErrDecrypt},
			{"swap segments 1 and 2", join(hdr, s[0], s[2], s[1], s[3]), ErrDecrypt},
			{"last segment first", join(hdr, s[3], s[0], s[1], s[2]), ErrDecrypt},
			{"duplicate segment 1", join(hdr, s[0], s[1], s[1], s[2], s[3]), ErrDecrypt},
			{"drop segment 1", join(hdr, s[0], s[2], s[3]), ErrDecrypt},
			{"drop the last segment", join(hdr, s[0], s[1], s[2]), ErrTruncated},
			{"append 1 byte", join(ct, []byte{0}), lastAltered},
			{"append 16 bytes", join(ct, make([]byte, 16)), lastAltered},
			{"append a segment of garbage", join(ct, make([]byte, size+TagSize)), ErrDecrypt},
			{"append a copy of the last segment", join(ct, s[3]), lastAltered},
			{"append a copy of segment 0", join(ct, s[0]), ErrDecrypt},
			{"segment 1 of another stream", join(hdr, s[0], o[1], s[2], s[3]), ErrDecrypt},
			{"last segment of another stream", join(hdr, s[0], s[1], s[2], o[3]), lastAltered},
			{"header of another stream", join(ohdr, s[0], s[1], s[2], s[3]), ErrDecrypt},
			{"segments of another stream", join(hdr, o[0], o[1], o[2], o[3]), ErrDecrypt},
		} {
			got, err := openStream(bytes.NewReader(tc.ct), dk, nil)
			if !errors.Is(err, tc.want) {
				t.Errorf("n=%d, %s: err = %v (after %d bytes), want %v", n, tc.name, err, len(got), tc.want)
			}
		}
	}
}

// TestStreamFlipAnyByte flips bits everywhere in a stream: in the header or
// a whole segment it is tampering (ErrDecrypt or ErrMalformed), never
// truncation; in a short final segment it is refused as a damaged end
// (ErrTruncated: see the package doc's # Truncation).
func TestStreamFlipAnyByte(t *testing.T) {
	const size = MinSegmentSize
	dk := streamKey(t, 5)
	ectx := map[string]string{"a": "b"}
	for _, n := range []int{0, 2 * size, 2*size + 100} {
		ct := sealStream(t, dk, ectx, size, pattern(2, n))
		hdr := len(ct) - n - max(1, (n+size-1)/size)*TagSize
		// The short final segment starts here (len(ct) when there is none).
		short := len(ct)
		if n%size != 0 || n == 0 {
			short = hdr + n/size*(size+TagSize)
		}
		for i := range ct {
			for _, bit := range []byte{0x01, 0x80} {
				bad := bytes.Clone(ct)
				bad[i] ^= bit
				_, err := openStream(bytes.NewReader(bad), dk, ectx)
				switch {
				case i >= short && i >= hdr+size+TagSize:
					if !errors.Is(err, ErrTruncated) || errors.Is(err, ErrDecrypt) {
						t.Errorf("n=%d, byte %d ^ %#02x (short final segment): err = %v, want ErrTruncated", n, i, bit, err)
					}
				case i >= short:
					// The only segment, and short: a cut, or the wrong
					// key or context, or tampering.
					if !errors.Is(err, ErrDecrypt) {
						t.Errorf("n=%d, byte %d ^ %#02x (short segment 0): err = %v, want ErrDecrypt", n, i, bit, err)
					}
				case i >= hdr:
					if !errors.Is(err, ErrDecrypt) || errors.Is(err, ErrTruncated) {
						t.Errorf("n=%d, byte %d ^ %#02x (a whole segment): err = %v, want ErrDecrypt and not ErrTruncated", n, i, bit, err)
					}
				default:
					// The header is in every segment's AAD, so segment 0
					// never authenticates; a flipped length can make the
					// header or segment 0 look cut short.
					if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrTruncated) {
						t.Errorf("n=%d, byte %d ^ %#02x (header): err = %v, want ErrMalformed, ErrDecrypt or ErrTruncated", n, i, bit, err)
					}
				}
			}
		}
	}
}

func TestStreamWrongKeyOrContext(t *testing.T) {
	dk := streamKey(t, 6)
	ectx := map[string]string{"tenant": "42", "purpose": "invoice"}
	ct := sealStream(t, dk, ectx, MinSegmentSize, pattern(3, 3000))
	otherVersion, _ := NewDataKey("payments", 4, secret.New(bytes.Repeat([]byte{6}, DEKSize)), dk.Wrapped)
	otherID, _ := NewDataKey("refunds", 3, secret.New(bytes.Repeat([]byte{6}, DEKSize)), dk.Wrapped)
	otherWrapped, _ := NewDataKey("payments", 3, secret.New(bytes.Repeat([]byte{6}, DEKSize)), bytes.Repeat([]byte{0xef}, WrappedDEKLen))
	for _, tc := range []struct {
		name string
		dk   *DataKey
		ectx map[string]string
		want error
	}{
		{"other DEK", streamKey(t, 7), ectx, ErrDecrypt},
		{"other version", otherVersion, ectx, ErrDecrypt},
		{"other key id", otherID, ectx, ErrDecrypt},
		{"other wrapped key", otherWrapped, ectx, ErrDecrypt},
		{"no context", dk, nil, ErrDecrypt},
		{"other value", dk, map[string]string{"tenant": "43", "purpose": "invoice"}, ErrDecrypt},
		{"extra pair", dk, map[string]string{"tenant": "42", "purpose": "invoice", "x": "y"}, ErrDecrypt},
		{"missing pair", dk, map[string]string{"tenant": "42"}, ErrDecrypt},
		{"invalid context", dk, map[string]string{"": "v"}, ErrContext},
	} {
		got, err := openStream(bytes.NewReader(ct), tc.dk, tc.ectx)
		if !errors.Is(err, tc.want) || len(got) != 0 {
			t.Errorf("%s: %d bytes, err = %v; want nothing and %v", tc.name, len(got), err, tc.want)
		}
	}
}

func TestStreamSaltsDiffer(t *testing.T) {
	dk := streamKey(t, 8)
	pt := pattern(4, 5000)
	a := sealStream(t, dk, nil, MinSegmentSize, pt)
	b := sealStream(t, dk, nil, MinSegmentSize, pt)
	ha, _ := ReadStreamHeader(bytes.NewReader(a))
	hb, _ := ReadStreamHeader(bytes.NewReader(b))
	if bytes.Equal(ha.Salt, hb.Salt) {
		t.Errorf("two streams under one data key share the salt %x", ha.Salt)
	}
	if len(a) != len(b) {
		t.Fatalf("lengths %d and %d differ", len(a), len(b))
	}
	// No segment of one equals the other's, nor any 16-byte block of body.
	ba, bb := a[len(ha.raw):], b[len(hb.raw):]
	for i := 0; i+16 <= len(ba); i += 16 {
		if bytes.Equal(ba[i:i+16], bb[i:i+16]) {
			t.Errorf("bodies agree at offset %d: %x", i, ba[i:i+16])
		}
	}
}

// countingReader counts the bytes it has returned.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReadStreamHeader(t *testing.T) {
	dk := streamKey(t, 9)
	ct := sealStream(t, dk, nil, MinSegmentSize, []byte("hello"))
	cr := &countingReader{r: bytes.NewReader(ct)}
	h, err := ReadStreamHeader(cr)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + 1 + len("payments") + 4 + 2 + WrappedDEKLen + 4 + StreamSaltSize; cr.n != want || len(h.raw) != want {
		t.Errorf("ReadStreamHeader consumed %d bytes (header %d), want exactly %d", cr.n, len(h.raw), want)
	}
	// The body is still there for the stream reader.
	sr, err := NewStreamReader(cr.r, h, dk, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(sr); err != nil || string(got) != "hello" {
		t.Errorf("after the header: %q, %v; want \"hello\"", got, err)
	}

	salt := bytes.Repeat([]byte{0xa5}, StreamSaltSize)
	wrapped := bytes.Repeat([]byte{1}, WrappedDEKLen)
	hdr := func(id string, v uint32, w []byte, s int) []byte {
		return appendStreamHeader(nil, id, v, w, s, salt)
	}
	valid := hdr("k", 1, wrapped, MinSegmentSize)
	with := func(i int, b byte) []byte { c := bytes.Clone(valid); c[i] = b; return c }
	for _, tc := range []struct {
		name string
		in   []byte
		want string // "" when the header is accepted
	}{
		{"valid", valid, ""},
		{"longest key id", hdr(strings.Repeat("k", MaxKeyID), 1, wrapped, MinSegmentSize), ""},
		{"largest wrapped key", hdr("k", 1, make([]byte, MaxWrappedDEK), MaxSegmentSize), ""},
		{"empty", nil, "empty"},
		{"single-message format", with(0, FormatV1), "single-message ciphertext"},
		{"format 0x03", with(0, 0x03), "unknown stream format byte 0x03"},
		{"format 0x00", with(0, 0x00), "unknown stream format byte 0x00"},
		{"key id length 0", []byte{FormatStreamV1, 0, 'k'}, "invalid key id"},
		{"bad key id", hdr("k%", 1, wrapped, MinSegmentSize), "invalid key id"},
		{"version 0", hdr("k", 0, wrapped, MinSegmentSize), "version 0"},
		{"wrapped key of 59 bytes", hdr("k", 1, wrapped[:59], MinSegmentSize), "wrapped key is 59 bytes"},
		{"wrapped key of 0 bytes", hdr("k", 1, nil, MinSegmentSize), "wrapped key is 0 bytes"},
		{"wrapped key of 2049 bytes", hdr("k", 1, make([]byte, MaxWrappedDEK+1), MinSegmentSize), "wrapped key is 2049 bytes"},
		{"segment size 0", hdr("k", 1, wrapped, 0), "segment size 0 out of"},
		{"segment size 1023", hdr("k", 1, wrapped, MinSegmentSize-1), "segment size 1023 out of"},
		{"segment size 16 MiB + 1", hdr("k", 1, wrapped, MaxSegmentSize+1), "segment size 16777217 out of"},
		{"segment size 2^32-1", hdr("k", 1, wrapped, math.MaxUint32), "segment size 4294967295 out of"},
		{"short salt", valid[:len(valid)-1], "in the salt"},
		{"no salt", valid[:len(valid)-StreamSaltSize], "in the salt"},
		{"cut in segment size", valid[:len(valid)-StreamSaltSize-2], "in the segment size"},
		{"cut in wrapped key", valid[:20], "in the wrapped key"},
		{"cut in wrapped key length", valid[:8], "in the wrapped key length"},
		{"cut in version", valid[:4], "in the version"},
		{"cut in key id", valid[:2], "in the key id"},
		{"cut in key id length", valid[:1], "in the key id length"},
	} {
		cr := &countingReader{r: bytes.NewReader(tc.in)}
		h, err := ReadStreamHeader(cr)
		if tc.want == "" {
			if err != nil || cr.n != len(tc.in) || !bytes.Equal(h.raw, tc.in) {
				t.Errorf("%s: err = %v after %d of %d bytes, want the header", tc.name, err, cr.n, len(tc.in))
			}
			continue
		}
		want := ErrMalformed
		if strings.HasPrefix(tc.want, "in the ") {
			want = ErrTruncated
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %v containing %q", tc.name, err, want, tc.want)
		}
	}

	// An I/O error is the reader's, not a malformed header.
	_, err = ReadStreamHeader(iotest.TimeoutReader(iotest.OneByteReader(bytes.NewReader(valid))))
	if !errors.Is(err, iotest.ErrTimeout) || errors.Is(err, ErrMalformed) {
		t.Errorf("reader failing: err = %v, want ErrTimeout and not ErrMalformed", err)
	}
}

// recordingWriter fails once it has taken limit bytes and notes Close.
type recordingWriter struct {
	bytes.Buffer
	limit  int
	closed bool
}

var errDiskFull = errors.New("disk full")

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.Len()+len(p) > w.limit {
		return 0, errDiskFull
	}
	return w.Buffer.Write(p)
}

func (w *recordingWriter) Close() error { w.closed = true; return nil }

func TestStreamWriterErrors(t *testing.T) {
	dk := streamKey(t, 10)
	for _, size := range []int{-1, 1, MinSegmentSize - 1, MaxSegmentSize + 1} {
		if _, err := NewStreamWriter(io.Discard, dk, nil, size); err == nil {
			t.Errorf("NewStreamWriter(segment size %d) succeeded", size)
		}
	}
	for _, size := range []int{0, MinSegmentSize, MaxSegmentSize} {
		if _, err := NewStreamWriter(io.Discard, dk, nil, size); err != nil {
			t.Errorf("NewStreamWriter(segment size %d): %v", size, err)
		}
	}
	if _, err := NewStreamWriter(io.Discard, dk, map[string]string{"k": "\xff"}, 0); !errors.Is(err, ErrContext) {
		t.Errorf("invalid context: err = %v, want ErrContext", err)
	}
	if _, err := NewStreamWriter(io.Discard, nil, nil, 0); err == nil {
		t.Error("nil data key: no error")
	}
	destroyed := streamKey(t, 10)
	destroyed.Destroy()
	if _, err := NewStreamWriter(io.Discard, destroyed, nil, 0); err == nil || !strings.Contains(err.Error(), "destroyed") {
		t.Errorf("destroyed data key: err = %v, want one saying so", err)
	}

	// The header cannot be written.
	if _, err := NewStreamWriter(&recordingWriter{limit: 10}, dk, nil, 0); !errors.Is(err, errDiskFull) {
		t.Errorf("header write failing: err = %v, want errDiskFull", err)
	}
	// A segment cannot be written: the error sticks, through Close.
	rw := &recordingWriter{limit: 200 + MinSegmentSize}
	w, err := NewStreamWriter(rw, dk, nil, MinSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 2*MinSegmentSize+1)); !errors.Is(err, errDiskFull) {
		t.Errorf("Write with the writer failing: err = %v, want errDiskFull", err)
	}
	if _, err := w.Write([]byte{1}); !errors.Is(err, errDiskFull) {
		t.Errorf("Write after a failure: err = %v, want errDiskFull", err)
	}
	if err := w.Close(); !errors.Is(err, errDiskFull) {
		t.Errorf("Close after a failure: err = %v, want errDiskFull", err)
	}

	// Close seals, does not close the underlying writer, and is final.
	rw = &recordingWriter{limit: 1 << 20}
	w, _ = NewStreamWriter(rw, dk, nil, 0)
	_, _ = w.Write([]byte("abc"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if rw.closed {
		t.Error("Close closed the underlying writer")
	}
	n := rw.Len()
	if _, err := w.Write([]byte("d")); err == nil {
		t.Error("Write after Close succeeded")
	}
	if err := w.Close(); err != nil || rw.Len() != n {
		t.Errorf("second Close = %v and wrote %d bytes, want nil and nothing", err, rw.Len()-n)
	}
	if got, err := openStream(bytes.NewReader(rw.Bytes()), dk, nil); err != nil || string(got) != "abc" {
		t.Errorf("stream = %q, %v; want \"abc\"", got, err)
	}
}

func TestStreamReaderErrors(t *testing.T) {
	dk := streamKey(t, 11)
	ct := sealStream(t, dk, nil, MinSegmentSize, pattern(5, 3*MinSegmentSize))
	if _, err := NewStreamReader(bytes.NewReader(nil), &StreamHeader{KeyID: "payments", Version: 3, WrappedDEK: dk.Wrapped, SegmentSize: MinSegmentSize, Salt: make([]byte, 32)}, dk, nil); err == nil {
		t.Error("a header not from ReadStreamHeader was accepted")
	}
	h, _ := ReadStreamHeader(bytes.NewReader(ct))
	if _, err := NewStreamReader(bytes.NewReader(nil), h, nil, nil); err == nil {
		t.Error("nil data key: no error")
	}
	bad := *h
	bad.SegmentSize = MaxSegmentSize + 1
	if _, err := NewStreamReader(bytes.NewReader(nil), &bad, dk, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("segment size altered after parsing: err = %v, want ErrMalformed", err)
	}

	// An I/O error in segment 1 is returned as such, not as a bad stream,
	// after segment 0, and it sticks.
	pt := pattern(5, 3*MinSegmentSize)
	r := io.MultiReader(bytes.NewReader(ct[:len(h.raw)+MinSegmentSize+TagSize+100]), iotest.ErrReader(iotest.ErrTimeout))
	h, _ = ReadStreamHeader(r)
	sr, err := NewStreamReader(r, h, dk, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(sr)
	if !errors.Is(err, iotest.ErrTimeout) || errors.Is(err, ErrDecrypt) || !bytes.Equal(got, pt[:MinSegmentSize]) {
		t.Errorf("reader failing: %d bytes, err = %v; want segment 0 and ErrTimeout", len(got), err)
	}
	if _, err := sr.Read(make([]byte, 1)); !errors.Is(err, iotest.ErrTimeout) {
		t.Errorf("Read after the failure: err = %v, want ErrTimeout again", err)
	}
}

// TestStreamSegmentLimit checks both ends at the last u32 segment index,
// starting the counters there rather than writing 2^32 segments.
func TestStreamSegmentLimit(t *testing.T) {
	const size = MinSegmentSize
	dk := streamKey(t, 12)
	salt := make([]byte, StreamSaltSize)
	seal := func(first uint32, n int) ([]byte, error) {
		var buf bytes.Buffer
		w, err := newStreamWriter(&buf, dk, nil, size, salt)
		if err != nil {
			t.Fatal(err)
		}
		w.idx = first
		if _, err := w.Write(pattern(6, n)); err != nil {
			return nil, err
		}
		err = w.Close()
		return buf.Bytes(), err
	}
	open := func(ct []byte, first uint32) ([]byte, error) {
		r := bytes.NewReader(ct)
		h, err := ReadStreamHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		sr, err := newStreamReader(r, h, dk, nil)
		if err != nil {
			t.Fatal(err)
		}
		sr.idx = first
		return io.ReadAll(sr)
	}
	// A final segment may take the last index.
	ct, err := seal(math.MaxUint32, size)
	if err != nil {
		t.Fatalf("final segment at index 2^32-1: %v", err)
	}
	if got, err := open(ct, math.MaxUint32); err != nil || !bytes.Equal(got, pattern(6, size)) {
		t.Errorf("opening it: %d bytes, %v", len(got), err)
	}
	// Two segments ending at the last index.
	ct, err = seal(math.MaxUint32-1, size+1)
	if err != nil {
		t.Fatalf("segments 2^32-2 and 2^32-1: %v", err)
	}
	if got, err := open(ct, math.MaxUint32-1); err != nil || !bytes.Equal(got, pattern(6, size+1)) {
		t.Errorf("opening them: %d bytes, %v", len(got), err)
	}
	// A non-final segment may not: the final one would have no index.
	if _, err := seal(math.MaxUint32, size+1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("non-final segment at index 2^32-1: err = %v, want ErrTooLarge", err)
	}
	if _, err := open(ct, math.MaxUint32); !errors.Is(err, ErrMalformed) {
		t.Errorf("reading past index 2^32-1: err = %v, want ErrMalformed", err)
	}
}

func TestParseHeaderRefusesStream(t *testing.T) {
	dk := streamKey(t, 13)
	st := sealStream(t, dk, nil, 0, []byte("x"))
	_, _, err := ParseHeader(st)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "streaming ciphertext") || !strings.Contains(err.Error(), "stream reader") {
		t.Errorf("ParseHeader(stream) err = %v, want ErrMalformed saying it is a streaming ciphertext", err)
	}
	msg, _ := dk.Seal([]byte("x"), nil)
	for _, tc := range []struct {
		in   []byte
		want bool
	}{
		{st, true}, {msg, false}, {nil, false}, {[]byte{FormatStreamV1}, true}, {[]byte{0x03}, false},
	} {
		if got := IsStream(tc.in); got != tc.want {
			t.Errorf("IsStream(%x…) = %t, want %t", tc.in[:min(len(tc.in), 4)], got, tc.want)
		}
	}
	if _, err := ReadStreamHeader(bytes.NewReader(msg)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "single-message") {
		t.Errorf("ReadStreamHeader(v1 ciphertext) err = %v, want ErrMalformed naming a single-message ciphertext", err)
	}
}

// TestStreamDataKeyCache fetches a stream's data key through a Cache, as
// the SDK's decryptor does.
func TestStreamDataKeyCache(t *testing.T) {
	kek := material(1)
	sealer, err := GenerateDataKey(kek, "payments", 3)
	if err != nil {
		t.Fatal(err)
	}
	ct := sealStream(t, sealer, nil, 0, []byte("cached"))
	c := NewCache(4, time.Hour, nil)
	var unwraps int
	for range 2 {
		r := bytes.NewReader(ct)
		h, err := ReadStreamHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		dh := h.DataKeyHeader()
		if dh.Nonce != nil {
			t.Errorf("DataKeyHeader().Nonce = %x, want nil", dh.Nonce)
		}
		if dh.KeyID != sealer.KeyID || dh.Version != sealer.Version || !bytes.Equal(dh.WrappedDEK, sealer.Wrapped) {
			t.Errorf("DataKeyHeader() = %s v%d %x, want %s v%d %x", dh.KeyID, dh.Version, dh.WrappedDEK, sealer.KeyID, sealer.Version, sealer.Wrapped)
		}
		dk, err := c.Get(t.Context(), dh, func(context.Context) (*DataKey, error) {
			unwraps++
			return UnwrapDataKey(kek, dh.KeyID, dh.Version, dh.WrappedDEK)
		})
		if err != nil {
			t.Fatal(err)
		}
		sr, err := NewStreamReader(r, h, dk, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(sr); err != nil || string(got) != "cached" {
			t.Errorf("stream = %q, %v; want \"cached\"", got, err)
		}
	}
	if unwraps != 1 {
		t.Errorf("two streams under one data key made %d unwraps, want 1", unwraps)
	}
}

// streamVector is the streaming known-answer vector in docs/ciphertext.md.
type streamVector struct {
	Name             string            `json:"name"`
	DEK              string            `json:"dek"`
	KeyID            string            `json:"key_id"`
	Version          uint32            `json:"version"`
	WrappedDEK       string            `json:"wrapped_dek"`
	SegmentSize      int               `json:"segment_size"`
	Salt             string            `json:"salt"`
	Context          map[string]string `json:"context"`
	PlaintextLength  int               `json:"plaintext_length"`
	PlaintextPattern string            `json:"plaintext_pattern"`
	SegmentKey       string            `json:"segment_key"`
	AAD              string            `json:"aad"`
	Header           string            `json:"header"`
	Segments         []string          `json:"segments"`
	CiphertextSHA256 string            `json:"ciphertext_sha256"`
}

// TestStreamKnownAnswer checks the vector published under "## Streaming
// format" in docs/ciphertext.md byte for byte, then opens it.
func TestStreamKnownAnswer(t *testing.T) {
	doc, err := os.ReadFile("../docs/ciphertext.md")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(doc, []byte("\n## Streaming format\n"))
	if i < 0 {
		t.Fatal(`docs/ciphertext.md has no "## Streaming format" section`)
	}
	m := regexp.MustCompile("(?s)```json\n(.*?)```").FindSubmatch(doc[i:])
	if m == nil {
		t.Fatal("the streaming section of docs/ciphertext.md has no ```json block")
	}
	var vs []streamVector
	dec := json.NewDecoder(bytes.NewReader(m[1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&vs); err != nil {
		t.Fatalf("vectors: %v", err)
	}
	if len(vs) == 0 {
		t.Fatal("no streaming vectors")
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			if v.PlaintextPattern != "i mod 256" {
				t.Fatalf("plaintext pattern %q, want \"i mod 256\"", v.PlaintextPattern)
			}
			pt := make([]byte, v.PlaintextLength)
			for i := range pt {
				pt[i] = byte(i)
			}
			dek, salt := unhex(t, v.DEK), unhex(t, v.Salt)
			header := unhex(t, v.Header)
			// The intermediate values, computed here independently of
			// stream.go.
			k, err := hkdf.Key(sha256.New, dek, salt, "keybroker/v1/stream", 32)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(k); got != v.SegmentKey {
				t.Errorf("segment key = %s, want %s", got, v.SegmentKey)
			}
			c, err := CanonicalContext(v.Context)
			if err != nil {
				t.Fatal(err)
			}
			if got := sha256.Sum256(join(header, c)); hex.EncodeToString(got[:]) != v.AAD {
				t.Errorf("AAD = %x, want %s", got, v.AAD)
			}

			dk, err := NewDataKey(v.KeyID, v.Version, secret.New(dek), unhex(t, v.WrappedDEK))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			w, err := newStreamWriter(&buf, dk, v.Context, v.SegmentSize, salt)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(pt); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			gotHdr, gotSegs := splitStream(t, buf.Bytes())
			if got := hex.EncodeToString(gotHdr); got != v.Header {
				t.Errorf("header = %s\nwant     %s", got, v.Header)
			}
			if len(gotSegs) != len(v.Segments) {
				t.Fatalf("%d segments, want %d", len(gotSegs), len(v.Segments))
			}
			want := header
			for i, s := range v.Segments {
				if got := hex.EncodeToString(gotSegs[i]); got != s {
					t.Errorf("segment %d = %s\nwant          %s", i, got, s)
				}
				want = join(want, unhex(t, s))
			}
			if got := sha256.Sum256(want); hex.EncodeToString(got[:]) != v.CiphertextSHA256 {
				t.Errorf("SHA-256 of the published ciphertext = %x, want %s", got, v.CiphertextSHA256)
			}
			got, err := openStream(bytes.NewReader(want), dk, v.Context)
			if err != nil || !bytes.Equal(got, pt) {
				t.Errorf("opening the published ciphertext: %d bytes, %v; want the %d-byte plaintext", len(got), err, len(pt))
			}
		})
	}
}

// FuzzStreamReader checks the stream reader on any input: no panic; a
// header that reads encodes back to itself and is all that was read; every
// refusal is ErrMalformed, ErrDecrypt or ErrTruncated; and only the
// streams the seeds sealed open, to their plaintexts.
func FuzzStreamReader(f *testing.F) {
	dk := streamKey(f, 14)
	ectx := map[string]string{"a": "b"}
	// The seeds use a fixed salt: fuzzing workers run this function again
	// and must rebuild the same map.
	sealed := map[string][]byte{} // ciphertext → plaintext
	for _, n := range []int{0, 5, MinSegmentSize, 2*MinSegmentSize + 5} {
		pt := pattern(uint64(n), n)
		var buf bytes.Buffer
		w, err := newStreamWriter(&buf, dk, ectx, MinSegmentSize, bytes.Repeat([]byte{byte(n)}, StreamSaltSize))
		if err != nil {
			f.Fatal(err)
		}
		_, _ = w.Write(pt)
		if err := w.Close(); err != nil {
			f.Fatal(err)
		}
		sealed[buf.String()] = pt
		f.Add(buf.Bytes())
	}
	f.Add([]byte{FormatStreamV1})
	f.Add(appendStreamHeader(nil, "payments", 3, dk.Wrapped, MaxSegmentSize, make([]byte, StreamSaltSize)))
	f.Fuzz(func(t *testing.T, in []byte) {
		// A header that reads is exactly what the writer would write, and
		// reading it consumed nothing more.
		r := bytes.NewReader(in)
		if h, err := ReadStreamHeader(r); err == nil {
			enc := appendStreamHeader(nil, h.KeyID, h.Version, h.WrappedDEK, h.SegmentSize, h.Salt)
			if !bytes.Equal(enc, h.raw) || !bytes.HasPrefix(in, enc) || r.Len() != len(in)-len(enc) {
				t.Fatalf("stream header %x encodes back to %x, having read %d bytes", h.raw, enc, len(in)-r.Len())
			}
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) {
			t.Fatalf("ReadStreamHeader error %v is neither ErrMalformed nor ErrTruncated", err)
		}
		got, err := openStream(bytes.NewReader(in), dk, ectx)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("error %v is none of ErrMalformed, ErrDecrypt, ErrTruncated", err)
			}
			return
		}
		want, ok := sealed[string(in)]
		if !ok {
			t.Fatalf("opened a stream that was not sealed (%d bytes)", len(in))
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("opened a sealed stream to %d bytes, want its %d-byte plaintext", len(got), len(want))
		}
	})
}

func BenchmarkStream(b *testing.B) {
	dk := streamKey(b, 15)
	ectx := map[string]string{"tenant": "42"}
	for _, n := range []int{1 << 20, 64 << 20} {
		pt := pattern(7, n)
		b.Run(fmt.Sprintf("write/%dMiB", n>>20), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				w, err := NewStreamWriter(io.Discard, dk, ectx, 0)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write(pt); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		ct := sealStream(b, dk, ectx, 0, pt)
		b.Run(fmt.Sprintf("read/%dMiB", n>>20), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				r := bytes.NewReader(ct)
				h, err := ReadStreamHeader(r)
				if err != nil {
					b.Fatal(err)
				}
				sr, err := NewStreamReader(r, h, dk, ectx)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, sr); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
