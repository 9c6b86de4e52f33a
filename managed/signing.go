package managed

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"math/big"

	"github.com/keybroker/keybroker/secret"
)

// ecdsaLabel is the HKDF info that turns material into a P-256 scalar.
// Changing it changes every ECDSA key.
const ecdsaLabel = "keybroker/v1/ecdsa-p256"

// SigningKey turns 32 bytes of material into the version's private key:
// the Ed25519 seed itself, or for ECDSA P-256 a scalar from HKDF-SHA256 with
// 64 extra bits reduced mod n-1, plus 1 (FIPS 186-5 A.2.1), so any material
// gives a valid key.
func SigningKey(t KeyType, material *secret.Bytes) (crypto.Signer, error) {
	if material.Len() != 32 {
		return nil, fmt.Errorf("managed: material is %d bytes", material.Len())
	}
	switch t {
	case Ed25519:
		return ed25519.NewKeyFromSeed(material.Reveal()), nil
	case ECDSAP256:
		extra, err := hkdf.Key(sha256.New, material.Reveal(), nil, ecdsaLabel, 40)
		if err != nil {
			return nil, err
		}
		defer clear(extra)
		n := elliptic.P256().Params().N
		d := new(big.Int).SetBytes(extra)
		d.Mod(d, new(big.Int).Sub(n, big.NewInt(1)))
		d.Add(d, big.NewInt(1))
		raw := d.FillBytes(make([]byte, 32))
		defer clear(raw)
		return ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
	}
	return nil, fmt.Errorf("managed: %s keys do not sign", t)
}
