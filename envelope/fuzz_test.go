package envelope

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/secret"
)

// openKey is a key version FuzzOpen's opener holds material for.
type openKey struct {
	material *secret.Bytes
	derived  bool
}

// openKeys are the keys FuzzOpen knows. Their material is fixed, so the
// genuine ciphertexts in testdata/fuzz/FuzzOpen open in every run.
func openKeys() map[string]openKey {
	return map[string]openKey{
		"payments": {material: material(0x42)},
		"tenants":  {material: material(0x43), derived: true},
	}
}

// genuine is a ciphertext FuzzOpen's seeds sealed, and what opens it.
type genuine struct {
	ct        []byte
	ectx      string // in parseFuzzContext's form
	plaintext []byte
}

// genuineCiphertexts seals messages and streams deterministically (fixed
// data keys, nonces and salts), so that every fuzzing worker rebuilds the
// same set and the corpus stays valid.
func genuineCiphertexts(tb testing.TB) []genuine {
	tb.Helper()
	keys := openKeys()
	var out []genuine
	for i, m := range []struct {
		keyID   string
		version uint32
		ectx    string
		pt      []byte
		stream  int // segment size; 0 for a message
	}{
		{"payments", 3, "", []byte("hello"), 0},
		{"payments", 3, "tenant=42", nil, 0},
		{"payments", 3, "tenant=42\npurpose=invoice", pattern(1, 300), 0},
		{"tenants", 1, "tenant=42", []byte("derived per-context key"), 0},
		{"tenants", 1, "tenant=43", []byte("another tenant"), 0},
		{"payments", 3, "tenant=42", pattern(2, 2*MinSegmentSize+5), MinSegmentSize},
		{"payments", 3, "", nil, MinSegmentSize},
		{"tenants", 1, "tenant=42", pattern(3, MinSegmentSize), MinSegmentSize},
	} {
		k := keys[m.keyID]
		ectx := parseFuzzContext(m.ectx)
		kek, err := KEK(k.material, k.derived, ectx)
		if err != nil {
			tb.Fatal(err)
		}
		seed := byte(i + 1)
		dk, err := generate(kek, m.keyID, m.version, secret.New(bytes.Repeat([]byte{seed}, DEKSize)), bytes.Repeat([]byte{seed}, NonceSize))
		if err != nil {
			tb.Fatal(err)
		}
		var ct []byte
		if m.stream == 0 {
			ct, err = dk.seal(m.pt, ectx, bytes.Repeat([]byte{0x80 | seed}, NonceSize))
		} else {
			var buf bytes.Buffer
			var w *StreamWriter
			if w, err = newStreamWriter(&buf, dk, ectx, m.stream, bytes.Repeat([]byte{0x80 | seed}, StreamSaltSize)); err == nil {
				_, _ = w.Write(m.pt)
				err = w.Close()
			}
			ct = buf.Bytes()
		}
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, genuine{ct: ct, ectx: m.ectx, plaintext: m.pt})
	}
	return out
}

// parseFuzzContext turns "k=v\nk2=v2" into an encryption context ("" is
// none; a line without '=' is a key with an empty value; the last of a
// repeated key wins).
func parseFuzzContext(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m[k] = v
	}
	return m
}

// opener opens ciphertexts the way the SDK's Decryptor and a node do:
// the header names the key, the unwrap cache finds or unwraps its data key
// (a miss unwraps under the key's KEK, per context for derived keys), and
// the data key opens the message or stream. It also holds the genuine data
// keys, to try the Decryptor's OpenOwn fast path.
type opener struct {
	keys  map[string]openKey
	cache *Cache
}

func (o *opener) dataKey(ctx context.Context, h *Header, ectx map[string]string) (*DataKey, error) {
	return o.cache.Get(ctx, h, func(context.Context) (*DataKey, error) {
		k, ok := o.keys[h.KeyID]
		if !ok {
			return nil, ErrDecrypt
		}
		kek, err := KEK(k.material, k.derived, ectx)
		if err != nil {
			return nil, err
		}
		return UnwrapDataKey(kek, h.KeyID, h.Version, h.WrappedDEK)
	})
}

