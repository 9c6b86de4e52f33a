package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/sealed"
)

func TestRegisterEdge(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	edge := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-eu-1"))
	req := &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Region: "eu", Address: "10.1.2.3:7443", Labels: map[string]string{"pci": "yes"}}
	resp, err := edge.Register(ctx, req)
	if err != nil || resp.CentralNodeId != "central-1" || resp.Revision == 0 || resp.Lease.AsDuration() != EdgeLease {
		t.Fatalf("Register = %v, %v", resp, err)
	}
	// Registering again refreshes the record and keeps its identity.
	if _, err := edge.Register(ctx, req); err != nil {
		t.Fatalf("second Register: %v", err)
	}
	nodes, err := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops")).ListNodes(ctx, &kbv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 2 || nodes.Nodes[1].NodeId != "edge-eu-1" || nodes.Nodes[1].Region != "eu" ||
		nodes.Nodes[1].Kind != "edge" || nodes.Nodes[1].Address != "10.1.2.3:7443" || nodes.Nodes[1].Labels["pci"] != "yes" {
		t.Errorf("ListNodes = %v", nodes.Nodes)
	}

	// Only edge certificates may register.
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "sneaky")).Register(ctx, req)
	code(t, "a client registers as an edge", err, codes.PermissionDenied)
	for _, tc := range []struct {
		name string
		req  *kbv1.RegisterEdgeRequest
	}{
		{"no sealing key", &kbv1.RegisterEdgeRequest{Region: "eu", Address: "10.1.2.3:7443"}},
		{"garbage sealing key", &kbv1.RegisterEdgeRequest{SealingPublicKey: []byte{1, 2, 3, 4}, Address: "10.1.2.3:7443"}},
		{"bad region", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Region: "EU West", Address: "10.1.2.3:7443"}},
		{"wildcard address", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "0.0.0.0:7443"}},
		{"no port", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "edge.example"}},
		{"bad label", &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: "edge.example:1", Labels: map[string]string{"a b": "c"}}},
	} {
		_, err := edge.Register(ctx, tc.req)
		code(t, tc.name, err, codes.InvalidArgument)
	}
	// Streams are authenticated too: a certificate for another trust
	// domain, from the same CA, is refused before any handler.
	foreignTD := *e.ca
	foreignTD.TrustDomain = "other.test"
	ftd := &testEnv{addr: e.addr, ca: &foreignTD, dir: e.dir, caFile: e.caFile}
	fs, err := kbv1.NewEdgeSyncClient(ftd.connTD(t, "other.test", identity.Edge, "edge-x")).Watch(ctx, &kbv1.WatchRequest{})
	if err == nil {
		_, err = fs.Recv()
	}
	code(t, "Watch from another trust domain", err, codes.Unauthenticated)
	// Watch is defined but not served yet.
	stream, err := edge.Watch(ctx, &kbv1.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	code(t, "Watch", err, codes.Unimplemented)

	var denied bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "RegisterEdge" && r.Decision == "deny" && r.Outcome == "PermissionDenied" {
			denied = true
		}
	}
	if !denied {
		t.Error("the refused registration left no audit line")
	}
}

func TestFetchMaterial(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	const eu = `principal.region == "eu"`
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "eu-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: eu},
		{KeyId: "eu-backend", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: "softkms:aes", Placement: eu},
		{KeyId: "unplaced", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP},
	} {
		if _, err := admin.CreateKey(ctx, k); err != nil {
			t.Fatalf("CreateKey %s: %v", k.KeyId, err)
		}
	}
	register := func(name, region string) (*sealed.PrivateKey, kbv1.EdgeSyncClient) {
		sk, _ := sealed.GenerateKey()
		c := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, name))
		if _, err := c.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Region: region, Address: name + ".example:7443"}); err != nil {
			t.Fatal(err)
		}
		return sk, c
	}
	euKey, euEdge := register("edge-eu-1", "eu")
	_, usEdge := register("edge-us-1", "us")

	enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-key", Plaintext: []byte("order 7"), EncryptionContext: map[string]string{"o": "7"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 1})
	if err != nil {
		t.Fatalf("eu edge FetchMaterial: %v", err)
	}
	material, err := sealed.Open(euKey, resp.SealedMaterial, "edge-eu-1", "eu-key", 1)
	if err != nil {
		t.Fatalf("opening the sealed material: %v", err)
	}
	// The material really is the key's: it opens the central tier's ciphertext.
	h, body, err := envelope.ParseHeader(enc.Ciphertext)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := envelope.UnwrapDataKey(material, h.KeyID, h.Version, h.WrappedDEK)
	if err != nil {
		t.Fatalf("material does not unwrap the data key: %v", err)
	}
	if pt, err := dk.Open(h, body, map[string]string{"o": "7"}); err != nil || string(pt) != "order 7" {
		t.Errorf("opened %q, %v", pt, err)
	}

	_, err = usEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 1})
	code(t, "us edge fetches an eu key", err, codes.PermissionDenied)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "unplaced", KeyVersion: 1})
	code(t, "a key placed nowhere", err, codes.PermissionDenied)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-backend", KeyVersion: 1})
	code(t, "a backend-mode key", err, codes.FailedPrecondition)
	_, err = euEdge.FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key", KeyVersion: 9})
	code(t, "a version that does not exist", err, codes.NotFound)
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, "edge-never")).FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key"})
	code(t, "an unregistered edge", err, codes.FailedPrecondition)
	_, err = kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "app")).FetchMaterial(ctx, &kbv1.FetchMaterialRequest{KeyId: "eu-key"})
	code(t, "a client", err, codes.PermissionDenied)

	var refused bool
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "HoldMaterial" && r.Key == "eu-key" && strings.HasSuffix(r.Principal, "/edge/edge-us-1") && r.Decision == "deny" {
			refused = true
		}
	}
	if !refused {
		t.Error("the refused fetch by the us edge left no audit line")
	}
}
