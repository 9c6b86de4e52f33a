package sealed

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/secret"
)

func TestSealOpen(t *testing.T) {
	edge, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	material := secret.Copy(bytes.Repeat([]byte{0x5a}, 32))
	blob, err := Seal(edge.PublicKey(), "edge-eu-1", "payments", 3, material)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, material.Reveal()) {
		t.Fatal("sealed blob contains the material")
	}
	got, err := Open(edge, blob, "edge-eu-1", "payments", 3)
	if err != nil || !got.Equal(material) {
		t.Fatalf("Open = %v, %v", got, err)
	}
	other, _ := GenerateKey()
	for _, tc := range []struct {
		name        string
		k           *PrivateKey
		edge, keyID string
		version     uint32
	}{
		{"another edge's key", other, "edge-eu-1", "payments", 3},
		{"another edge id", edge, "edge-us-1", "payments", 3},
		{"another key", edge, "edge-eu-1", "refunds", 3},
		{"another version", edge, "edge-eu-1", "payments", 4},
	} {
		if _, err := Open(tc.k, blob, tc.edge, tc.keyID, tc.version); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: err = %v, want ErrOpen", tc.name, err)
		}
	}
	for i := range blob {
		bad := bytes.Clone(blob)
		bad[i] ^= 1
		if _, err := Open(edge, bad, "edge-eu-1", "payments", 3); err == nil {
			t.Fatalf("byte %d flipped: opened", i)
		}
	}
	for _, n := range []int{0, 1, 7, 100, len(blob) - 1} {
		if _, err := Open(edge, blob[:n], "edge-eu-1", "payments", 3); err == nil {
			t.Errorf("truncated to %d: opened", n)
		}
	}
}

// TestSealKeepsParsedKeys checks Seal's cache of parsed public keys: each
// blob still opens for its own edge only, two blobs to one edge share no
// encapsulation, a key that does not parse is refused every time and not
// kept, concurrent Seals to one edge all open (run with -race), and the
// cache stays within maxRecipients.
func TestSealKeepsParsedKeys(t *testing.T) {
	a, _ := GenerateKey()
	b, _ := GenerateKey()
	m := secret.Copy(bytes.Repeat([]byte{7}, 32))
	var blobs [][]byte
	for _, to := range []*PrivateKey{a, a, b, a} {
		blob, err := Seal(to.PublicKey(), "e", "k", 1, m)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Open(to, blob, "e", "k", 1); err != nil || !got.Equal(m) {
			t.Fatalf("Open by its edge = %v, %v", got, err)
		}
		other := a
		if to == a {
			other = b
		}
		if _, err := Open(other, blob, "e", "k", 1); !errors.Is(err, ErrOpen) {
			t.Fatalf("Open by the other edge: err = %v, want ErrOpen", err)
		}
		blobs = append(blobs, blob)
	}
	// X25519's share is the last 32 bytes of the encapsulation, ML-KEM's
	// ciphertext the 1088 before it: both fresh for every blob.
	const enc = 1088 + 32
	if bytes.Equal(blobs[0][7:7+enc-32], blobs[1][7:7+enc-32]) || bytes.Equal(blobs[0][7+enc-32:7+enc], blobs[1][7+enc-32:7+enc]) {
		t.Fatal("two blobs sealed to one edge share an encapsulation")
	}

	bad := a.PublicKey()[:len(a.PublicKey())-1]
	for range 2 {
		if _, err := Seal(bad, "e", "k", 1, m); err == nil {
			t.Fatal("Seal to a truncated public key: no error")
		}
	}
	recipients.Lock()
	_, kept := recipients.m[string(bad)]
	recipients.Unlock()
	if kept {
		t.Fatal("a public key that does not parse was kept")
	}

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			blob, err := Seal(b.PublicKey(), "e", "k", 2, m)
			if err == nil {
				_, err = Open(b, blob, "e", "k", 2)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Seal: %v", err)
		}
	}

	for range maxRecipients + 1 {
		k, _ := GenerateKey()
		if _, err := Seal(k.PublicKey(), "e", "k", 1, m); err != nil {
			t.Fatal(err)
		}
	}
	recipients.Lock()
	n := len(recipients.m)
	recipients.Unlock()
	if n > maxRecipients || n == 0 {
		t.Fatalf("recipients holds %d keys, want 1..%d", n, maxRecipients)
	}
}

