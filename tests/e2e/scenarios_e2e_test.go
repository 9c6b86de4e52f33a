package e2e

// The core scenarios, written once against framework.Cluster and run both
// ways: in-process (keybrokertest) and as real processes. What holds in
// one must hold in the other; a difference is a bug in one of them, or in
// the framework.

import (
	"bytes"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// scenarioKeys are the keys the core scenarios make: one every node
// holds, one placed in eu only, and a signing key no edge holds, which
// edges must forward: kept in the root of trust (backend mode), or, where
// the root of trust has no backend root key for it (keybrokertest makes
// those on softkms only), a wrap-mode key placed in no region.
func scenarioKeys(c framework.Cluster) []*kbv1.CreateKeyRequest {
	owner := map[string]string{"owner": c.TrustDomain()}
	signer := &kbv1.CreateKeyRequest{KeyId: "signer", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: owner,
		RootKey: c.BackendRoot(kbv1.KeyType_KEY_TYPE_ECDSA_P256)}
	if signer.RootKey == "" {
		signer.Mode, signer.Placement = kbv1.KeyMode_KEY_MODE_WRAP, `principal.region == "nowhere"`
	}
	return []*kbv1.CreateKeyRequest{
		{KeyId: "payments", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
		{KeyId: "eu-data", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner, Placement: `principal.region == "eu"`},
		signer,
	}
}

// byRequest matches the audit records of request rid: the client's id
// (client_request_id) or, for a node's own calls, the request id.
func byRequest(rid string) func(audit.Record) bool {
	return func(r audit.Record) bool { return r.RequestID == rid || r.ClientRequestID == rid }
}

// TestScenarios runs the core scenarios on a central node and two edges,
// edge-eu and edge-us, in-process and as processes, on softkms.
func TestScenarios(t *testing.T) {
	t.Parallel()
	framework.Run(t, framework.Options{}, func(t *testing.T, c framework.Cluster) {
		// On softkms both ways have backend root keys: the forwarded
		// call is a backend-mode Sign.
		if c.BackendRoot(kbv1.KeyType_KEY_TYPE_ECDSA_P256) == "" {
			t.Fatalf("the %s cluster on softkms has no backend root key for ECDSA P-256", c.Kind())
		}
		coreScenarios(t, c)
	})
}

// TestScenariosSoftHSM runs them again with the central node's root keys
// on a SoftHSM2 token, made for each cluster.
func TestScenariosSoftHSM(t *testing.T) {
	framework.Run(t, framework.Options{SoftHSM: true}, coreScenarios)
}

// coreScenarios are the scenarios every cluster must pass.
func coreScenarios(t *testing.T, c framework.Cluster) {
	ctx := t.Context()
	admin, err := c.AdminClient(t).Admin()
	must(t, "Admin", err)
	for _, k := range scenarioKeys(c) {
		_, err := admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
	}
	c.WaitSynced(t)
	app := func(t *testing.T, node string) *framework.Conn { return c.Conn(t, node, framework.App) }
	appID := identity.Identity{TrustDomain: c.TrustDomain(), Kind: identity.Client, Name: framework.App.Name}.String()
	ectx := map[string]string{"order": "7"}

	t.Run("encrypt at an edge, decrypt at central and at the other edge", func(t *testing.T) {
		enc, err := app(t, "edge-eu").KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("card 4111"), EncryptionContext: ectx})
		must(t, "Encrypt at edge-eu", err)
		for _, node := range []string{framework.CentralNode, "edge-us"} {
			dec, err := app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx})
			if err != nil || !bytes.Equal(dec.GetPlaintext(), []byte("card 4111")) {
				t.Errorf("Decrypt at %s = %q, %v; want card 4111", node, dec.GetPlaintext(), err)
			}
			_, err = app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: map[string]string{"order": "8"}})
			if code(err) != codes.InvalidArgument {
				t.Errorf("Decrypt at %s under another encryption context = %v, want InvalidArgument", node, err)
			}
		}
	})

	t.Run("the SDK routes by LookupKey, and its envelope works with every node", func(t *testing.T) {
		cl := c.Client(t, framework.ClientOptions{Region: "us"})
		for key, first := range map[string]string{"payments": "edge-us", "eu-data": "edge-eu"} {
			nodes, err := cl.LookupKey(ctx, key, kbv1.Operation_OPERATION_ENCRYPT)
			must(t, "LookupKey "+key, err)
			var want []string
			for _, n := range nodes {
				want = append(want, n.Address)
			}
			route, err := cl.Route(ctx, key, kbv1.Operation_OPERATION_ENCRYPT)
			if err != nil || !slices.Equal(route, want) || len(route) == 0 || route[0] != c.Addr(first) {
				t.Errorf("Route(%s) from us = %v, %v; want the LookupKey answer %v, starting at %s (%s)", key, route, err, want, first, c.Addr(first))
			}
		}
		enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "eu-data"})
		must(t, "NewEncryptor", err)
		dec := cl.NewDecryptor(client.DecryptorConfig{})
		local, err := enc.Encrypt(ctx, []byte("sealed by the SDK"), ectx)
		must(t, "Encryptor.Encrypt", err)
		for _, node := range append([]string{framework.CentralNode}, c.EdgeNames()...) {
			d, err := app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: local, EncryptionContext: ectx})
			if err != nil || string(d.GetPlaintext()) != "sealed by the SDK" {
				t.Errorf("Decrypt at %s of an SDK ciphertext = %q, %v", node, d.GetPlaintext(), err)
			}
			e, err := app(t, node).KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("sealed at " + node), EncryptionContext: ectx})
			must(t, "Encrypt at "+node, err)
			if pt, err := dec.Decrypt(ctx, e.GetCiphertext(), ectx); err != nil || string(pt) != "sealed at "+node {
				t.Errorf("Decryptor of a ciphertext sealed at %s = %q, %v", node, pt, err)
			}
		}
	})

	t.Run("a forwarded call is audited at the edge and at central under one request id", func(t *testing.T) {
		forwards := c.Metric(t, "edge-eu", "keybroker_edge_forwards_total", "")
		rctx, rid := framework.WithRequestID(t)
		_, err := app(t, "edge-eu").KB.Sign(rctx, &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
		must(t, "Sign at edge-eu", err)
		central := c.Audit(t, framework.CentralNode, byRequest(rid))
		if len(central) != 1 || central[0].Operation != "Sign" || central[0].Via != "edge-eu" || central[0].Principal != appID || central[0].Outcome != "ok" {
			t.Errorf("central's audit lines of the forwarded Sign = %+v; want one ok Sign by %s via edge-eu", central, appID)
		}
		edge := c.Audit(t, "edge-eu", byRequest(rid))
		if len(edge) == 0 || !slices.ContainsFunc(edge, func(r audit.Record) bool { return r.Principal == appID && r.Outcome == "ok" }) {
			t.Errorf("edge-eu's audit lines of the forwarded Sign = %+v; want one ok line as %s", edge, appID)
		}
		if got := c.Metric(t, "edge-eu", "keybroker_edge_forwards_total", "") - forwards; got != 1 {
			t.Errorf("edge-eu forwarded %v calls for one Sign, want 1", got)
		}

		// A key placed in eu is served at edge-eu and forwarded from edge-us.
		for node, forwarded := range map[string]bool{"edge-eu": false, "edge-us": true} {
			rctx, rid := framework.WithRequestID(t)
			_, err := app(t, node).KB.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("x")})
			must(t, "Encrypt eu-data at "+node, err)
			lines := c.Audit(t, framework.CentralNode, byRequest(rid))
			if got := len(lines) == 1 && lines[0].Via == node; got != forwarded {
				t.Errorf("Encrypt eu-data at %s: central audit lines %+v; forwarded = %t, want %t", node, lines, got, forwarded)
			}
		}
	})

	t.Run("a deny is audited with the rule that made it", func(t *testing.T) {
		intern := c.Conn(t, framework.CentralNode, framework.Principal{Kind: identity.Client, Name: "intern"})
		rctx, rid := framework.WithRequestID(t)
		_, err := intern.KB.Sign(rctx, &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
		if code(err) != codes.PermissionDenied {
			t.Errorf("Sign as intern = %v, want PermissionDenied", err)
		}
		lines := c.Audit(t, framework.CentralNode, byRequest(rid))
		if len(lines) != 1 || lines[0].Decision != "deny" || lines[0].PolicyID != "no-sign-for-interns" || lines[0].Principal != intern.ID {
			t.Errorf("audit lines of the refused Sign = %+v; want one deny by no-sign-for-interns as %s", lines, intern.ID)
		}
	})

	t.Run("a policy change takes effect", func(t *testing.T) {
		hot := c.Conn(t, framework.CentralNode, framework.Principal{Kind: identity.Client, Name: "hot"})
		encrypt := func(want codes.Code, wantPolicy string) {
			t.Helper()
			rctx, rid := framework.WithRequestID(t)
			_, err := hot.KB.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("x")})
			if code(err) != want {
				t.Errorf("Encrypt as hot = %v, want %v", err, want)
			}
			if lines := c.Audit(t, framework.CentralNode, byRequest(rid)); len(lines) != 1 || lines[0].PolicyID != wantPolicy {
				t.Errorf("audit lines %+v, want one with policy_id %s", lines, wantPolicy)
			}
		}
		encrypt(codes.OK, "app-keys")
		c.SetPolicy(t, framework.Policy+hotRule)
		encrypt(codes.PermissionDenied, "hot-reload")
		c.SetPolicy(t, framework.Policy)
		encrypt(codes.OK, "app-keys")
	})

	t.Run("a rotation reaches the edges", func(t *testing.T) {
		before, err := app(t, "edge-us").KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("v1")})
		must(t, "Encrypt before the rotation", err)
		if _, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "payments"}); err != nil {
			t.Fatalf("RotateKey: %v", err)
		}
		c.WaitSynced(t)
		for _, node := range c.EdgeNames() {
			enc, err := app(t, node).KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("v2")})
			if err != nil || enc.GetKeyVersion() != 2 {
				t.Errorf("Encrypt at %s after the rotation = version %d, %v; want version 2", node, enc.GetKeyVersion(), err)
			}
			dec, err := app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: before.GetCiphertext()})
			if err != nil || string(dec.GetPlaintext()) != "v1" {
				t.Errorf("Decrypt of a version-1 ciphertext at %s = %q, %v", node, dec.GetPlaintext(), err)
			}
		}
	})

	t.Run("a disabled key is refused at every node until enabled again", func(t *testing.T) {
		ct, err := app(t, framework.CentralNode).KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("held")})
		must(t, "Encrypt", err)
		nodes := append([]string{framework.CentralNode}, c.EdgeNames()...)
		_, err = admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "payments"})
		must(t, "DisableKey", err)
		c.WaitSynced(t)
		for _, node := range nodes {
			if _, err := app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct.GetCiphertext()}); code(err) != codes.FailedPrecondition {
				t.Errorf("Decrypt of a disabled key at %s = %v, want FailedPrecondition", node, err)
			}
		}
		_, err = admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "payments"})
		must(t, "EnableKey", err)
		c.WaitSynced(t)
		for _, node := range nodes {
			if dec, err := app(t, node).KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct.GetCiphertext()}); err != nil || string(dec.GetPlaintext()) != "held" {
				t.Errorf("Decrypt at %s once enabled again = %q, %v", node, dec.GetPlaintext(), err)
			}
		}
	})

	t.Run("an edge restarted serves from its state on disk", func(t *testing.T) {
		ctl, ok := c.(framework.Controller)
		if !ok {
			t.Skipf("the %s cluster's nodes cannot be stopped one by one", c.Kind())
		}
		enc, err := app(t, "edge-eu").KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("kept")})
		must(t, "Encrypt eu-data", err)
		ctl.Stop(t, "edge-eu")
		ctl.Restart(t, "edge-eu")
		c.WaitSynced(t)
		dec, err := app(t, "edge-eu").KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "kept" {
			t.Errorf("Decrypt at the restarted edge-eu = %q, %v", dec.GetPlaintext(), err)
		}
	})

	t.Run("the CLI at an edge and at central", func(t *testing.T) {
		enc := c.CLI(t, framework.App, "edge-us", []byte("card 4111"), "encrypt", "--key", "payments", "--context", "order=7")
		framework.WantCode(t, enc, 0)
		dec := c.CLI(t, framework.App, framework.CentralNode, []byte(enc.Stdout), "decrypt", "--context", "order=7")
		framework.WantCode(t, dec, 0)
		if dec.Stdout != "card 4111" {
			t.Errorf("keybroker decrypt at central = %q, want card 4111", dec.Stdout)
		}
		refused := c.CLI(t, framework.App, framework.CentralNode, nil, "key", "rotate", "payments")
		if refused.Code != 3 {
			t.Errorf("key rotate as a client: exit %d (%s), want 3 (denied)", refused.Code, refused.Stderr)
		}
	})
}
