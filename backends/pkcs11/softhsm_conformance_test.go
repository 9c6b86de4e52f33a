package pkcs11_test

import (
	"testing"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// TestConformance runs the backend conformance suite against the pkcs11
// backend on a fresh SoftHSM2 token, opened through its URI.
func TestConformance(t *testing.T) {
	tok := softhsmtest.New(t)
	var k *keys
	newName := nameGen("created")
	backendtest.Run(t, func(t *testing.T) *backendtest.Fixture {
		b, err := pkcs11.Open(t.Context(), tok.URI(""), backends.Options{})
		if err != nil {
			t.Fatalf("Open(%q) error: %v", tok.URI(""), err)
		}
		if k == nil { // the first backend creates the keys the others share
			created := createKeys(t, b.(*pkcs11.Backend))
			k = &created
		}
		return &backendtest.Fixture{
			Backend: b,
			AES:     k.aes, AES2: k.aes2,
			HMAC: k.hmac, HMAC2: k.hmac2,
			ECDSA:   k.ecdsa,
			Unknown: "no-such-key",
			Caps: backends.Capabilities{
				MAC: true, Sign: true, DataKey: true, Create: true, Health: true,
				Creates: []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256},
			},
			NewName: newName,
		}
	})
}
