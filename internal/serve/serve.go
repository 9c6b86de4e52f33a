// Package serve runs what every keybroker node serves besides its own
// services: the gRPC server's lifecycle with the standard health service,
// and the operations endpoints (/healthz, /readyz, /metrics) over the same
// mutual TLS.
//
// # Stopping
//
// [Servers.Stop] ends the streams that never end by themselves first —
// server-streaming calls, such as an edge's Watch — with Unavailable ("the
// node is stopping"), then lets unary and client-streaming calls in flight
// finish within the caller's deadline. A graceful stop would otherwise
// wait for every open Watch stream until the shutdown timeout ran out:
// a central node with connected edges took shutdown_timeout (30 s by
// default) to stop, doing nothing. The followers reconnect, to this node
// once it is back or to another.
//
// # Who may use the operations endpoints
//
// Only the principals an Allow list names: kinds (admin by default) and
// full SPIFFE ids of the node's trust domain. Anyone else — a client
// certificate of the same CA, an edge, a foreign trust domain — gets 403
// and an empty body, on every path. /readyz says ready or not and why in
// the node's own words; a backend's error text goes to the log, not the
// body, since metrics and readiness are read by monitoring, not by people
// entitled to a root of trust's internals.
package serve

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/identity"
)

// Servers are a node's gRPC server and its operations server.
type Servers struct {
	// GRPC is where the node registers its services.
	GRPC   *grpc.Server
	health *health.Server
	ops    *http.Server
	errs   chan error
	// streams is the context of every server-streaming call; Stop
	// cancels it first.
	streams    context.Context
	endStreams context.CancelCauseFunc
}

// errStopping ends the server-streaming calls of a stopping node.
var errStopping = status.Error(codes.Unavailable, "the node is stopping: reconnect")

// New makes the gRPC server (with opts) and the operations server (with
// handler, over tlsCfg). grpc.health.v1 is registered: it answers SERVING
// while the node serves, like /healthz (readiness is /readyz), and it is
// the no-op RPC benchmarks compare with — the same TLS, interceptors and
// authentication as any call, and no work.
func New(tlsCfg *tls.Config, handler http.Handler, opts ...grpc.ServerOption) *Servers {
	s := &Servers{
		health: health.NewServer(),
		ops:    &http.Server{Handler: handler, TLSConfig: tlsCfg.Clone(), ReadHeaderTimeout: 10 * time.Second},
		errs:   make(chan error, 2),
	}
	s.streams, s.endStreams = context.WithCancelCause(context.Background())
	// Outermost, so that the node's own interceptors see the context Stop
	// ends.
	s.GRPC = grpc.NewServer(append([]grpc.ServerOption{grpc.ChainStreamInterceptor(s.endOnStop)}, opts...)...)
	healthpb.RegisterHealthServer(s.GRPC, s.health)
	return s
}

// endOnStop gives a server-streaming call a context Stop cancels, and
// then answers errStopping whatever the handler returns.
func (s *Servers) endOnStop(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !info.IsServerStream || info.IsClientStream {
		return handler(srv, ss)
	}
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	stop := context.AfterFunc(s.streams, func() { cancel(errStopping) })
	defer stop()
	err := handler(srv, &stoppableStream{ServerStream: ss, ctx: ctx})
	if s.streams.Err() != nil && ss.Context().Err() == nil {
		return errStopping
	}
	return err
}

type stoppableStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stoppableStream) Context() context.Context { return s.ctx }

// Start serves gRPC on lis and the operations endpoints on opsLis.
func (s *Servers) Start(lis, opsLis net.Listener) {
	go func() { s.errs <- s.GRPC.Serve(lis) }()
	go func() {
		err := s.ops.Serve(tls.NewListener(opsLis, s.ops.TLSConfig))
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.errs <- err
	}()
}

// Done reports a server that stopped on its own (an error from Serve).
func (s *Servers) Done() <-chan error { return s.errs }

// Stop reports NOT_SERVING, ends the server-streaming calls, lets calls in
// flight finish within ctx (then cuts them off), and stops the operations
// server.
func (s *Servers) Stop(ctx context.Context, log *slog.Logger) error {
	s.health.Shutdown()
	s.endStreams(errStopping)
	done := make(chan struct{})
	go func() { s.GRPC.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("graceful stop timed out; cancelling in-flight calls")
		s.GRPC.Stop()
	}
	return s.ops.Shutdown(ctx)
}

// Ready says whether a node may be served and why: the checks go into
// /readyz's JSON body.
type Ready func(ctx context.Context) (ready bool, checks map[string]any)

// Allow names who may use the operations endpoints.
type Allow struct {
	// TrustDomain is the node's: a peer of another is refused.
	TrustDomain string
	// Kinds admits every identity of a kind.
	Kinds []identity.Kind
	// IDs admits single identities.
	IDs []identity.Identity
}

// Admits reports whether id may use the operations endpoints.
func (a Allow) Admits(id identity.Identity) bool {
	return id.TrustDomain == a.TrustDomain && (slices.Contains(a.Kinds, id.Kind) || slices.Contains(a.IDs, id))
}

// peerOf is the identity of an HTTP request's verified client certificate.
func peerOf(r *http.Request) (identity.Identity, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return identity.Identity{}, false
	}
	id, err := identity.FromCertificate(r.TLS.VerifiedChains[0][0])
	return id, err == nil
}

// OpsHandler serves /healthz (the process is up), /readyz (ready, with its
// checks as JSON; 503 when not ready; ready has 5 seconds) and /metrics to
// the principals allow admits; everyone else gets 403 and nothing else.
func OpsHandler(metrics *prometheus.Registry, ready Ready, allow Allow) http.Handler {
	mux := opsMux(metrics, ready)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := peerOf(r); !ok || !allow.Admits(id) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func opsMux(metrics *prometheus.Registry, ready Ready) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		ok, checks := ready(ctx)
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": ok, "checks": checks})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	return mux
}
