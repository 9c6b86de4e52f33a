package forwardproof

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// FuzzParse feeds Parse what an edge might pass on as a client's proof.
// It must never panic, and nothing but the claims the key really signed
// may come out: the fuzzer holds no key, so every proof it accepts is the
// seed's, whatever else it changed around it (unknown fields, re-encoding).
func FuzzParse(f *testing.F) {
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	signed := Claims{Method: "/keybroker.v1.KeyBroker/Decrypt", Request: []byte("request"), Audience: "spiffe://kb.test/edge/e1",
		IssuedAt: time.Unix(1_800_000_000, 0)}
	raw, err := Sign(key, signed, bytes.NewReader(bytes.Repeat([]byte{1}, 64)))
	if err != nil {
		f.Fatal(err)
	}
	var good kbv1.ForwardProof
	if err := proto.Unmarshal(raw, &good); err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte{})
	f.Add(raw[:len(raw)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b, key.Public())
		if err != nil {
			return
		}
		var p kbv1.ForwardProof
		if err := proto.Unmarshal(b, &p); err != nil {
			t.Fatalf("Parse accepted %x, which does not decode: %v", b, err)
		}
		if !bytes.Equal(p.GetClaims(), good.GetClaims()) {
			t.Fatalf("Parse accepted claims nobody signed: %v", c)
		}
		if len(c.GetNonce()) != NonceSize || len(c.GetRequestSha256()) != 32 || c.GetIssuedAt() == nil {
			t.Fatalf("Parse accepted incomplete claims: %v", c)
		}
	})
}
