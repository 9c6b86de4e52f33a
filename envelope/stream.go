package envelope

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// Stream v1 constants.
const (
	FormatStreamV1 = 0x02
	// DefaultSegmentSize is the plaintext bytes per segment when the writer
	// is given 0.
	DefaultSegmentSize = 64 << 10
	MinSegmentSize     = 1 << 10
	MaxSegmentSize     = 16 << 20
	StreamSaltSize     = 32
)

// ErrTruncated is returned by a stream reader when the stream ends before
// its final segment, wherever it was cut: inside the header, at a segment
// boundary, or inside a segment. See the package doc's # Truncation for how
// a cut is told from tampering, and the one case where it cannot be.
var ErrTruncated = errors.New("envelope: truncated stream (it ends before its final segment)")

// ErrAborted is returned by a stream writer's Write and Close once Abort
// has ended the stream without its final segment.
var ErrAborted = errors.New("envelope: stream aborted (no final segment was written)")

var errWriteAfterClose = errors.New("envelope: write to a closed stream")

// streamInfo is the HKDF info that derives a stream's segment key.
const streamInfo = "keybroker/v1/stream"

// StreamHeader is a parsed stream header; nothing in it is trusted until
// segments authenticate.
type StreamHeader struct {
	KeyID      string
	Version    uint32
	WrappedDEK []byte
	// SegmentSize is the plaintext bytes in every segment but the last.
	SegmentSize int
	Salt        []byte
	// raw is the header as it appears on the wire, hashed into the AAD.
	raw []byte
}

// DataKeyHeader returns a *Header with KeyID, Version, WrappedDEK set (Nonce
// nil), so Cache.Get can find the stream's data key.
// It is not a message header: do not pass it to DataKey.Open.
func (h *StreamHeader) DataKeyHeader() *Header {
	return &Header{KeyID: h.KeyID, Version: h.Version, WrappedDEK: h.WrappedDEK}
}

// IsStream reports whether b starts like a stream ciphertext (first byte
// FormatStreamV1).
func IsStream(b []byte) bool { return len(b) > 0 && b[0] == FormatStreamV1 }

func appendStreamHeader(dst []byte, keyID string, version uint32, wrapped []byte, segmentSize int, salt []byte) []byte {
	dst = append(dst, FormatStreamV1, byte(len(keyID)))
	dst = append(dst, keyID...)
	dst = binary.BigEndian.AppendUint32(dst, version)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(wrapped)))
	dst = append(dst, wrapped...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(segmentSize))
	return append(dst, salt...)
}

// ReadStreamHeader reads exactly the header from r (never more), so the
// caller can fetch the data key before reading on. A header that does not
// parse is ErrMalformed, one cut short ErrTruncated (an empty r is
// ErrMalformed: nothing says it was ever a stream); an error from r is
// returned wrapped.
func ReadStreamHeader(r io.Reader) (*StreamHeader, error) {
	raw := make([]byte, 0, 1+1+MaxKeyID+4+2+WrappedDEKLen+4+StreamSaltSize)
	// next reads n more bytes onto raw and returns them.
	next := func(n int, what string) ([]byte, error) {
		p := len(raw)
		raw = slices.Grow(raw, n)[:p+n]
		if _, err := io.ReadFull(r, raw[p:]); err != nil {
			if p == 0 && err == io.EOF {
				return nil, malformed("empty")
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, fmt.Errorf("%w: the stream ends inside its header (in the %s)", ErrTruncated, what)
			}
			return nil, fmt.Errorf("envelope: reading stream header: %w", err)
		}
		return raw[p : p+n : p+n], nil
	}
	b, err := next(1, "format")
	if err != nil {
		return nil, err
	}
	switch b[0] {
	case FormatStreamV1:
	case FormatV1:
		return nil, malformed("format byte 0x01 is a single-message ciphertext, not a stream: open it with ParseHeader and Open")
	default:
		return nil, malformed("unknown stream format byte 0x%02x", b[0])
	}
	if b, err = next(1, "key id length"); err != nil {
		return nil, err
	}
	l := int(b[0])
	if l == 0 {
		return nil, malformed("invalid key id")
	}
	if b, err = next(l, "key id"); err != nil {
		return nil, err
	}
	h := &StreamHeader{KeyID: string(b)}
	if !ValidKeyID(h.KeyID) {
		return nil, malformed("invalid key id")
	}
	if b, err = next(4, "version"); err != nil {
		return nil, err
	}
	if h.Version = binary.BigEndian.Uint32(b); h.Version == 0 {
		return nil, malformed("version 0")
	}
	if b, err = next(2, "wrapped key length"); err != nil {
		return nil, err
	}
	// The same bounds as ParseHeader and NewDataKey.
	w := int(binary.BigEndian.Uint16(b))
	if w < WrappedDEKLen || w > MaxWrappedDEK {
		return nil, malformed("wrapped key is %d bytes, want %d to %d", w, WrappedDEKLen, MaxWrappedDEK)
	}
	if h.WrappedDEK, err = next(w, "wrapped key"); err != nil {
		return nil, err
	}
	if b, err = next(4, "segment size"); err != nil {
		return nil, err
	}
	s := binary.BigEndian.Uint32(b)
	if s < MinSegmentSize || s > MaxSegmentSize {
		return nil, malformed("segment size %d out of %d..%d", s, MinSegmentSize, MaxSegmentSize)
	}
	h.SegmentSize = int(s)
	if h.Salt, err = next(StreamSaltSize, "salt"); err != nil {
		return nil, err
	}
	h.raw = raw[:len(raw):len(raw)]
	return h, nil
}

