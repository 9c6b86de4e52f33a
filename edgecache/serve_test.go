package edgecache

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
)

// TestServeLocally serves an edge over gRPC, as the edge process does, and
// checks that what it does locally is interchangeable with the central
// tier: same ciphertext format, same MACs, signatures central verifies.
func TestServeLocally(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "per-tenant", Type: aes256, Mode: wrap, Derived: true, Labels: appLabels, Placement: `principal.region == "eu"`},
		&kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "signer", Type: ecdsaP256, Mode: wrap, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "hsm", Type: aes256, Mode: backend, RootKey: "softkms:hsm-aes", Labels: appLabels},
	)
	for _, prefetch := range []bool{true, false} {
		name := map[bool]string{true: "prefetch", false: "fetch on use"}[prefetch]
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			id := map[bool]string{true: "edge-eu-1", false: "edge-eu-2"}[prefetch]
			cfg := edgeConfig(t, c, id, t.TempDir())
			cfg.Prefetch = prefetch
			ec := open(t, cfg)
			startRun(t, ec)
			synced(t, c, ec)
			srv := serveEdge(t, c, ec)
			edge, edgeAdmin := srv.kb(t, identity.Client, "app"), srv.admin(t)
			ectx := map[string]string{"tenant": "7"}

			for _, key := range []string{"shared", "per-tenant"} {
				// Edge → central.
				enc, err := edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: []byte("from the edge"), EncryptionContext: ectx})
				must(t, "Encrypt "+key+" at the edge", err)
				dec, err := c.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx})
				if err != nil || string(dec.GetPlaintext()) != "from the edge" {
					t.Errorf("%s: central Decrypt of the edge's ciphertext = %q, %v", key, dec.GetPlaintext(), err)
				}
				// Central → edge.
				cenc, err := c.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: []byte("from central"), EncryptionContext: ectx})
				must(t, "Encrypt "+key+" at central", err)
				dec, err = edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: cenc.GetCiphertext(), EncryptionContext: ectx})
				if err != nil || string(dec.GetPlaintext()) != "from central" {
					t.Errorf("%s: edge Decrypt of central's ciphertext = %q, %v", key, dec.GetPlaintext(), err)
				}
				// The context is bound at the edge as at central.
				_, err = edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: cenc.GetCiphertext(), EncryptionContext: map[string]string{"tenant": "8"}})
				if status.Code(err) != codes.InvalidArgument {
					t.Errorf("%s: edge Decrypt with the wrong context = %v, want InvalidArgument", key, err)
				}
				// Same format: both headers name the key and version.
				eh, _, err := envelope.ParseHeader(enc.GetCiphertext())
				must(t, "parsing the edge's ciphertext", err)
				ch, _, err := envelope.ParseHeader(cenc.GetCiphertext())
				must(t, "parsing central's ciphertext", err)
				if eh.KeyID != key || eh.Version != 1 || ch.KeyID != eh.KeyID || ch.Version != eh.Version {
					t.Errorf("%s: edge header names %s v%d, central's %s v%d", key, eh.KeyID, eh.Version, ch.KeyID, ch.Version)
				}
			}

			// A data key generated at the edge opens at central.
			dk, err := edge.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "shared", EncryptionContext: ectx})
			must(t, "GenerateDataKey at the edge", err)
			dec, err := c.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: dk.GetEncryptedDataKey(), EncryptionContext: ectx})
			if err != nil || !bytes.Equal(dec.GetPlaintext(), dk.GetPlaintext()) || len(dk.GetPlaintext()) != 32 {
				t.Errorf("central Decrypt of the edge's encrypted data key: %v (lengths %d, %d)", err, len(dec.GetPlaintext()), len(dk.GetPlaintext()))
			}

			// HMAC is deterministic: both tiers compute the same tag.
			emac, err := edge.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
			must(t, "GenerateMac at the edge", err)
			cmac, err := c.kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
			must(t, "GenerateMac at central", err)
			if !bytes.Equal(emac.GetMac(), cmac.GetMac()) {
				t.Errorf("MAC at the edge %x, at central %x", emac.GetMac(), cmac.GetMac())
			}
			vm, err := edge.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "tags", Message: []byte("m"), Mac: cmac.GetMac()})
			if err != nil || !vm.GetValid() {
				t.Errorf("edge VerifyMac of central's tag = %v, %v", vm.GetValid(), err)
			}

			// A signature made at the edge verifies at central and with the
			// standard library against central's public key.
			sig, err := edge.Sign(ctx, &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
			must(t, "Sign at the edge", err)
			vs, err := c.kb.Verify(ctx, &kbv1.VerifyRequest{KeyId: "signer", Input: &kbv1.VerifyRequest_Message{Message: []byte("m")}, Signature: sig.GetSignature()})
			if err != nil || !vs.GetValid() {
				t.Errorf("central Verify of the edge's signature = %v, %v", vs.GetValid(), err)
			}
			pub, err := c.kb.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: "signer"})
			must(t, "GetPublicKey at central", err)
			pk, err := x509.ParsePKIXPublicKey(pub.GetPublicKey())
			must(t, "parsing the public key", err)
			digest := sha256.Sum256([]byte("m"))
			if ecPub, ok := pk.(*ecdsa.PublicKey); !ok || !ecdsa.VerifyASN1(ecPub, digest[:], sig.GetSignature()) {
				t.Error("the edge's signature does not verify with crypto/ecdsa")
			}

			// Nothing above was forwarded; only a fetching edge fetched, once
			// per key version it used.
			s := ec.Stats()
			wantFetches := map[bool]uint64{true: 0, false: 4}[prefetch]
			if s.Forwards != 0 || s.Fetches != wantFetches {
				t.Errorf("after local operations: %d forwards, %d fetches; want 0, %d", s.Forwards, s.Fetches, wantFetches)
			}

			// DescribeKey is answered from the replica, the same as central's.
			for _, key := range []string{"shared", "per-tenant", "hsm"} {
				got, err := edge.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: key})
				must(t, "DescribeKey at the edge", err)
				if diff := cmp.Diff(describe(t, c, key), got.GetKey(), protocmp.Transform()); diff != "" {
					t.Errorf("DescribeKey(%s) at the edge (-central +edge):\n%s", key, diff)
				}
			}

			// Backend-mode keys and admin calls are forwarded as the caller.
			enc, err := edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("hsm")})
			must(t, "Encrypt hsm at the edge", err)
			dec, err = c.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
			if err != nil || string(dec.GetPlaintext()) != "hsm" {
				t.Errorf("central Decrypt of a forwarded backend-mode Encrypt = %q, %v", dec.GetPlaintext(), err)
			}
			nodes, err := edgeAdmin.ListNodes(ctx, &kbv1.ListNodesRequest{})
			if err != nil || len(nodes.GetNodes()) < 2 {
				t.Errorf("ListNodes through the edge = %v, %v", nodes, err)
			}
			if s := ec.Stats(); s.Forwards != 2 {
				t.Errorf("forwards = %d, want 2 (Encrypt hsm, ListNodes)", s.Forwards)
			}
			var forwarded bool
			for _, r := range c.auditLines(t) {
				if r.Operation == "Encrypt" && r.Key == "hsm" && r.Via == id && r.Principal == app.String() && r.Outcome == "ok" {
					forwarded = true
				}
			}
			if !forwarded {
				t.Errorf("central has no audit line for the Encrypt of hsm forwarded by %s as %s", id, app)
			}
			// The replicated policy applies at the edge: another client is
			// refused there, and nothing reaches central.
			_, err = srv.kb(t, identity.Client, "stranger").Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("x")})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("Encrypt by a client the policy keeps away = %v, want PermissionDenied", err)
			}
			if s := ec.Stats(); s.Forwards != 2 {
				t.Errorf("forwards after a refused call = %d, want still 2", s.Forwards)
			}
		})
	}
}
