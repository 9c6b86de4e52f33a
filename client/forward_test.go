package client_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// TestForwardProofs: the SDK signs a call an edge forwards — up front when
// LookupKey says the edge forwards, so the call costs no extra round trip,
// and on request otherwise (Direct, and admin calls through an edge), after
// which calls of the same method and key are signed up front.
func TestForwardProofs(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	// asked counts the answers asking for a proof, beneath the SDK's
	// own interceptor.
	var asked atomic.Int64
	count := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if status.Code(err) == codes.FailedPrecondition {
			asked.Add(1)
		}
		return err
	})
	newClient := func(t *testing.T, kind identity.Kind, name string, direct bool) *client.Client {
		tlsCfg, err := c.ClientTLS(kind, name)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.New(ctx, client.Config{Addrs: []string{c.us}, TLS: tlsCfg, Region: "us", Direct: direct,
			DialOptions: []grpc.DialOption{count}, Backoff: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}

	// A key placed on no edge: edge-us forwards its operations.
	if _, err := c.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "central-only", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "false"}); err != nil {
		t.Fatal(err)
	}
	c.synced(t)
	routed := newClient(t, identity.Client, devcluster.AppName, false)
	route, err := routed.Route(ctx, "central-only", kbv1.Operation_OPERATION_ENCRYPT)
	if err != nil || len(route) == 0 || route[0] != c.us {
		t.Fatalf("Route(central-only, encrypt) = %v, %v; want edge-us (forwarding) first", route, err)
	}
	asked.Store(0)
	if _, err := routed.Encrypt(ctx, "central-only", []byte("m"), nil); err != nil {
		t.Fatalf("Encrypt through the forwarding edge: %v", err)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the edge asked for a proof %d times, want 0: the route says it forwards", n)
	}

	direct := newClient(t, identity.Client, devcluster.AppName, true)
	asked.Store(0)
	if _, err := direct.Encrypt(ctx, "central-only", []byte("m"), nil); err != nil {
		t.Fatalf("Encrypt through the edge, Direct: %v", err)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("Direct: the edge asked for a proof %d times, want 1 (then the signed retry)", n)
	}
	// The request is remembered for that method and key: further such
	// calls are signed up front.
	asked.Store(0)
	for range 5 {
		if _, err := direct.Encrypt(ctx, "central-only", []byte("m"), nil); err != nil {
			t.Fatalf("Encrypt through the edge again, Direct: %v", err)
		}
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("Direct: five more forwarded Encrypts were asked for a proof %d times, want 0", n)
	}
	// A local call is never signed nor refused.
	asked.Store(0)
	if _, err := direct.Encrypt(ctx, "shared", []byte("m"), nil); err != nil || asked.Load() != 0 {
		t.Errorf("a local Encrypt = %v, %d requests for a proof", err, asked.Load())
	}

	// Admin calls through the edge: asked once per connection, then signed
	// up front.
	admin := newClient(t, identity.Admin, devcluster.AdminName, true)
	adm, err := admin.Admin()
	if err != nil {
		t.Fatal(err)
	}
	asked.Store(0)
	for _, id := range []string{"fwd-1", "fwd-2", "fwd-3"} {
		if _, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
			t.Fatalf("CreateKey %s through the edge: %v", id, err)
		}
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("three admin calls through the edge were asked for a proof %d times, want 1", n)
	}
}