func TestKeyRoundTrip(t *testing.T) {
	edge, _ := GenerateKey()
	raw, err := edge.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s := raw.String(); s != "[REDACTED]" {
		t.Errorf("marshalled private key prints as %q", s)
	}
	back, err := ParsePrivateKey(raw.Reveal())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.PublicKey(), edge.PublicKey()) {
		t.Error("public key changed across Marshal/ParsePrivateKey")
	}
	blob, _ := Seal(edge.PublicKey(), "e", "k", 1, secret.Copy([]byte("material-material-material-32byt")))
	if _, err := Open(back, blob, "e", "k", 1); err != nil {
		t.Errorf("reloaded key does not open: %v", err)
	}
	for _, bad := range [][]byte{nil, {0}, {0xff, 0xff, 1, 2, 3}, append([]byte{0x64, 0x7a}, 1, 2, 3)} {
		if _, err := ParsePrivateKey(bad); err == nil {
			t.Errorf("ParsePrivateKey(%x) succeeded", bad)
		}
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%x) succeeded", bad)
		}
	}
	if _, err := Seal([]byte{1}, "e", "k", 1, secret.Copy([]byte("x"))); err == nil {
		t.Error("Seal to a malformed public key succeeded")
	}
}

// fuzzEdgeKey is a fixed sealing key (the KEM id of MLKEM768-X25519 and
// a 32-byte seed), so that blobs sealed to it in testdata/fuzz open in
// every run.
func fuzzEdgeKey(tb testing.TB) *PrivateKey {
	tb.Helper()
	k, err := ParsePrivateKey(append([]byte{0x64, 0x7a}, bytes.Repeat([]byte{0x5e}, 32)...))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// fuzzMaterial is the only material FuzzOpen's seeds seal.
var fuzzMaterial = bytes.Repeat([]byte{1}, 32)

// FuzzOpen checks Open on any blob: no panic; refusals are ErrMalformed or
// ErrOpen; and what opens is the material the seeds sealed, and opens for
// no other edge, key or version, nor with its last byte changed.
func FuzzOpen(f *testing.F) {
	edge := fuzzEdgeKey(f)
	blob, err := Seal(edge.PublicKey(), "e", "k", 1, secret.Copy(fuzzMaterial))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Add(blob[:len(blob)-1])
	f.Add(blob[:8])
	f.Add([]byte{1, 0x64, 0x7a, 0, 1, 0, 2})
	f.Add([]byte{1, 0x64, 0x7a, 0xff, 0xff, 0, 2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Open(edge, b, "e", "k", 1)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrOpen) {
				t.Fatalf("Open error %v is neither ErrMalformed nor ErrOpen", err)
			}
			return
		}
		if !bytes.Equal(m.Reveal(), fuzzMaterial) {
			t.Fatal("opened a blob that was not sealed")
		}
		for _, other := range []struct {
			edge, key string
			version   uint32
		}{{"f", "k", 1}, {"e", "l", 1}, {"e", "k", 2}, {"e\x00k", "", 1}} {
			if _, err := Open(edge, b, other.edge, other.key, other.version); err == nil {
				t.Fatalf("a blob for e/k/1 opened for %+v", other)
			}
		}
		bad := bytes.Clone(b)
		bad[len(bad)-1] ^= 1
		if _, err := Open(edge, bad, "e", "k", 1); err == nil {
			t.Fatal("opened with its last byte changed")
		}
	})
}

// FuzzParsePrivateKey checks the decoder of sealing.key, read from an
// edge's disk: no panic; an accepted key marshals to a stable form (the
// same bytes for the default suite) naming the same key, and opens what is
// sealed to its public key.
func FuzzParsePrivateKey(f *testing.F) {
	edge := fuzzEdgeKey(f)
	raw, err := edge.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(bytes.Clone(raw.Reveal()))
	f.Add([]byte{0x64, 0x7a, 1, 2, 3})
	f.Add(append([]byte{0x00, 0x20}, bytes.Repeat([]byte{7}, 32)...)) // DHKEM(X25519)
	f.Add(append([]byte{0x00, 0x10}, bytes.Repeat([]byte{7}, 32)...)) // DHKEM(P-256)
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParsePrivateKey(b)
		if err != nil {
			return
		}
		enc, err := k.Marshal()
		if err != nil {
			t.Fatalf("an accepted key does not marshal: %v", err)
		}
		// DHKEM(X25519) keys come back clamped; the marshalled form must
		// then be stable and name the same key.
		k2, err := ParsePrivateKey(enc.Reveal())
		if err != nil {
			t.Fatalf("a marshalled key does not parse: %v", err)
		}
		enc2, err := k2.Marshal()
		if err != nil || !bytes.Equal(enc2.Reveal(), enc.Reveal()) || !bytes.Equal(k2.PublicKey(), k.PublicKey()) {
			t.Fatalf("key %x: marshalled form is not stable (%v)", b, err)
		}
		if bytes.HasPrefix(b, []byte{0x64, 0x7a}) && !bytes.Equal(enc.Reveal(), b) {
			t.Fatalf("key %x marshals back to %x", b, enc.Reveal())
		}
		blob, err := Seal(k.PublicKey(), "e", "k", 1, secret.Copy(fuzzMaterial))
		if err != nil {
			t.Fatalf("Seal to an accepted key's public key: %v", err)
		}
		if m, err := Open(k, blob, "e", "k", 1); err != nil || !bytes.Equal(m.Reveal(), fuzzMaterial) {
			t.Fatalf("an accepted key does not open what is sealed to it: %v", err)
		}
	})
}

