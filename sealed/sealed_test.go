package sealed

import (
	"bytes"
	"errors"
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

func FuzzOpen(f *testing.F) {
	edge, _ := GenerateKey()
	blob, _ := Seal(edge.PublicKey(), "e", "k", 1, secret.Copy(bytes.Repeat([]byte{1}, 32)))
	f.Add(blob)
	f.Add([]byte{1, 0x64, 0x7a, 0, 1, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := Open(edge, b, "e", "k", 1); err == nil && !bytes.Equal(b, blob) {
			t.Fatal("opened a blob that was not sealed")
		}
	})
}

func BenchmarkSealOpen(b *testing.B) {
	edge, _ := GenerateKey()
	m := secret.Copy(bytes.Repeat([]byte{1}, 32))
	pub := edge.PublicKey()
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
