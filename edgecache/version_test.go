package edgecache

import (
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// TestNewerVersionForwarded: a ciphertext or MAC under a version the
// edge's replica has not heard of yet (another edge applied a rotation
// first and used it) is answered by the central tier through the edge,
// not refused with NotFound.
func TestNewerVersionForwarded(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
	)
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir()))
	run := startRun(t, ec)
	synced(t, c, ec)
	srv := serveEdge(t, c, ec)
	edge := srv.kb(t, identity.Client, "app")
	ctx := t.Context()

	// The edge stops hearing from central (its lease and max_staleness
	// keep it serving); central rotates both keys and uses version 2.
	run.stop(t)
	for _, id := range []string{"shared", "tags"} {
		if _, err := c.admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: id}); err != nil {
			t.Fatal(err)
		}
	}
	enc, err := c.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v2")})
	must(t, "Encrypt at central", err)
	mac, err := c.kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
	must(t, "GenerateMac at central", err)
	if enc.GetKeyVersion() != 2 || mac.GetKeyVersion() != 2 {
		t.Fatalf("central used versions %d and %d, want 2", enc.GetKeyVersion(), mac.GetKeyVersion())
	}
	before := ec.Stats().Forwards

	dec, err := edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "v2" || dec.GetKeyVersion() != 2 {
		t.Errorf("edge Decrypt under a version it has not replicated = %q v%d, %v", dec.GetPlaintext(), dec.GetKeyVersion(), err)
	}
	vm, err := edge.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "tags", KeyVersion: mac.GetKeyVersion(), Message: []byte("m"), Mac: mac.GetMac()})
	if err != nil || !vm.GetValid() {
		t.Errorf("edge VerifyMac under a version it has not replicated = %v, %v", vm.GetValid(), err)
	}
	if got := ec.Stats().Forwards - before; got != 2 {
		t.Errorf("%d calls forwarded, want the 2", got)
	}
	// What the edge knows it still serves itself.
	old, err := edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v1")})
	if err != nil || old.GetKeyVersion() != 1 {
		t.Fatalf("edge Encrypt = v%d, %v; want its replica's version 1", old.GetKeyVersion(), err)
	}
	if _, err := edge.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: old.GetCiphertext()}); err != nil {
		t.Errorf("edge Decrypt of its own ciphertext: %v", err)
	}
	if got := ec.Stats().Forwards - before; got != 2 {
		t.Errorf("%d calls forwarded after local ones, want still 2", got)
	}
}
