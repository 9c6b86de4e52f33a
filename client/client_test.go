package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// cluster is a devcluster — central on softkms, edge-us and edge-eu, in
// this process over mutual TLS on loopback — with keys made for the tests:
//
//	shared   aes derive, placed on every edge
//	eu-only  aes wrap, placed on eu edges only
//	derived  aes derive with per-context data-key wrapping
//	signer   ecdsa-p256; tags hmac-sha256
type cluster struct {
	*devcluster.Cluster
	central, us, eu string
	admin           kbv1.KeyAdminClient
}

func startCluster(t testing.TB) *cluster {
	t.Helper()
	dc := startDev(t, devcluster.Options{})
	c := &cluster{Cluster: dc, central: dc.Central.Addr()}
	// DefaultEdges: edge-us, then edge-eu.
	c.us, c.eu = dc.Edges[0].Addr(), dc.Edges[1].Addr()
	c.admin = adminClient(t, dc)
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "shared", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "true"},
		{KeyId: "eu-only", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Placement: `principal.region == "eu"`},
		{KeyId: "derived", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Derived: true},
		{KeyId: "signer", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: kbv1.KeyMode_KEY_MODE_WRAP},
		{KeyId: "tags", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
	} {
		if _, err := c.admin.CreateKey(t.Context(), k); err != nil {
			t.Fatalf("CreateKey %s: %v", k.KeyId, err)
		}
	}
	c.synced(t)
	return c
}

// startDev starts a devcluster in a temporary directory, shut down when
// the test ends.
func startDev(t testing.TB, opts devcluster.Options) *devcluster.Cluster {
	t.Helper()
	opts.Dir = t.TempDir()
	dc, err := devcluster.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = dc.Shutdown(ctx)
	})
	return dc
}

func (c *cluster) synced(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
}

