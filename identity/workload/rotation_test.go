package workload_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/identity/workload/workloadtest"
)

// The TLS configurations below are the minimum that follows a Source:
// every handshake takes the certificate and the trust anchors of the
// moment. identity.Live will replace them in the nodes.

// serverTLS presents src's SVID and admits clients whose certificate chains
// to src's bundle and names a keybroker client; it calls seen with the
// leaf of every client it admits.
func serverTLS(src identity.Source, seen func(*x509.Certificate)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := src.Current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*m.Certificate},
				ClientCAs:    m.Pool(),
				ClientAuth:   tls.RequireAndVerifyClientCert,
				VerifyConnection: func(cs tls.ConnectionState) error {
					id, err := identity.FromCertificate(cs.PeerCertificates[0])
					if err != nil {
						return err
					}
					if id.Kind != identity.Client {
						return fmt.Errorf("peer %s is not a client", id)
					}
					seen(cs.PeerCertificates[0])
					return nil
				},
			}, nil
		},
	}
}

// clientTLS presents src's SVID and admits a server whose chain verifies
// against src's bundle of the moment and names a keybroker central node.
// SVIDs name no host, so the server is checked by SPIFFE id, not by host
// name (InsecureSkipVerify only turns off the host-name check, which
// VerifyConnection replaces).
func clientTLS(src identity.Source, seen func(*x509.Certificate)) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Current().Certificate, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:         src.Current().Pool(),
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return err
			}
			id, err := identity.FromCertificate(leaf)
			if err != nil {
				return err
			}
			if id.Kind != identity.Central {
				return fmt.Errorf("server %s is not a central node", id)
			}
			seen(leaf)
			return nil
		},
	}
}

// serials records the certificates one side saw in its handshakes.
type serials struct {
	mu   sync.Mutex
	seen map[string]*x509.Certificate
}

func (s *serials) add(c *x509.Certificate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]*x509.Certificate{}
	}
	s.seen[c.SerialNumber.String()] = c
}

func (s *serials) count(match func(*x509.Certificate) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.seen {
		if match == nil || match(c) {
			n++
		}
	}
	return n
}

// load is a health-checked gRPC server over mutual TLS from one Source and
// workers calling it with the other, each on a fresh connection every few
// calls so that handshakes go on through every rotation.
type load struct {
	bySrv, byCli serials // client leaves the server admitted; server leaves the clients admitted
	ok, failed   atomic.Int64
	errMu        sync.Mutex
	errs         []error
	stop         context.CancelFunc
	wg           sync.WaitGroup

	// epoch counts settle calls; started[i] is the epoch at which worker
	// i began its current session.
	epoch   atomic.Int64
	started [workers]atomic.Int64
}

const (
	workers        = 32
	callsPerDial   = 8
	maxErrsToPrint = 5
)

func startLoad(t *testing.T, server, client identity.Source) *load {
	t.Helper()
	l := &load{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS(server, l.bySrv.add))))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	creds := credentials.NewTLS(clientTLS(client, l.byCli.add))
	ctx, cancel := context.WithCancel(t.Context())
	l.stop = cancel
	for i := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				l.started[i].Store(l.epoch.Load())
				l.session(ctx, lis.Addr().String(), creds)
			}
		}()
	}
	return l
}