// streamAEAD derives the stream's segment key from the data key and salt and
// returns the AEAD built on it, with the AAD every segment carries:
// SHA-256(header ‖ canonical context).
func streamAEAD(dk *DataKey, salt, header []byte, ectx map[string]string) (cipher.AEAD, [sha256.Size]byte, error) {
	var aad [sha256.Size]byte
	c, err := CanonicalContext(ectx)
	if err != nil {
		return nil, aad, err
	}
	dek := dk.dek.Reveal()
	if len(dek) != DEKSize {
		return nil, aad, errors.New("envelope: data key has been destroyed")
	}
	k, err := hkdf.Key(sha256.New, dek, salt, streamInfo, DEKSize)
	if err != nil {
		return nil, aad, err
	}
	a, err := newGCM(k)
	clear(k)
	if err != nil {
		return nil, aad, err
	}
	h := sha256.New()
	h.Write(header)
	h.Write(c)
	h.Sum(aad[:0])
	return a, aad, nil
}

// segmentNonce sets n to 7 zero bytes ‖ u32 index ‖ last flag and returns
// it as a slice. Callers keep n in their struct: a nonce on the stack would
// escape through the cipher.AEAD interface, one allocation per segment.
func segmentNonce(n *[NonceSize]byte, i uint32, last bool) []byte {
	*n = [NonceSize]byte{}
	binary.BigEndian.PutUint32(n[7:], i)
	if last {
		n[11] = 1
	}
	return n[:]
}

func checkSegmentSize(n int) (int, error) {
	if n == 0 {
		return DefaultSegmentSize, nil
	}
	if n < MinSegmentSize || n > MaxSegmentSize {
		return 0, fmt.Errorf("envelope: segment size %d out of %d..%d", n, MinSegmentSize, MaxSegmentSize)
	}
	return n, nil
}

// NewStreamWriter writes the header at once and returns a writer that
// seals segments of segmentSize (0 = DefaultSegmentSize). The stream ends
// one of two ways: Close seals the final segment — call it only when every
// byte of the input has been written — and Abort ends it without one, so
// that what was written can never open as complete. Neither closes w. The
// writer is not safe for concurrent use, and dk must not be destroyed while
// NewStreamWriter runs.
func NewStreamWriter(w io.Writer, dk *DataKey, ectx map[string]string, segmentSize int) (*StreamWriter, error) {
	salt := make([]byte, StreamSaltSize)
	_, _ = rand.Read(salt)
	return newStreamWriter(w, dk, ectx, segmentSize, salt)
}

func newStreamWriter(w io.Writer, dk *DataKey, ectx map[string]string, segmentSize int, salt []byte) (*StreamWriter, error) {
	size, err := checkSegmentSize(segmentSize)
	if err != nil {
		return nil, err
	}
	if dk == nil {
		return nil, errors.New("envelope: stream writer needs a data key")
	}
	header := appendStreamHeader(nil, dk.KeyID, dk.Version, dk.Wrapped, size, salt)
	a, aad, err := streamAEAD(dk, salt, header, ectx)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(header); err != nil {
		return nil, fmt.Errorf("envelope: writing stream header: %w", err)
	}
	return &StreamWriter{w: w, aead: a, aad: aad, size: size, buf: make([]byte, 0, size+TagSize)}, nil
}

// StreamWriter seals a stream; see NewStreamWriter.
type StreamWriter struct {
	w    io.Writer
	aead cipher.AEAD
	aad  [sha256.Size]byte
	size int
	// buf holds up to size bytes of plaintext not yet sealed; segments are
	// sealed into it in place.
	buf    []byte
	idx    uint32 // of the next segment
	nonce  [NonceSize]byte
	err    error // sticky
	closed bool
}

