package client_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// seeded is a deterministic reader of n pseudo-random bytes.
func seeded(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), n)
}

// TestStreams round-trips streams through an Encryptor and a Decryptor —
// empty, one byte, around the segment size, and 100 MiB in constant memory
// — and refuses streams cut short, reordered or altered.
func TestStreams(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	cl := c.client(t, "us", c.us)
	const seg = envelope.MinSegmentSize
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "derived", SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	ectx := map[string]string{"file": "report.pdf"}
	seal := func(t *testing.T, src io.Reader) []byte {
		t.Helper()
		var buf bytes.Buffer
		w, err := enc.NewWriter(ctx, &buf, ectx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, src); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, n := range []int{0, 1, seg - 1, seg, seg + 1, 3 * seg} {
		msg, _ := io.ReadAll(seeded(int64(n)))
		ct := seal(t, bytes.NewReader(msg))
		r, err := dec.NewReader(ctx, bytes.NewReader(ct), ectx)
		if err != nil {
			t.Fatalf("NewReader(%d bytes): %v", n, err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, msg) {
			t.Errorf("stream of %d bytes: got %d bytes, %v", n, len(got), err)
		}
		if got, err := dec.Decrypt(ctx, ct, ectx); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("Decrypt of a %d-byte stream in memory: %v", n, err)
		}
	}
	if s := enc.Stats(); s.DataKeys != 1 || s.Streams != 6 {
		t.Errorf("Encryptor after 6 streams: %+v, want 1 data key", s)
	}

	// 100 MiB through a pipe: neither side holds the stream.
	t.Run("100MiB", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short")
		}
		big, err := cl.NewEncryptor(client.EncryptorConfig{Key: "shared"})
		if err != nil {
			t.Fatal(err)
		}
		const n = 100 << 20
		pr, pw := io.Pipe()
		go func() {
			w, err := big.NewWriter(ctx, pw, ectx)
			if err == nil {
				_, err = io.Copy(w, seeded(n))
			}
			if err == nil {
				err = w.Close()
			}
			pw.CloseWithError(err)
		}()
		r, err := dec.NewReader(ctx, pr, ectx)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		got, err := io.Copy(h, r)
		want := sha256.New()
		io.Copy(want, seeded(n))
		if err != nil || got != n || !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
			t.Errorf("100 MiB stream: %d bytes, %v; digest match %v", got, err, bytes.Equal(h.Sum(nil), want.Sum(nil)))
		}
	})

	msg, _ := io.ReadAll(seeded(3*seg + 100))
	ct := seal(t, bytes.NewReader(msg))
	hdr := len(ct) - 4*(seg+envelope.TagSize) + (seg - 100)
	segAt := func(i int) []byte { return ct[hdr+i*(seg+envelope.TagSize) : hdr+(i+1)*(seg+envelope.TagSize)] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name string
		ct   []byte
		ectx map[string]string
	}{
		{"cut at a segment boundary", ct[:hdr+2*(seg+envelope.TagSize)], ectx},
		{"cut inside a segment", ct[:len(ct)-10], ectx},
		{"header only", ct[:hdr], ectx},
		{"segments swapped", join(ct[:hdr], segAt(1), segAt(0), ct[hdr+2*(seg+envelope.TagSize):]), ectx},
		{"a segment dropped", join(ct[:hdr], segAt(0), ct[hdr+2*(seg+envelope.TagSize):]), ectx},
		{"data appended", join(ct, []byte("more")), ectx},
		{"a byte flipped", func() []byte { b := bytes.Clone(ct); b[hdr+seg+50] ^= 1; return b }(), ectx},
		{"the wrong context", ct, map[string]string{"file": "other.pdf"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := dec.Decrypt(ctx, tc.ct, tc.ectx)
			wantCode(t, tc.name, err, client.ErrInvalidArgument, codes.InvalidArgument)
			// The one-shot API hands out nothing of a stream that fails:
			// not even the segments before the bad one, which did
			// authenticate.
			if pt != nil {
				t.Errorf("Decrypt returned %d bytes of plaintext with its error, want nil", len(pt))
			}
			// The streaming reader gives at most the segments before the
			// bad one, then the error, and nothing after it.
			r, err := dec.NewReader(ctx, bytes.NewReader(tc.ct), tc.ectx)
			if err != nil {
				return
			}
			got, err := io.ReadAll(r)
			if err == nil || !bytes.HasPrefix(msg, got) || len(got)%seg != 0 || len(got) >= len(msg) {
				t.Errorf("NewReader: read %d bytes, %v; want a prefix of whole segments before the bad one, and an error", len(got), err)
			}
			if n, err2 := r.Read(make([]byte, 16)); n != 0 || err2 == nil {
				t.Errorf("Read after the error = %d, %v; want 0 and the error again", n, err2)
			}
		})
	}

	// A node's Decrypt cannot open a stream, and says so.
	_, err = cl.Decrypt(ctx, ct, ectx)
	if wantCode(t, "node Decrypt of a stream", err, client.ErrInvalidArgument, codes.InvalidArgument); err != nil && !strings.Contains(err.Error(), "stream") {
		t.Errorf("node Decrypt of a stream: %v, want it to say the ciphertext is a stream", err)
	}
}
