package edge_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edge"
	"github.com/keybroker/keybroker/identity"
)

// TestEdgeTriesEveryCentral: an edge whose central.address does not answer
// connects through central.addresses to a central node that does, and
// follows it (it reaches the central tier's revision).
func TestEdgeTriesEveryCentral(t *testing.T) {
	dc, cfg := stoppedEdge(t)
	// A port nothing listens on: the first central "went away".
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	live := cfg.Central.Address
	cfg.Central.Address, cfg.Central.Addresses = dead, []string{live}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n := startEdge(t, cfg)
	want := dc.Central.Service().Registry().Store().Revision()
	waitFollowing(t, n, want, func() string {
		return fmt.Sprintf("the edge did not reach the central at %s through central.addresses", live)
	})
}

// startEdge starts an edge on cfg, shut down with the test.
func startEdge(t *testing.T, cfg *config.Edge) *edge.Node {
	t.Helper()
	n, err := edge.Start(t.Context(), cfg, edge.Options{})
	if err != nil {
		t.Fatalf("edge.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Shutdown(ctx)
	})
	return n
}

// waitFollowing waits until n follows a central node and has applied rev,
// failing with what says after 30 seconds.
func waitFollowing(t *testing.T, n *edge.Node, rev uint64, what func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !n.Cache().Connected() || n.Cache().Revision() < rev {
		if time.Now().After(deadline) {
			t.Fatalf("%s (connected %v, revision %d of %d)", what(), n.Cache().Connected(), n.Cache().Revision(), rev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// refusingCentral is a central node that answers every Register with
// Unavailable, as a central cut off from its store does; it counts them.
type refusingCentral struct {
	kbv1.UnimplementedEdgeSyncServer
	asked atomic.Int32
}

func (r *refusingCentral) Register(context.Context, *kbv1.RegisterEdgeRequest) (*kbv1.RegisterEdgeResponse, error) {
	r.asked.Add(1)
	return nil, status.Error(codes.Unavailable, "this central node has not heard from its store")
}

// TestEdgeLeavesARefusingCentral: the first of an edge's central.addresses
// answers — its connection is up — but refuses the edge with Unavailable,
// as a central cut off from etcd does. pick_first alone would keep the
// edge on that connection for ever; the edge leaves the address out and
// follows the next central.
func TestEdgeLeavesARefusingCentral(t *testing.T) {
	dc, cfg := stoppedEdge(t)
	files, err := dc.IssueFiles(identity.Central, "central-cut", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(dc.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})))
	refusing := &refusingCentral{}
	kbv1.RegisterEdgeSyncServer(srv, refusing)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	live := cfg.Central.Address
	cfg.Central.Address, cfg.Central.Addresses = l.Addr().String(), []string{live}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	n := startEdge(t, cfg)
	waitFollowing(t, n, 0, func() string {
		return fmt.Sprintf("the edge did not leave the refusing central for %s (refused %d times)", live, refusing.asked.Load())
	})
	if refusing.asked.Load() == 0 {
		t.Errorf("the edge never asked the first central: the test proves nothing")
	}
}