// Write buffers p and seals every segment that is known not to be the last:
// a full buffer is sealed only once more data arrives.
func (s *StreamWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed {
		return 0, errWriteAfterClose
	}
	n := 0
	for len(p) > 0 {
		switch {
		case len(s.buf) == s.size:
			if err := s.seal(s.buf, false); err != nil {
				return n, err
			}
		case len(s.buf) == 0 && len(p) > s.size:
			// A whole segment with more to follow: seal it straight from p.
			if err := s.seal(p[:s.size], false); err != nil {
				return n, err
			}
			p = p[s.size:]
			n += s.size
		default:
			k := copy(s.buf[len(s.buf):s.size], p)
			s.buf = s.buf[:len(s.buf)+k]
			p = p[k:]
			n += k
		}
	}
	return n, nil
}

// seal seals pt (the buffer itself, or a segment of the caller's slice) as
// the next segment and writes it.
func (s *StreamWriter) seal(pt []byte, last bool) error {
	// The last segment needs an index of its own, so a non-last one may not
	// take the final index.
	if !last && s.idx == math.MaxUint32 {
		s.err = fmt.Errorf("%w: a stream holds at most 2^32 segments", ErrTooLarge)
		return s.err
	}
	nonce := segmentNonce(&s.nonce, s.idx, last)
	ct := s.aead.Seal(s.buf[:0], nonce, pt, s.aad[:])
	s.buf = s.buf[:0]
	if _, err := s.w.Write(ct); err != nil {
		s.err = fmt.Errorf("envelope: writing stream segment %d: %w", s.idx, err)
		return s.err
	}
	s.idx++
	return nil
}

// Close seals the final segment, unless a write failed or the stream was
// aborted: then it writes nothing and returns that error. Calling it again
// returns the first call's result and writes nothing.
func (s *StreamWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err == nil {
		_ = s.seal(s.buf, true)
	}
	s.drop()
	return s.err
}

// Abort ends the stream without its final segment and zeroes the plaintext
// it buffered: the segments already written stay where they are, and a
// reader of them fails with ErrTruncated. cause (nil for none) is kept:
// later calls of Write and Close return an error matching ErrAborted and
// cause. Abort after Close, or after another Abort, does nothing.
func (s *StreamWriter) Abort(cause error) {
	if s.closed {
		return
	}
	s.closed = true
	if s.err == nil {
		if cause != nil {
			s.err = fmt.Errorf("%w: %w", ErrAborted, cause)
		} else {
			s.err = ErrAborted
		}
	}
	s.drop()
}

// drop zeroes the buffered plaintext.
func (s *StreamWriter) drop() {
	clear(s.buf[:cap(s.buf)])
	s.buf = nil
}

// NewStreamReader returns a Reader of the plaintext of the stream whose
// header h was read from r; dk must be the stream's data key (KeyID/Version
// must match the header's; error otherwise). Read returns io.EOF only after
// the final segment authenticates; see the package doc for what a consumer
// may do with earlier output. The reader is not safe for concurrent use, and
// dk must not be destroyed while NewStreamReader runs.
func NewStreamReader(r io.Reader, h *StreamHeader, dk *DataKey, ectx map[string]string) (io.Reader, error) {
	return newStreamReader(r, h, dk, ectx)
}

func newStreamReader(r io.Reader, h *StreamHeader, dk *DataKey, ectx map[string]string) (*streamReader, error) {
	if h == nil || h.raw == nil {
		return nil, errors.New("envelope: stream header was not read by ReadStreamHeader")
	}
	if dk == nil {
		return nil, errors.New("envelope: stream reader needs a data key")
	}
	if h.KeyID != dk.KeyID || h.Version != dk.Version || string(h.WrappedDEK) != string(dk.Wrapped) {
		return nil, fmt.Errorf("%w: data key %s version %d is not the one the stream names (%s version %d)", ErrDecrypt, dk.KeyID, dk.Version, h.KeyID, h.Version)
	}
	size := h.SegmentSize
	if size < MinSegmentSize || size > MaxSegmentSize || len(h.Salt) != StreamSaltSize {
		return nil, malformed("invalid stream header (segment size %d, salt of %d bytes)", size, len(h.Salt))
	}
	a, aad, err := streamAEAD(dk, h.Salt, h.raw, ectx)
	if err != nil {
		return nil, err
	}
	// The buffer grows to a whole segment as data arrives, so a header
	// claiming 16 MiB segments in front of a short body costs little.
	want := size + TagSize + 1
	return &streamReader{r: r, aead: a, aad: aad, size: size, buf: make([]byte, 0, min(want, DefaultSegmentSize+TagSize+1))}, nil
}

type streamReader struct {
	r    io.Reader
	aead cipher.AEAD
	aad  [sha256.Size]byte
	size int
	// buf takes a segment and one byte of read-ahead (size+TagSize+1); the
	// segment is opened in place.
	buf []byte
	// out is the authenticated plaintext not yet returned, within buf.
	out []byte
	// peek is the read-ahead byte, the first of the next segment.
	peek     byte
	havePeek bool
	idx      uint32 // of the next segment
	nonce    [NonceSize]byte
	err      error // sticky; io.EOF after the final segment
}

