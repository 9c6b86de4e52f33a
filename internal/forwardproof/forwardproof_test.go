package forwardproof

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

func TestSignParse(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req, err := Marshal(&kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("p"), EncryptionContext: map[string]string{"b": "2", "a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"ecdsa", ec}, {"ed25519", ed}, {"rsa-pss", rs}} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := Sign(tc.key, Claims{Method: "/keybroker.v1.KeyBroker/Encrypt", Request: req, Audience: "spiffe://kb.test/edge/e1", IssuedAt: at}, nil)
			if err != nil {
				t.Fatal(err)
			}
			c, err := Parse(raw, tc.key.Public())
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			sum := sha256.Sum256(req)
			if c.GetMethod() != "/keybroker.v1.KeyBroker/Encrypt" || c.GetAudience() != "spiffe://kb.test/edge/e1" ||
				string(c.GetRequestSha256()) != string(sum[:]) || !c.GetIssuedAt().AsTime().Equal(at) || len(c.GetNonce()) != NonceSize {
				t.Errorf("claims = %v", c)
			}
			if _, err := Parse(raw, other.Public()); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Parse with another key = %v, want ErrBadSignature", err)
			}
			// Changing one claim breaks the signature.
			var p kbv1.ForwardProof
			_ = proto.Unmarshal(raw, &p)
			var cl kbv1.ForwardProofClaims
			_ = proto.Unmarshal(p.Claims, &cl)
			cl.Audience = "spiffe://kb.test/edge/e2"
			p.Claims, _ = Marshal(&cl)
			forged, _ := proto.Marshal(&p)
			if _, err := Parse(forged, tc.key.Public()); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Parse of a re-addressed proof = %v, want ErrBadSignature", err)
			}
		})
	}
	if _, err := Parse([]byte{0xff, 0xff}, ec.Public()); err == nil {
		t.Error("Parse of garbage succeeded")
	}
}