// session dials, makes callsPerDial calls and hangs up. A call counts as
// failed only if it fails while the test still runs.
func (l *load) session(ctx context.Context, addr string, creds credentials.TransportCredentials) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		l.fail(err)
		return
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	for range callsPerDial {
		// The call gets its own context: stopping the load must not
		// cut a call short and count it as failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			l.fail(err)
		} else {
			l.ok.Add(1)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func (l *load) fail(err error) {
	l.failed.Add(1)
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if len(l.errs) < maxErrsToPrint {
		l.errs = append(l.errs, err)
	}
}

// waitUntil waits, handshake by handshake, until cond holds; the bound only
// keeps a broken test from hanging.
func (l *load) waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("under load, never saw %s (%d calls ok, %d failed)", what, l.ok.Load(), l.failed.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// settle waits until every worker has begun a new session, so no
// handshake that began before the call is still in flight: each side of a
// handshake reads its Source at a different moment (the server its bundle
// at the ClientHello, the client its SVID a round trip later), so a step of
// a CA rotation is safe only once the handshakes begun before the previous
// step are over. A real deployment gets this for free from overlap periods
// of hours; the test takes its steps as fast as the sources follow them.
func (l *load) settle(t *testing.T) {
	t.Helper()
	e := l.epoch.Add(1)
	l.waitUntil(t, "every worker on a new connection", func() bool {
		for i := range l.started {
			if l.started[i].Load() < e {
				return false
			}
		}
		return true
	})
}

// finish stops the workers and fails t if any call failed.
func (l *load) finish(t *testing.T) {
	t.Helper()
	l.stop()
	l.wg.Wait()
	t.Logf("%d calls ok, %d failed; server admitted %d client SVIDs, clients admitted %d server SVIDs",
		l.ok.Load(), l.failed.Load(), l.bySrv.count(nil), l.byCli.count(nil))
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d calls failed during rotation, want 0; first errors: %v", n, l.errs)
	}
	if l.ok.Load() == 0 {
		t.Error("no call succeeded")
	}
}

func rotatingSources(t *testing.T, opts workloadtest.Options) (*workloadtest.Server, *workload.Source, *workload.Source) {
	srv := workloadtest.Start(t, opts)
	ws := srv.MustAddWorkload(t, centralID)
	wc := srv.MustAddWorkload(t, clientID)
	return srv, newSource(t, ws.Addr(), workload.Options{}), newSource(t, wc.Addr(), workload.Options{})
}

// TestRotationUnderLoad rotates both sides' SVIDs every second (each valid
// for five) while 32 workers call over mutual TLS, and wants every call to
// succeed and both sides to have handshaken with several SVIDs of the
// other. It runs until each side has seen more SVIDs than fit in one
// lifetime, so the first ones have expired: a side that stopped following
// the agent would fail calls, and one that never followed it would never
// show a second SVID.
func TestRotationUnderLoad(t *testing.T) {
	const ttl, every = 5 * time.Second, time.Second
	_, serverSrc, clientSrc := rotatingSources(t, workloadtest.Options{TTL: ttl, RotateEvery: every})
	l := startLoad(t, serverSrc, clientSrc)
	const rotations = int(ttl/every) + 2 // distinct SVIDs each side must have seen
	l.waitUntil(t, fmt.Sprint(rotations, " SVIDs on each side"), func() bool {
		return l.bySrv.count(nil) >= rotations && l.byCli.count(nil) >= rotations
	})
	l.finish(t)
}

// TestCARotationUnderLoad replaces the CA while 32 workers call: the new
// CA enters the bundle, then signs the SVIDs while both are trusted, then
// the old one leaves. No call may fail at any step.
func TestCARotationUnderLoad(t *testing.T) {
	srv, serverSrc, clientSrc := rotatingSources(t, workloadtest.Options{TTL: 5 * time.Second, RotateEvery: time.Second})
	l := startLoad(t, serverSrc, clientSrc)
	oldCA := srv.ActiveCA()
	signedBy := func(ca *x509.Certificate) func(*x509.Certificate) bool {
		return func(c *x509.Certificate) bool { return c.CheckSignatureFrom(ca) == nil }
	}
	both := func(what string, cond func(*identity.Material) bool) {
		t.Helper()
		waitFor(t, serverSrc, what+" at the server", cond)
		waitFor(t, clientSrc, what+" at the client", cond)
	}
	l.waitUntil(t, "handshakes with the old CA", func() bool {
		return l.bySrv.count(signedBy(oldCA)) > 0 && l.byCli.count(signedBy(oldCA)) > 0
	})

	newCA, err := srv.PrepareCA()
	if err != nil {
		t.Fatal(err)
	}
	both("both CAs trusted", func(m *identity.Material) bool { return containsCert(m.Roots, newCA) })
	l.settle(t)

	if err := srv.ActivateCA(); err != nil {
		t.Fatal(err)
	}
	both("an SVID of the new CA", func(m *identity.Material) bool { return m.Certificate.Leaf.CheckSignatureFrom(newCA) == nil })
	l.settle(t)
	l.waitUntil(t, "handshakes with the new CA on both sides", func() bool {
		return l.bySrv.count(signedBy(newCA)) > 0 && l.byCli.count(signedBy(newCA)) > 0
	})

	srv.RetireCAs()
	both("the old CA dropped", func(m *identity.Material) bool { return !containsCert(m.Roots, oldCA) })
	l.settle(t)
	before := l.bySrv.count(nil) + l.byCli.count(nil)
	l.waitUntil(t, "handshakes after the old CA left", func() bool {
		return l.bySrv.count(nil)+l.byCli.count(nil) >= before+2
	})
	l.finish(t)
}

// The old CA must really be gone once retired: a client still presenting
// an SVID of the old CA is refused. Without this, the CA test would pass
// with a server that trusts everything.
func TestRetiredCAIsRefused(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	serverSrc := newSource(t, srv.MustAddWorkload(t, centralID).Addr(), workload.Options{})
	stale := srv.MustAddWorkload(t, clientID)
	staleSrc := newSource(t, stale.Addr(), workload.Options{})
	frozen := identity.Static{M: staleSrc.Current()} // keeps the old CA's SVID and bundle

	if _, err := srv.PrepareCA(); err != nil {
		t.Fatal(err)
	}
	if err := srv.ActivateCA(); err != nil {
		t.Fatal(err)
	}
	srv.RetireCAs()
	waitFor(t, serverSrc, "the old CA dropped", func(m *identity.Material) bool { return len(m.Roots) == 1 && m.Roots[0].Equal(srv.ActiveCA()) })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var admitted serials
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS(serverSrc, admitted.add))))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	// The stale client trusts only the old CA, so it would refuse the
	// server too; let it trust the server so the server's refusal is what
	// is tested.
	cfg := clientTLS(frozen, func(*x509.Certificate) {})
	cfg.VerifyConnection = nil
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a client with an SVID of the retired CA was served")
	}
	if n := admitted.count(nil); n != 0 {
		t.Errorf("server admitted %d client certificates of the retired CA, want 0", n)
	}
}