func (o *opener) open(ctx context.Context, ct []byte, ectx map[string]string) ([]byte, *DataKey, error) {
	if IsStream(ct) {
		r := bytes.NewReader(ct)
		sh, err := ReadStreamHeader(r)
		if err != nil {
			return nil, nil, err
		}
		dk, err := o.dataKey(ctx, sh.DataKeyHeader(), ectx)
		if err != nil {
			return nil, nil, err
		}
		sr, err := NewStreamReader(r, sh, dk, ectx)
		if err != nil {
			return nil, dk, err
		}
		pt, err := io.ReadAll(sr)
		return pt, dk, err
	}
	canon, err := CanonicalContext(ectx)
	if err != nil {
		return nil, nil, err
	}
	h, body, err := ParseHeader(ct)
	if err != nil {
		return nil, nil, err
	}
	dk, err := o.dataKey(ctx, h, ectx)
	if err != nil {
		return nil, nil, err
	}
	pt, err := dk.OpenCanonical(h, body, canon)
	return pt, dk, err
}

// FuzzOpen feeds arbitrary bytes and encryption contexts to the whole
// opening path — format byte, header or stream header, unwrap cache, key
// unwrapping under the right KEK, message or segment authentication — with
// real keys. It checks that nothing panics, that every refusal is one of
// the package's errors, that only a ciphertext the seeds sealed opens, and
// only under the context it was sealed with, to the plaintext it sealed;
// and that the OpenOwn fast path agrees with the full path whenever it
// claims a ciphertext.
func FuzzOpen(f *testing.F) {
	gs := genuineCiphertexts(f)
	want := map[string]genuine{}
	for _, g := range gs {
		want[string(g.ct)] = g
		f.Add(g.ct, g.ectx)
	}
	f.Add([]byte{FormatV1}, "")
	f.Add(gs[0].ct[:len(gs[0].ct)-1], "")
	f.Add(gs[3].ct, "tenant=43")
	f.Add(gs[5].ct[:len(gs[5].ct)-TagSize-1], "tenant=42")
	o := &opener{keys: openKeys(), cache: NewCache(16, time.Hour, nil)}
	for i, g := range gs {
		if pt, _, err := o.open(f.Context(), g.ct, parseFuzzContext(g.ectx)); err != nil || !bytes.Equal(pt, g.plaintext) {
			f.Fatalf("genuine ciphertext %d does not open: %d bytes, %v", i, len(pt), err)
		}
	}
	f.Fuzz(func(t *testing.T, ct []byte, ectxText string) {
		ectx := parseFuzzContext(ectxText)
		pt, dk, err := o.open(t.Context(), ct, ectx)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrContext) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("open error %v is none of ErrMalformed, ErrDecrypt, ErrContext, ErrTruncated", err)
			}
		} else {
			g, ok := want[string(ct)]
			if !ok {
				t.Fatalf("opened a ciphertext that was not sealed (%d bytes) under context %q", len(ct), ectxText)
			}
			wc, _ := CanonicalContext(parseFuzzContext(g.ectx))
			gc, _ := CanonicalContext(ectx)
			if !bytes.Equal(wc, gc) {
				t.Fatalf("opened a ciphertext sealed under context %q with context %q", g.ectx, ectxText)
			}
			if !bytes.Equal(pt, g.plaintext) {
				t.Fatalf("opened to %d bytes, want the %d it sealed", len(pt), len(g.plaintext))
			}
		}
		// The fast path a Decryptor takes with the data key of its last
		// message must agree with the full path on every message it claims.
		canon, cerr := CanonicalContext(ectx)
		if dk == nil || cerr != nil || IsStream(ct) {
			return
		}
		fpt, own, ferr := dk.OpenOwn(ct, canon)
		if !own {
			if err == nil {
				t.Fatal("OpenOwn did not claim a message its data key opens")
			}
			return
		}
		if (ferr == nil) != (err == nil) || !bytes.Equal(fpt, pt) {
			t.Fatalf("OpenOwn = %d bytes, %v; full path = %d bytes, %v", len(fpt), ferr, len(pt), err)
		}
	})
}
