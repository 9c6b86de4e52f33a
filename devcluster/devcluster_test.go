package devcluster_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

func dial(t *testing.T, c *devcluster.Cluster, addr string, kind identity.Kind, name string) *grpc.ClientConn {
	t.Helper()
	tlsCfg, err := c.ClientTLS(kind, name)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func start(t *testing.T, dir string) *devcluster.Cluster {
	t.Helper()
	c, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return c
}

// TestClusterServesAndRestarts starts a cluster, creates a key, encrypts
// at one edge and decrypts at the other and at central; a second start
// from the same directory keeps the CA, the root keys and the registry, so
// the ciphertext still decrypts everywhere.
func TestClusterServesAndRestarts(t *testing.T) {
	dir := t.TempDir()
	c := start(t, dir)
	if len(c.Edges) != 2 {
		t.Fatalf("%d edges, want 2", len(c.Edges))
	}
	admin := kbv1.NewKeyAdminClient(dial(t, c, c.Central.Addr(), identity.Admin, devcluster.AdminName))
	if _, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "demo", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	us := kbv1.NewKeyBrokerClient(dial(t, c, c.Edges[0].Addr(), identity.Client, devcluster.AppName))
	enc, err := us.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "demo", Plaintext: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	caBefore, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	c = start(t, dir)
	caAfter, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("a restart made a new CA")
	}
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{c.Central.Addr(), c.Edges[1].Addr()} {
		kb := kbv1.NewKeyBrokerClient(dial(t, c, addr, identity.Client, devcluster.AppName))
		dec, err := kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "hello" {
			t.Errorf("Decrypt at %s after a restart = %q, %v", addr, dec.GetPlaintext(), err)
		}
		h, err := healthpb.NewHealthClient(dial(t, c, addr, identity.Client, devcluster.AppName)).Check(t.Context(), &healthpb.HealthCheckRequest{})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health check at %s = %v, %v", addr, h.GetStatus(), err)
		}
	}
	checkDevCerts(t, dir)
	for _, f := range []string{"ca.key", "kek", "softkms.json", filepath.Join("certs", "app.key")} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v, readable by others", f, fi.Mode().Perm())
		}
	}
}

// TestClusterRefusesAnotherTrustDomain: a directory keeps its CA's trust
// domain; asking for another is an error, not a second CA.
func TestClusterRefusesAnotherTrustDomain(t *testing.T) {
	dir := t.TempDir()
	c := start(t, dir)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir, TrustDomain: "other.test", Edges: []devcluster.EdgeSpec{}}); err == nil {
		t.Fatal("Start with another trust domain succeeded")
	}
}
