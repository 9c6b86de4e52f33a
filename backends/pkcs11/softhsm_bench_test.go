package pkcs11_test

import (
	"crypto/rand"
	"crypto/sha256"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends/backendtest"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// The pkcs11 backend is measured with the standard backend benchmarks, and
// against a raw miekg/pkcs11 loop on the same token and the same keys (token
// objects created by the backend): the ceiling the backend's pool, key
// cache, checks and metrics are measured against.
//
//	go test -run '^$' -bench . -benchtime 2s ./backends/pkcs11/

// benchMsg and benchPT match backendtest.Bench: a 32-byte plaintext, the
// message as aad, its SHA-256 as the digest.
var benchMsg = []byte("keybroker/v1/material\x00bench\x00\x00\x00\x01")

func BenchmarkPKCS11(b *testing.B) {
	tok := softhsmtest.New(b)
	be := newBackend(b, tok, nil)
	k := createKeys(b, be)
	backendtest.Bench(b, &backendtest.Fixture{
		Backend: be, AES: k.aes, AES2: k.aes2, HMAC: k.hmac, HMAC2: k.hmac2, ECDSA: k.ecdsa, Unknown: "no-such-key",
	})
}

func BenchmarkRawMiekg(b *testing.B) {
	tok := softhsmtest.New(b)
	be := newBackend(b, tok, nil) // creates the keys exactly as the backend does
	k := createKeys(b, be)
	r := newRaw(b, tok)
	pt := make([]byte, 32)
	digest := sha256.Sum256(benchMsg)

	// One raw operation on session h, as a correct caller must do it (a
	// fresh random IV per encryption).
	type rawOp func(h p11.SessionHandle, key p11.ObjectHandle) error
	encrypt := func(h p11.SessionHandle, key p11.ObjectHandle) error {
		iv := make([]byte, 12)
		_, _ = rand.Read(iv)
		params := p11.NewGCMParams(iv, benchMsg, 128)
		defer params.Free()
		if err := r.p.EncryptInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
			return err
		}
		_, err := r.p.Encrypt(h, pt)
		return err
	}
	mac := func(h p11.SessionHandle, key p11.ObjectHandle) error {
		if err := r.p.SignInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_SHA256_HMAC, nil)}, key); err != nil {
			return err
		}
		_, err := r.p.Sign(h, benchMsg)
		return err
	}
	sign := func(h p11.SessionHandle, key p11.ObjectHandle) error {
		if err := r.p.SignInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_ECDSA, nil)}, key); err != nil {
			return err
		}
		_, err := r.p.Sign(h, digest[:])
		return err
	}
	for _, o := range []struct {
		name  string
		label string
		class uint
		op    rawOp
	}{
		{"Encrypt32B", k.aes, p11.CKO_SECRET_KEY, encrypt},
		{"MAC", k.hmac, p11.CKO_SECRET_KEY, mac},
		{"Sign", k.ecdsa, p11.CKO_PRIVATE_KEY, sign},
	} {
		b.Run(o.name, func(b *testing.B) {
			h := r.session(b, tok.PIN)
			key := r.find(b, h, o.label, o.class)
			if o.name == "Encrypt32B" {
				b.SetBytes(int64(len(pt)))
			}
			for b.Loop() {
				if err := o.op(h, key); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(o.name+"Parallel", func(b *testing.B) {
			h0 := r.session(b, tok.PIN)
			key := r.find(b, h0, o.label, o.class)
			b.RunParallel(func(pb *testing.PB) {
				h, err := r.p.OpenSession(r.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
				if err != nil {
					b.Error(err)
					return
				}
				defer r.p.CloseSession(h)
				for pb.Next() {
					if err := o.op(h, key); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
