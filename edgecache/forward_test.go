package edgecache

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
)

// TestEdgeForwardsSignedCallsWhole: an edge forwards a call only with the
// client's proof — asking for one, with the RequiredTrailer, when it has
// none — and forwards batches and ReEncrypt whole, as the client signed
// them, when any part must go to the central tier.
func TestEdgeForwardsSignedCallsWhole(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
		&kbv1.CreateKeyRequest{KeyId: "hsm", Type: aes256, Mode: backend, RootKey: "softkms:hsm-aes", Labels: appLabels},
	)
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir()))
	startRun(t, ec)
	synced(t, c, ec)
	srv := serveEdge(t, c, ec)
	ctx := t.Context()

	// A client that does not sign: the edge asks for a proof and forwards
	// nothing.
	var tr metadata.MD
	raw := dialSigning(t, c.ca, srv.dir, c.caFile, srv.addr, app, false)
	_, err := kbv1.NewKeyBrokerClient(raw).Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")}, grpc.Trailer(&tr))
	if status.Code(err) != codes.FailedPrecondition || len(tr.Get(forwardproof.RequiredTrailer)) != 1 {
		t.Fatalf("an unsigned call the edge must forward = %v (trailer %v), want FailedPrecondition asking for a proof", err, tr)
	}
	if s := ec.Stats(); s.Forwards != 0 {
		t.Errorf("the edge forwarded %d unsigned calls, want 0", s.Forwards)
	}
	// Local calls need no proof.
	if _, err := kbv1.NewKeyBrokerClient(raw).Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("x")}); err != nil {
		t.Errorf("an unsigned local call: %v", err)
	}

	// A signing client: a batch mixing a local and a forwarded key goes
	// whole to the central tier, once, as the client.
	kb := srv.kb(t, identity.Client, "app")
	before := ec.Stats().Forwards
	resp, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{Items: []*kbv1.EncryptRequest{
		{KeyId: "shared", Plaintext: []byte("a")}, {KeyId: "hsm", Plaintext: []byte("b")},
	}})
	if err != nil || len(resp.GetResults()) != 2 || resp.Results[0].GetError() != nil || resp.Results[1].GetError() != nil {
		t.Fatalf("BatchEncrypt through the edge = %v, %v", resp, err)
	}
	if got := ec.Stats().Forwards - before; got != 1 {
		t.Errorf("the batch made %d forwards, want 1 (the whole call)", got)
	}
	var items int
	for _, r := range c.auditLines(t) {
		if r.Via == "edge-eu-1" && r.Operation == "Encrypt" && r.Principal == app.String() && r.Outcome == "ok" {
			items++
		}
	}
	if items != 2 {
		t.Errorf("central audited %d forwarded batch items as the app, want 2", items)
	}
	// ReEncrypt from a local key to a forwarded one, whole.
	ct := resp.Results[0].GetResponse().GetCiphertext()
	re, err := kb.ReEncrypt(ctx, &kbv1.ReEncryptRequest{Ciphertext: ct, DestinationKeyId: "hsm"})
	if err != nil || re.GetKeyId() != "hsm" {
		t.Fatalf("ReEncrypt shared → hsm through the edge = %v, %v", re, err)
	}
	dec, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: re.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "a" {
		t.Errorf("Decrypt of the re-encrypted ciphertext = %q, %v", dec.GetPlaintext(), err)
	}
	// Admin calls through the edge carry the admin's proof.
	if _, err := srv.admin(t).ListNodes(ctx, &kbv1.ListNodesRequest{}); err != nil {
		t.Errorf("ListNodes through the edge: %v", err)
	}
}
