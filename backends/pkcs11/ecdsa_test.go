package pkcs11

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"testing"
)

func TestECDSADER(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("message"))
	der, err := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	// Turn Go's DER signature into the raw r‖s CKM_ECDSA returns (with
	// leading zeros where r or s is short) and back.
	var rs struct{ R, S []byte }
	var sig struct{ R, S asn1.RawValue }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		t.Fatal(err)
	}
	rs.R, rs.S = bytes.TrimLeft(sig.R.Bytes, "\x00"), bytes.TrimLeft(sig.S.Bytes, "\x00")
	raw := make([]byte, 64)
	copy(raw[32-len(rs.R):32], rs.R)
	copy(raw[64-len(rs.S):], rs.S)
	got, err := ecdsaDER(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(&priv.PublicKey, digest[:], got) {
		t.Errorf("ecdsaDER(raw) = %x does not verify", got)
	}
	// Short r: a leading zero byte must not become a negative INTEGER.
	short := make([]byte, 64)
	short[1], short[33] = 0x80, 0xff
	out, err := ecdsaDER(short)
	if err != nil {
		t.Fatal(err)
	}
	var back struct{ R, S asn1.RawValue }
	if _, err := asn1.Unmarshal(out, &back); err != nil || back.R.Bytes[0] != 0 || back.S.Bytes[0] != 0 {
		t.Errorf("ecdsaDER kept high bits unpadded: %x", out)
	}
	for _, n := range []int{0, 63, 65, 96} {
		if _, err := ecdsaDER(make([]byte, n)); err == nil {
			t.Errorf("ecdsaDER(%d bytes) succeeded, want an error", n)
		}
	}
}

func TestParseECPoint(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := priv.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	der, _ := asn1.Marshal(point)
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"DER octet string", der, true},
		{"bare point", point, true},
		{"compressed", append([]byte{2}, point[1:33]...), false},
		{"not on curve", append([]byte{4}, make([]byte, 64)...), false},
		{"truncated", der[:40], false},
		{"empty", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := parseECPoint(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("parseECPoint = %v, %v; want ok=%v", pub, err, tc.ok)
			}
			if tc.ok && !pub.Equal(&priv.PublicKey) {
				t.Errorf("parseECPoint returned another key")
			}
		})
	}
}

func TestIsP256(t *testing.T) {
	name, _ := asn1.MarshalWithParams("prime256v1", "printable")
	p384 := []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}
	for _, tc := range []struct {
		in   []byte
		want bool
	}{{oidP256, true}, {name, true}, {p384, false}, {nil, false}} {
		if got := isP256(tc.in); got != tc.want {
			t.Errorf("isP256(%x) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
