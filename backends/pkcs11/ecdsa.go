package pkcs11

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// oidP256 is the DER encoding of the OID 1.2.840.10045.3.1.7 (prime256v1),
// the CKA_EC_PARAMS of a P-256 key.
var oidP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// isP256 reports whether CKA_EC_PARAMS names P-256, by OID or (as some
// modules return) by the printable name.
func isP256(params []byte) bool {
	if bytes.Equal(params, oidP256) {
		return true
	}
	var name string
	if _, err := asn1.Unmarshal(params, &name); err == nil {
		return name == "prime256v1" || name == "secp256r1" || name == "P-256"
	}
	return false
}

// ecdsaDER converts a raw CKM_ECDSA signature (r‖s, each 32 bytes for
// P-256) into the ASN.1 DER form crypto/ecdsa and X.509 use.
func ecdsaDER(raw []byte) ([]byte, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("CKM_ECDSA returned %d bytes, want 64 for P-256", len(raw))
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(raw[:32]),
		new(big.Int).SetBytes(raw[32:]),
	})
}

// parseECPoint decodes CKA_EC_POINT of a P-256 public key. PKCS#11 v2.40
// specifies a DER OCTET STRING around the uncompressed point (SoftHSM does
// that); some modules return the bare point, which is accepted too.
func parseECPoint(v []byte) (*ecdsa.PublicKey, error) {
	point := v
	if len(v) != 65 { // 65 bytes is already a bare point; DER adds two
		var inner []byte
		if rest, err := asn1.Unmarshal(v, &inner); err == nil && len(rest) == 0 {
			point = inner
		}
	}
	if len(point) != 65 || point[0] != 4 {
		return nil, errors.New("CKA_EC_POINT is not an uncompressed P-256 point")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT: %w", err)
	}
	return pub, nil
}
