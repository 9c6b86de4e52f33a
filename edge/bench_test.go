package edge_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/serve"
)

// benchCluster is a central node on softkms and one edge, in this process, talking gRPC over mutual TLS on loopback, with a warm
// derive-mode AES key "bench".
type benchCluster struct {
	c                 *devcluster.Cluster
	edge, central     kbv1.KeyBrokerClient
	edgeNoop, cNoop   healthpb.HealthClient
	edgeCT, centralCT []byte
}

func startBench(b *testing.B, prefetch bool) *benchCluster {
	b.Helper()
	// The GC target the keybroker process runs with (GOGC unless set).
	serve.TuneGC(os.Getenv)
	c, err := devcluster.Start(b.Context(), devcluster.Options{Dir: b.TempDir(),
		Edges: []devcluster.EdgeSpec{{Name: "edge-1", Region: "eu", Prefetch: prefetch}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Shutdown(ctx)
	})
	dial := func(addr string, kind identity.Kind, name string) *grpc.ClientConn {
		cfg, err := c.ClientTLS(kind, name)
		if err != nil {
			b.Fatal(err)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return conn
	}
	admin := kbv1.NewKeyAdminClient(dial(c.Central.Addr(), identity.Admin, devcluster.AdminName))
	if _, err := admin.CreateKey(b.Context(), &kbv1.CreateKeyRequest{KeyId: "bench", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		b.Fatal(err)
	}
	if err := c.WaitSynced(b.Context()); err != nil {
		b.Fatal(err)
	}
	edgeConn := dial(c.Edges[0].Addr(), identity.Client, devcluster.AppName)
	centralConn := dial(c.Central.Addr(), identity.Client, devcluster.AppName)
	bc := &benchCluster{c: c, edge: kbv1.NewKeyBrokerClient(edgeConn), central: kbv1.NewKeyBrokerClient(centralConn),
		edgeNoop: healthpb.NewHealthClient(edgeConn), cNoop: healthpb.NewHealthClient(centralConn)}
	// Warm both nodes: material opened, a data key in reuse, the unwrap
	// cache holding it.
	for _, n := range []struct {
		kb kbv1.KeyBrokerClient
		ct *[]byte
	}{{bc.edge, &bc.edgeCT}, {bc.central, &bc.centralCT}} {
		enc, err := n.kb.Encrypt(b.Context(), &kbv1.EncryptRequest{KeyId: "bench", Plaintext: payload})
		if err != nil {
			b.Fatal(err)
		}
		*n.ct = enc.GetCiphertext()
		if _, err := n.kb.Decrypt(b.Context(), &kbv1.DecryptRequest{Ciphertext: *n.ct}); err != nil {
			b.Fatal(err)
		}
	}
	return bc
}

var payload = make([]byte, 1024)

// run calls op b.N times from conc goroutines (1, or conc spread over
// GOMAXPROCS with RunParallel).
func run(b *testing.B, conc int, op func(context.Context) error) {
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	ctx := context.Background()
	if conc == 1 {
		for b.Loop() {
			if err := op(ctx); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEdge compares Encrypt and Decrypt of 1 KiB (and Encrypt of 1 byte) at a warm edge with
// the same call at the central node and with a no-op RPC (grpc.health.v1
// Check: the same TLS, interceptors and authentication, no work), at
// concurrency 1 and 64.
func BenchmarkEdge(b *testing.B) {
	bc := startBench(b, true)
	targets := []struct {
		name string
		kb   kbv1.KeyBrokerClient
		noop healthpb.HealthClient
		ct   []byte
	}{{"edge", bc.edge, bc.edgeNoop, bc.edgeCT}, {"central", bc.central, bc.cNoop, bc.centralCT}}
	for _, conc := range []int{1, 64} {
		for _, tg := range targets {
			b.Run(fmt.Sprintf("Encrypt1KiB/%s/c%d", tg.name, conc), func(b *testing.B) {
				run(b, conc, func(ctx context.Context) error {
					_, err := tg.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "bench", Plaintext: payload})
					return err
				})
			})
			// The same call with a 1-byte plaintext: what the broker's own
			// work costs without the payload's trip through gRPC and TLS.
			b.Run(fmt.Sprintf("Encrypt1B/%s/c%d", tg.name, conc), func(b *testing.B) {
				run(b, conc, func(ctx context.Context) error {
					_, err := tg.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "bench", Plaintext: payload[:1]})
					return err
				})
			})
			b.Run(fmt.Sprintf("Decrypt1KiB/%s/c%d", tg.name, conc), func(b *testing.B) {
				run(b, conc, func(ctx context.Context) error {
					_, err := tg.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: tg.ct})
					return err
				})
			})
			b.Run(fmt.Sprintf("Noop/%s/c%d", tg.name, conc), func(b *testing.B) {
				run(b, conc, func(ctx context.Context) error {
					_, err := tg.noop.Check(ctx, &healthpb.HealthCheckRequest{})
					return err
				})
			})
		}
	}
}

// BenchmarkEdgeCalls encrypts at an edge that does not prefetch b.N times
// from 64 goroutines, starting cold — a key created just before, so the
// edge holds neither its material nor a data key — and reports the calls
// that cost beyond the edge: central-calls (FetchMaterial and Forward made
// by the edge), backend-calls (every call the central node made to its
// root of trust meanwhile) and data-keys (created by the edge). Run it
// with -benchtime 1000000x for the figures per million encrypts with the
// default 5-minute data-key reuse period.
func BenchmarkEdgeCalls(b *testing.B) {
	bc := startBench(b, false)
	conn, err := adminConn(bc.c)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if _, err := kbv1.NewKeyAdminClient(conn).CreateKey(b.Context(), &kbv1.CreateKeyRequest{KeyId: "million",
		Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		b.Fatal(err)
	}
	if err := bc.c.WaitSynced(b.Context()); err != nil {
		b.Fatal(err)
	}
	backendBefore := backendCalls(bc.c)
	st := bc.c.Edges[0].Cache().Stats()
	run(b, 64, func(ctx context.Context) error {
		_, err := bc.edge.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "million", Plaintext: payload})
		return err
	})
	b.StopTimer()
	after := bc.c.Edges[0].Cache().Stats()
	b.ReportMetric(float64(after.Fetches+after.Forwards-st.Fetches-st.Forwards), "central-calls")
	b.ReportMetric(float64(backendCalls(bc.c)-backendBefore), "backend-calls")
	b.ReportMetric(float64(after.DataKeysCreated-st.DataKeysCreated), "data-keys")
}

func adminConn(c *devcluster.Cluster) (*grpc.ClientConn, error) {
	cfg, err := c.ClientTLS(identity.Admin, devcluster.AdminName)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}

func backendCalls(c *devcluster.Cluster) uint64 {
	var n uint64
	for _, v := range c.Central.Service().Roots().Calls() {
		n += v
	}
	return n
}