// client makes an app client with the given seed nodes and region.
func (c *cluster) client(t testing.TB, region string, addrs ...string) *client.Client {
	t.Helper()
	tlsCfg, err := c.ClientTLS(identity.Client, devcluster.AppName)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(t.Context(), client.Config{Addrs: addrs, TLS: tlsCfg, Region: region,
		Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func stopEdge(t *testing.T, c *cluster, addr string) {
	t.Helper()
	for _, e := range c.Edges {
		if e.Addr() == addr {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := e.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no edge at %s", addr)
}

func wantCode(t *testing.T, what string, err error, sentinel error, code codes.Code) {
	t.Helper()
	if !errors.Is(err, sentinel) || status.Code(err) != code {
		t.Errorf("%s: err = %v (code %v), want %v", what, err, status.Code(err), code)
	}
	var e *client.Error
	if err != nil && !errors.As(err, &e) {
		t.Errorf("%s: err is a %T, want *client.Error", what, err)
	}
}

// TestOperations runs every KeyBroker operation through the SDK, and the
// typed errors of the common failures.
func TestOperations(t *testing.T) {
	c := startCluster(t)
	cl := c.client(t, "us", c.us)
	ctx := t.Context()
	ectx := map[string]string{"tenant": "42"}

	ct, err := cl.Encrypt(ctx, "shared", []byte("hello"), ectx)
	if err != nil || ct.KeyID != "shared" || ct.Version != 1 {
		t.Fatalf("Encrypt = %+v, %v", ct, err)
	}
	pt, err := cl.Decrypt(ctx, ct.Ciphertext, ectx)
	if err != nil || string(pt.Plaintext) != "hello" {
		t.Fatalf("Decrypt = %+v, %v", pt, err)
	}
	re, err := cl.ReEncrypt(ctx, ct.Ciphertext, ectx, "derived", map[string]string{"x": "y"})
	if err != nil || re.KeyID != "derived" {
		t.Fatalf("ReEncrypt = %+v, %v", re, err)
	}
	if pt, err := cl.Decrypt(ctx, re.Ciphertext, map[string]string{"x": "y"}); err != nil || string(pt.Plaintext) != "hello" {
		t.Errorf("Decrypt(ReEncrypt) = %+v, %v", pt, err)
	}
	dk, err := cl.GenerateDataKey(ctx, "shared", ectx)
	if err != nil || len(dk.Plaintext) != 32 || len(dk.Wrapped) == 0 {
		t.Fatalf("GenerateDataKey = %+v, %v", dk, err)
	}
	if pt, err := cl.Decrypt(ctx, dk.Encrypted, ectx); err != nil || !bytes.Equal(pt.Plaintext, dk.Plaintext) {
		t.Errorf("Decrypt(encrypted data key) = %v", err)
	}
	if back, err := cl.DecryptDataKey(ctx, "shared", dk.Version, dk.Wrapped, ectx); err != nil || !bytes.Equal(back, dk.Plaintext) {
		t.Errorf("DecryptDataKey = %v", err)
	}
	if dk, err := cl.GenerateDataKeyWithoutPlaintext(ctx, "shared", ectx); err != nil || dk.Plaintext != nil || len(dk.Encrypted) == 0 {
		t.Errorf("GenerateDataKeyWithoutPlaintext = %+v, %v", dk, err)
	}
	sig, err := cl.Sign(ctx, "signer", []byte("msg"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := cl.Verify(ctx, "signer", sig.Version, []byte("msg"), sig.Signature); !ok || err != nil {
		t.Errorf("Verify = %v, %v", ok, err)
	}
	if ok, err := cl.Verify(ctx, "signer", 0, []byte("other"), sig.Signature); ok || err != nil {
		t.Errorf("Verify(other message) = %v, %v, want false, nil", ok, err)
	}
	if pk, err := cl.GetPublicKey(ctx, "signer", 0); err != nil || len(pk.DER) == 0 {
		t.Errorf("GetPublicKey = %+v, %v", pk, err)
	}
	mac, err := cl.GenerateMac(ctx, "tags", []byte("msg"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := cl.VerifyMac(ctx, "tags", mac.Version, []byte("msg"), mac.MAC); !ok || err != nil {
		t.Errorf("VerifyMac = %v, %v", ok, err)
	}
	if r, err := cl.GenerateRandom(ctx, 32); err != nil || len(r) != 32 {
		t.Errorf("GenerateRandom = %x, %v", r, err)
	}
	if md, err := cl.DescribeKey(ctx, "eu-only"); err != nil || md.GetMode() != kbv1.KeyMode_KEY_MODE_WRAP {
		t.Errorf("DescribeKey = %v, %v", md, err)
	}
	keys, err := cl.ListKeys(ctx, nil)
	if err != nil || len(keys) != 5 {
		t.Errorf("ListKeys = %d keys, %v; want 5", len(keys), err)
	}
	if nodes, err := cl.LookupKey(ctx, "shared", kbv1.Operation_OPERATION_ENCRYPT); err != nil || len(nodes) != 3 {
		t.Errorf("LookupKey = %v, %v; want 3 nodes", nodes, err)
	}
	batch, err := cl.BatchEncrypt(ctx, "shared", [][]byte{[]byte("a"), []byte("b")}, ectx)
	if err != nil || len(batch) != 2 || batch[0].Err != nil || batch[1].Err != nil {
		t.Fatalf("BatchEncrypt = %v, %v", batch, err)
	}
	opened, err := cl.BatchDecrypt(ctx, [][]byte{batch[0].Value.Ciphertext, batch[1].Value.Ciphertext, {1, 2, 3}}, ectx)
	if err != nil || string(opened[1].Value.Plaintext) != "b" {
		t.Fatalf("BatchDecrypt = %v, %v", opened, err)
	}
	wantCode(t, "BatchDecrypt of a malformed item", opened[2].Err, client.ErrInvalidArgument, codes.InvalidArgument)

	// Typed errors.
	_, err = cl.Encrypt(ctx, "nope", []byte("x"), nil)
	wantCode(t, "Encrypt with an unknown key", err, client.ErrNotFound, codes.NotFound)
	_, err = cl.Decrypt(ctx, ct.Ciphertext, map[string]string{"tenant": "43"})
	wantCode(t, "Decrypt with the wrong context", err, client.ErrInvalidArgument, codes.InvalidArgument)
	_, err = cl.Decrypt(ctx, []byte{9, 9, 9}, nil)
	wantCode(t, "Decrypt of garbage", err, client.ErrInvalidArgument, codes.InvalidArgument)
	_, err = cl.Sign(ctx, "shared", []byte("m"))
	wantCode(t, "Sign with an AES key", err, client.ErrInvalidArgument, codes.InvalidArgument)
	_, err = cl.GenerateRandom(ctx, 0)
	wantCode(t, "GenerateRandom(0)", err, client.ErrInvalidArgument, codes.InvalidArgument)
	if _, err := c.admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "tags"}); err != nil {
		t.Fatal(err)
	}
	c.synced(t)
	_, err = cl.GenerateMac(ctx, "tags", []byte("m"))
	wantCode(t, "GenerateMac with a disabled key", err, client.ErrFailedPrecondition, codes.FailedPrecondition)

	// No TLS files, no client.
	if _, err := client.New(ctx, client.Config{Addrs: []string{c.us}, Getenv: func(string) string { return "" }}); err == nil {
		t.Error("New without TLS files succeeded")
	}
}

// TestRoutingFollowsLookup checks that operations go where LookupKey
// says, that the answer is cached, and that the client's region orders it.
func TestRoutingFollowsLookup(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	for _, tc := range []struct {
		name, region, key string
		// want is the route's first node.
		want func(*cluster) string
	}{
		{"eu client, eu key", "eu", "eu-only", func(c *cluster) string { return c.eu }},
		{"us client, eu key: a capable edge elsewhere beats a forwarding one", "us", "eu-only", func(c *cluster) string { return c.eu }},
		{"us client, shared key", "us", "shared", func(c *cluster) string { return c.us }},
		{"eu client, shared key", "eu", "shared", func(c *cluster) string { return c.eu }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := c.client(t, tc.region, c.central)
			nodes, err := cl.LookupKey(ctx, tc.key, kbv1.Operation_OPERATION_ENCRYPT)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, n := range nodes {
				want = append(want, n.Address)
			}
			got, err := cl.Route(ctx, tc.key, kbv1.Operation_OPERATION_ENCRYPT)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("Route = %v, %v; want the LookupKey answer %v", got, err, want)
			}
			if got[0] != tc.want(c) {
				t.Errorf("route starts at %s, want %s (central %s, us %s, eu %s): %v", got[0], tc.want(c), c.central, c.us, c.eu, nodes)
			}
			before := cl.Calls()
			for range 20 {
				if _, err := cl.Encrypt(ctx, tc.key, []byte("m"), nil); err != nil {
					t.Fatal(err)
				}
			}
			after := cl.Calls()
			if n := after[got[0]] - before[got[0]]; n != 20 {
				t.Errorf("%d of 20 encrypts went to %s", n, got[0])
			}
			if n := after[c.central] - before[c.central]; n != 0 {
				t.Errorf("%d calls to the central node after the route was cached, want 0", n)
			}
		})
	}
	t.Run("direct", func(t *testing.T) {
		tlsCfg, err := c.ClientTLS(identity.Client, devcluster.AppName)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(ctx, client.Config{Addrs: []string{c.us}, TLS: tlsCfg, Direct: true, Region: "eu"})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if route, err := cl.Route(ctx, "eu-only", kbv1.Operation_OPERATION_ENCRYPT); err != nil || !slices.Equal(route, []string{c.us}) {
			t.Errorf("Route of a direct client = %v, %v; want only %s", route, err, c.us)
		}
		if _, err := cl.Encrypt(ctx, "eu-only", []byte("m"), nil); err != nil {
			t.Fatal(err)
		}
		if calls := cl.Calls(); calls[c.us] != 1 || len(calls) != 1 {
			t.Errorf("a direct client's calls = %v, want one to %s (the us edge forwards)", calls, c.us)
		}
	})
}

// TestFailover kills the edge a client routes to: calls move on to the
// next node with no error, and the route is refreshed or reused; with no
// node left the error is Unavailable, within the caller's deadline.
func TestFailover(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	cl := c.client(t, "us", c.us, c.central)
	route, err := cl.Route(ctx, "shared", kbv1.Operation_OPERATION_ENCRYPT)
	if err != nil || route[0] != c.us {
		t.Fatalf("Route = %v, %v; want edge-us first", route, err)
	}
	ct, err := cl.Encrypt(ctx, "shared", []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	stopEdge(t, c, c.us)
	var mu sync.Mutex
	var failures []error
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				if _, err := cl.Encrypt(ctx, "shared", []byte("after"), nil); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of 200 encrypts failed after edge-us stopped; first: %v", len(failures), failures[0])
	}
	if pt, err := cl.Decrypt(ctx, ct.Ciphertext, nil); err != nil || string(pt.Plaintext) != "before" {
		t.Errorf("Decrypt after fail-over = %v", err)
	}
	calls := cl.Calls()
	if calls[c.eu] == 0 {
		t.Errorf("no calls reached edge-eu after edge-us stopped: %v", calls)
	}

	// The only seed is down: the last route is reused.
	lone := c.client(t, "us", c.us)
	if _, err := lone.Encrypt(ctx, "shared", []byte("x"), nil); err == nil {
		t.Error("a client whose only node is down and who has no route succeeded")
	} else {
		wantCode(t, "Encrypt with every known node down", err, client.ErrUnavailable, codes.Unavailable)
	}

	// Every node down: Unavailable, and the deadline holds.
	for _, e := range c.Edges {
		if e.Addr() != c.us {
			stopEdge(t, c, e.Addr())
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Central.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = cl.Encrypt(dctx, "shared", []byte("x"), nil)
	var e *client.Error
	if !errors.As(err, &e) || (e.Code != codes.Unavailable && e.Code != codes.DeadlineExceeded) || e.Attempts < 3 {
		t.Errorf("Encrypt with every node down = %v (attempts %d), want Unavailable after trying each node", err, e.Attempts)
	}
	if dctx.Err() != nil {
		t.Errorf("Encrypt with every node down ran out the caller's deadline instead of giving up after its passes")
	}
}

// TestEdgeReadYourWrites changes keys through an edge and uses them at
// once through the same edge: a key change answered by an edge has
// reached that edge's replica.
func TestEdgeReadYourWrites(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	tlsCfg, err := c.ClientTLS(identity.Admin, devcluster.AdminName)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(ctx, client.Config{Addrs: []string{c.us}, TLS: tlsCfg, Direct: true, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	admin, err := cl.Admin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		id := fmt.Sprintf("ryw-%d", i)
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Encrypt(ctx, id, []byte("m"), nil); err != nil {
			t.Fatalf("Encrypt right after CreateKey through the same edge: %v", err)
		}
		if _, err := admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: id}); err != nil {
			t.Fatal(err)
		}
		_, err := cl.Encrypt(ctx, id, []byte("m"), nil)
		wantCode(t, "Encrypt right after DisableKey through the same edge", err, client.ErrFailedPrecondition, codes.FailedPrecondition)
	}
}
