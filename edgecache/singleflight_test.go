package edgecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"google.golang.org/grpc"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// TestColdUsesCostOneFetch sends many concurrent first uses of one key
// version to an edge that fetches on use: one FetchMaterial serves them
// all, as the edge's counter and the central audit log both show.
func TestColdUsesCostOneFetch(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t,
		&kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
		// Derived: every context has its own KEK, so each ciphertext below
		// needs the material, not just a cached data key.
		&kbv1.CreateKeyRequest{KeyId: "per-tenant", Type: aes256, Mode: wrap, Derived: true, Labels: appLabels, Placement: "true"},
	)
	const n = 64
	cts := make([][]byte, n)
	for i := range cts {
		enc, err := c.kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "per-tenant", Plaintext: fmt.Appendf(nil, "tenant %d", i),
			EncryptionContext: map[string]string{"tenant": fmt.Sprint(i)}})
		must(t, "Encrypt at central", err)
		cts[i] = enc.GetCiphertext()
	}
	ec := open(t, edgeConfig(t, c, "edge-eu-1", t.TempDir()))
	startRun(t, ec)
	synced(t, c, ec)
	ctx := asApp(t.Context())
	want, err := c.kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
	must(t, "GenerateMac at central", err)

	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			<-start
			tag, _, err := opsByID(ec).GenerateMac(ctx, "tags", []byte("m"))
			if err == nil && !bytes.Equal(tag, want.GetMac()) {
				err = fmt.Errorf("GenerateMac = %x, want %x", tag, want.GetMac())
			}
			errs <- err
		})
		wg.Go(func() {
			<-start
			pt, _, _, err := opsByID(ec).Decrypt(ctx, cts[i], map[string]string{"tenant": fmt.Sprint(i)}, "")
			if err == nil && string(pt) != fmt.Sprintf("tenant %d", i) {
				err = fmt.Errorf("Decrypt = %q, want tenant %d", pt, i)
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if s := ec.Stats(); s.Fetches != 2 || s.MaterialEntries != 2 {
		t.Errorf("%d cold uses of two key versions: %d fetches, %d entries; want 2 and 2", 2*n, s.Fetches, s.MaterialEntries)
	}
	for _, key := range []string{"tags", "per-tenant"} {
		if got := c.holdLines(t, "edge-eu-1", key, "allow"); got != 1 {
			t.Errorf("central audited %d HoldMaterial grants of %s to the edge, want 1", got, key)
		}
	}
}

// gate holds FetchMaterial calls until released.
type gate struct {
	entered chan struct{}
	release chan struct{}
}

func (g *gate) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == "/keybroker.v1.EdgeSync/FetchMaterial" {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		select {
		case <-g.release:
		case <-ctx.Done(): // gRPC itself answers Canceled
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// TestCoalescedFetchOutlivesFirstCaller cancels the caller whose miss
// started a FetchMaterial while another caller waits on the same fetch:
// the waiter, whose own context is live, must still get the material.
func TestCoalescedFetchOutlivesFirstCaller(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"})
	g := &gate{entered: make(chan struct{}, 1), release: make(chan struct{})}
	cfg := edgeConfig(t, c, "edge-eu-1", t.TempDir())
	cfg.Central = c.edgeConn(t, "edge-eu-1", grpc.WithUnaryInterceptor(g.intercept))
	ec := open(t, cfg)
	startRun(t, ec)
	synced(t, c, ec)

	firstCtx, cancelFirst := context.WithCancel(asApp(t.Context()))
	first := make(chan error, 1)
	go func() {
		_, _, err := opsByID(ec).GenerateMac(firstCtx, "tags", []byte("m"))
		first <- err
	}()
	<-g.entered // the first caller's fetch is in flight
	misses := ec.Stats().MaterialMisses
	second := make(chan error, 1)
	go func() {
		_, _, err := opsByID(ec).GenerateMac(asApp(t.Context()), "tags", []byte("m"))
		second <- err
	}()
	// The second caller has missed the cache and is about to wait on the
	// flight; give it the chance to join before the first gives up.
	waitFor(t, "the second caller's miss", func() bool { return ec.Stats().MaterialMisses > misses })
	for range 100 {
		runtime.Gosched()
	}
	cancelFirst()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("the cancelled caller got %v, want context.Canceled", err)
	}
	close(g.release)
	if err := <-second; err != nil {
		t.Errorf("a caller with a live context got %v because another caller gave up", err)
	}
}
