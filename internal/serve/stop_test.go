package serve

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestStopEndsStreams: a node with a server-streaming call open (an edge's
// Watch; here the health service's Watch, a stream that never ends by
// itself either) stops because Stop ends the stream — the caller hears
// Unavailable, "stopping" — not because the graceful stop's deadline ran
// out. Before, Stop waited for the stream until ctx ended (a central node
// with connected edges took its whole shutdown_timeout), so this test's
// minute-long deadline would run out and the warning be logged. Unary
// calls in flight are still let finish.
func TestStopEndsStreams(t *testing.T) {
	s := New(&tls.Config{}, http.NotFoundHandler())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Start(lis, opsLis)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	stream, err := hc.Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: first answer %v, %v; want SERVING", r, err)
	}

	var logs bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(ctx, slog.New(slog.NewTextHandler(&logs, nil))) }()
	var end error
	for end == nil {
		_, end = stream.Recv() // NOT_SERVING may come first
	}
	if status.Code(end) != codes.Unavailable || !strings.Contains(status.Convert(end).Message(), "stopping") {
		t.Errorf("the open stream ended with %v, want Unavailable saying the node is stopping", end)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop = %v", err)
	}
	if strings.Contains(logs.String(), "timed out") {
		t.Errorf("Stop waited the stream out instead of ending it:\n%s", logs.String())
	}
	if ctx.Err() != nil {
		t.Error("Stop returned only once its deadline had passed")
	}
}