func (s *streamReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(s.out) == 0 && s.err == nil {
		s.err = s.next()
	}
	if len(s.out) > 0 {
		n := copy(p, s.out)
		s.out = s.out[n:]
		return n, nil
	}
	if s.buf != nil {
		clear(s.buf[:cap(s.buf)])
		s.buf = nil
	}
	return 0, s.err
}

// next reads and opens one segment into s.out. It returns io.EOF with the
// final segment.
func (s *streamReader) next() error {
	s.buf = s.buf[:0]
	if s.havePeek {
		s.buf = append(s.buf, s.peek)
		s.havePeek = false
	}
	eof, err := s.fill()
	if err != nil {
		return fmt.Errorf("envelope: reading stream segment %d: %w", s.idx, err)
	}
	if !eof {
		// A full segment with data after it: it must not be the last.
		if s.idx == math.MaxUint32 {
			return malformed("stream has more than 2^32 segments")
		}
		seg := s.buf[:len(s.buf)-1]
		s.peek, s.havePeek = s.buf[len(s.buf)-1], true
		nonce := segmentNonce(&s.nonce, s.idx, false)
		pt, err := s.aead.Open(seg[:0], nonce, seg, s.aad[:])
		if err != nil {
			return s.decryptErr()
		}
		s.out = pt
		s.idx++
		return nil
	}
	seg := s.buf
	if len(seg) == 0 {
		// The input ends at a segment boundary (or right after the header):
		// the previous segment, if any, authenticated as non-final.
		if s.idx == 0 {
			return fmt.Errorf("%w: the stream ends right after its header", ErrTruncated)
		}
		return fmt.Errorf("%w: the stream ends after segment %d, which is not its final one", ErrTruncated, s.idx-1)
	}
	last := segmentNonce(&s.nonce, s.idx, true)
	if len(seg) < s.size+TagSize {
		// A short last segment: a final one, or what is left of a longer
		// segment after a cut (see the package doc's # Truncation).
		pt, err := s.aead.Open(seg[:0], last, seg, s.aad[:])
		if err != nil {
			return s.cutErr()
		}
		s.out = pt
		return io.EOF
	}
	// A whole segment and then the end: the final segment of a stream whose
	// length is a multiple of the segment size, or a stream cut at a segment
	// boundary. Opening out of place keeps the ciphertext to tell which (once
	// per stream).
	if pt, err := s.aead.Open(nil, last, seg, s.aad[:]); err == nil {
		s.out = pt
		return io.EOF
	}
	if pt, err := s.aead.Open(nil, segmentNonce(&s.nonce, s.idx, false), seg, s.aad[:]); err == nil {
		clear(pt)
		return fmt.Errorf("%w: the stream ends after segment %d, which is not its final one", ErrTruncated, s.idx)
	}
	return s.decryptErr()
}

// cutErr is the error of a stream that ends in a segment shorter than a
// whole one that does not open as final. A writer writes no short segment
// but the final one, so the bytes are either what is left of a segment
// after a cut, or a final segment that was altered; the format cannot tell
// which. After a segment that authenticated, the key and context are
// right, so the stream is damaged at its end: it is reported as truncated.
// In segment 0 nothing has authenticated yet, and the key or the context
// may as well be wrong: the error matches both ErrTruncated and ErrDecrypt.
func (s *streamReader) cutErr() error {
	if s.idx == 0 {
		return errCutOrWrong{}
	}
	return fmt.Errorf("%w: the stream ends inside segment %d (or that last segment was altered)", ErrTruncated, s.idx)
}

// errCutOrWrong is a stream that ends inside a segment 0 that does not
// authenticate: it matches ErrTruncated and ErrDecrypt.
type errCutOrWrong struct{}

func (errCutOrWrong) Error() string {
	return "envelope: truncated stream, or decryption failed: the stream ends inside its first segment, which does not authenticate (the stream was cut, or the key, the encryption context or the ciphertext is wrong)"
}

func (errCutOrWrong) Is(target error) bool { return target == ErrTruncated || target == ErrDecrypt }

func (s *streamReader) decryptErr() error {
	return fmt.Errorf("%w: segment %d", ErrDecrypt, s.idx)
}

// fill reads onto s.buf until it holds a segment and one byte more, or the
// input ends (eof).
func (s *streamReader) fill() (eof bool, err error) {
	want := s.size + TagSize + 1
	for len(s.buf) < want {
		if len(s.buf) == cap(s.buf) {
			s.buf = slices.Grow(s.buf, min(cap(s.buf), want-len(s.buf)))
		}
		end := min(cap(s.buf), want)
		n, err := io.ReadFull(s.r, s.buf[len(s.buf):end])
		s.buf = s.buf[:len(s.buf)+n]
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	return false, nil
}
