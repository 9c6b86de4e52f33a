package identity

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestParse(t *testing.T) {
	id, err := Parse("spiffe://kb.test/client/billing-app")
	if err != nil || id != (Identity{TrustDomain: "kb.test", Kind: Client, Name: "billing-app"}) {
		t.Fatalf("Parse = %+v, %v", id, err)
	}
	if id.String() != "spiffe://kb.test/client/billing-app" {
		t.Errorf("String() = %q", id.String())
	}
	for _, bad := range []string{
		"https://kb.test/client/a", "spiffe://kb.test/robot/a", "spiffe://kb.test/client", "spiffe://kb.test/client/a/b",
		"spiffe://KB.test/client/a", "spiffe://kb.test:8443/client/a", "spiffe://u@kb.test/client/a", "spiffe://kb.test/client/-a",
		"spiffe://kb.test/client/a?x=1", "spiffe://kb.test/client/%61pp", "SPIFFE://kb.test/client/a", "spiffe://kb.test/client/a?", "spiffe://kb.test/client/a#", "spiffe:///client/a", "spiffe://kb.test/client/" + strings.Repeat("a", 129),
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

type cluster struct {
	dir    string
	ca     *CA
	caFile string
}

func newCluster(t *testing.T, td string) *cluster {
	t.Helper()
	ca, err := NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &cluster{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt")}
	if err := ca.WriteCA(c.caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) issue(t *testing.T, kind Kind, name string) TLSFiles {
	t.Helper()
	var hosts []string
	if kind.Serves() {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	f, err := c.ca.IssueFiles(Identity{TrustDomain: c.ca.TrustDomain, Kind: kind, Name: name}, hosts, time.Hour, c.dir, name, c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// serve starts a gRPC health server behind the identity interceptors and
// records the identity of each call.
func serve(t *testing.T, files TLSFiles, td string) (addr string, seen func() []Identity) {
	t.Helper()
	cfg, err := files.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var ids []Identity
	// authenticate is how a server authenticates a caller (package rpc
	// does the same, and audits refusals).
	authenticate := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, err := FromPeer(ctx, td)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		return h(NewContext(ctx, id), req)
	}
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, ok := FromContext(ctx)
		if !ok {
			return nil, status.Error(codes.Internal, "no identity in context")
		}
		mu.Lock()
		ids = append(ids, id)
		mu.Unlock()
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)), grpc.ChainUnaryInterceptor(authenticate, record))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), func() []Identity { mu.Lock(); defer mu.Unlock(); return append([]Identity(nil), ids...) }
}

func call(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestMutualTLS(t *testing.T) {
	c := newCluster(t, "kb.test")
	addr, seen := serve(t, c.issue(t, Central, "central"), "kb.test")

	clientCfg, err := c.issue(t, Client, "billing").ClientConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if err := call(t, addr, clientCfg); err != nil {
		t.Fatalf("call with a good client certificate: %v", err)
	}
	if got := seen(); len(got) != 1 || got[0].String() != "spiffe://kb.test/client/billing" {
		t.Errorf("identities seen = %v", got)
	}

	// A certificate from another CA fails the handshake.
	other := newCluster(t, "kb.test")
	foreign, _ := other.issue(t, Client, "mallory").ClientConfig("")
	foreign.RootCAs = clientCfg.RootCAs // trusts the server, but the server does not trust it
	if err := call(t, addr, foreign); status.Code(err) != codes.Unavailable {
		t.Errorf("call with a foreign certificate: %v, want Unavailable (handshake refused)", err)
	}

	// No client certificate at all.
	anon := clientCfg.Clone()
	anon.Certificates = nil
	if err := call(t, addr, anon); status.Code(err) != codes.Unavailable {
		t.Errorf("call without a certificate: %v, want Unavailable", err)
	}
	if n := len(seen()); n != 1 {
		t.Errorf("unauthenticated calls reached the handler: %d identities seen", n)
	}
}

func TestWrongTrustDomain(t *testing.T) {
	c := newCluster(t, "other.test")
	addr, _ := serve(t, c.issue(t, Central, "central"), "kb.test")
	cfg, _ := c.issue(t, Client, "app").ClientConfig("")
	err := call(t, addr, cfg)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("call from another trust domain: %v, want Unauthenticated naming the trust domain", err)
	}
}

func TestIssueRules(t *testing.T) {
	c := newCluster(t, "kb.test")
	if _, _, err := c.ca.Issue(Identity{TrustDomain: "x.test", Kind: Client, Name: "a"}, nil, time.Hour); err == nil {
		t.Error("issued outside the trust domain")
	}
	if _, _, err := c.ca.Issue(Identity{TrustDomain: "kb.test", Kind: "robot", Name: "a"}, nil, time.Hour); err == nil {
		t.Error("issued for an unknown kind")
	}
	f := c.issue(t, Admin, "ops")
	st, err := os.Stat(f.Key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, %v; want 0600", st.Mode().Perm(), err)
	}
	ca2, err := LoadCA(c.caFile, filepath.Join(c.dir, "ca.key"))
	if err != nil || ca2.TrustDomain != "kb.test" {
		t.Fatalf("LoadCA = %+v, %v", ca2, err)
	}
	if err := (TLSFiles{CA: c.caFile}).Validate(); err == nil {
		t.Error("incomplete TLSFiles validated")
	}
	if _, err := (TLSFiles{CA: f.Key, Cert: f.Cert, Key: f.Key}).ServerConfig(); err == nil {
		t.Error("a key file accepted as a CA bundle")
	}
}