// FuzzParsePublicKey checks the decoder of the public key an edge
// registers with the central tier: no panic; an accepted key encodes back
// to the same bytes and can be sealed to.
func FuzzParsePublicKey(f *testing.F) {
	f.Add(fuzzEdgeKey(f).PublicKey())
	f.Add([]byte{0x64, 0x7a, 1, 2, 3})
	f.Add(append([]byte{0x00, 0x20}, bytes.Repeat([]byte{9}, 32)...))
	f.Add(append([]byte{0x00, 0x10, 4}, bytes.Repeat([]byte{9}, 64)...))
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := ParsePublicKey(b)
		if err != nil {
			if _, serr := Seal(b, "e", "k", 1, secret.Copy(fuzzMaterial)); serr == nil {
				t.Fatal("Seal accepted a public key ParsePublicKey refuses")
			}
			return
		}
		if enc := append(binary.BigEndian.AppendUint16(nil, pub.KEM().ID()), pub.Bytes()...); !bytes.Equal(enc, b) {
			t.Fatalf("public key %x encodes back to %x", b, enc)
		}
		if _, err := Seal(b, "e", "k", 1, secret.Copy(fuzzMaterial)); err != nil {
			t.Fatalf("Seal to an accepted public key: %v", err)
		}
	})
}

func BenchmarkSealOpen(b *testing.B) {
	edge, _ := GenerateKey()
	m := secret.Copy(bytes.Repeat([]byte{1}, 32))
	pub := edge.PublicKey()
	b.Run("ParsePublicKey", func(b *testing.B) {
		for b.Loop() {
			if _, err := ParsePublicKey(pub); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := Seal(pub, "e", "k", 1, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	blob, _ := Seal(pub, "e", "k", 1, m)
	b.Run("Open", func(b *testing.B) {
		for b.Loop() {
			if _, err := Open(edge, blob, "e", "k", 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestSigningKeyDomain: a sealed signing key opens only for its edge,
// access key and scope, and never as material (nor material as a signing
// key), however the names are chosen.
func TestSigningKeyDomain(t *testing.T) {
	edge, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	key := secret.Copy(bytes.Repeat([]byte{0x33}, 32))
	scope := SigningScope{AccessKeyID: "KBAKAAAAAAAAAAAAAAAA", Date: "20261207", Region: "us-east-1", Service: "kms"}
	blob, err := SealSigningKey(edge.PublicKey(), "edge-us", scope, key)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := OpenSigningKey(edge, blob, "edge-us", scope); err != nil || !got.Equal(key) {
		t.Fatalf("OpenSigningKey = %v, %v", got, err)
	}
	for name, s := range map[string]SigningScope{
		"another access key": {"KBAKBBBBBBBBBBBBBBBB", scope.Date, scope.Region, scope.Service},
		"another day":        {scope.AccessKeyID, "20261208", scope.Region, scope.Service},
		"another region":     {scope.AccessKeyID, scope.Date, "eu-west-1", scope.Service},
		"another service":    {scope.AccessKeyID, scope.Date, scope.Region, "kms-xks-proxy"},
	} {
		if _, err := OpenSigningKey(edge, blob, "edge-us", s); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: %v, want ErrOpen", name, err)
		}
	}
	if _, err := OpenSigningKey(edge, blob, "edge-eu", scope); !errors.Is(err, ErrOpen) {
		t.Errorf("another edge: %v, want ErrOpen", err)
	}
	// Material sealed under names spelling the signing key's info string
	// still does not open as a signing key, and the reverse.
	m, err := Seal(edge.PublicKey(), "edge-us", "KBAKAAAAAAAAAAAAAAAA", 20261207, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSigningKey(edge, m, "edge-us", scope); !errors.Is(err, ErrOpen) {
		t.Errorf("material opened as a signing key: %v", err)
	}
	if _, err := Open(edge, blob, "edge-us", "KBAKAAAAAAAAAAAAAAAA", 20261207); !errors.Is(err, ErrOpen) {
		t.Errorf("a signing key opened as material: %v", err)
	}
}
