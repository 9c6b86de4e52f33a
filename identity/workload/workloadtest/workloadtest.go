// Package workloadtest is a SPIFFE Workload API server for tests: an agent
// and its signing CA in one value, serving the SpiffeWorkloadAPI gRPC
// service on unix sockets, so tests in any package (and real keybroker
// processes they start) take their identity from it as they would from a
// SPIRE agent.
//
// # Model
//
// A [Server] is a trust domain with a CA. [Server.AddWorkload] opens one
// socket per workload — the real agent tells workloads apart by attesting
// the calling process; here each gets its own socket — serving X.509 SVIDs
// for the SPIFFE ids given, the first being the default. FetchX509SVID and
// FetchX509Bundles stream the current state and then every change.
// FetchJWTSVID and the other methods answer Unimplemented. As the real
// agent does, every call without the `workload.spiffe.io: true` metadata
// header is refused with InvalidArgument, and a workload with no ids gets
// PermissionDenied ("no identity issued").
//
// # Rotation
//
//   - [Workload.Stop] and [Workload.Restart] take the socket away and
//     bring it back, as when the agent restarts;
//   - [Server.RotateSVIDs] re-issues every SVID (new key, new serial), and
//     Options.RotateEvery does it on a period;
//   - a CA rotation is three steps, as SPIRE does it: [Server.PrepareCA]
//     adds a new CA to the bundle (SVIDs still signed by the old one),
//     [Server.ActivateCA] re-issues every SVID under the new CA (both CAs
//     still in the bundle: the overlap), [Server.RetireCAs] drops the old
//     CAs from the bundle. A test waits for its workloads to have seen one
//     step before it takes the next, as a real deployment waits longer than
//     the agents' sync interval.
//
// SVIDs are ECDSA P-256, valid from a minute before issue for Options.TTL,
// with key usage digitalSignature and extended key usages serverAuth and
// clientAuth, as SPIRE issues them; Options.Hosts adds DNS and IP SANs.
//
// # Use from an end-to-end test
//
//	srv := workloadtest.Start(t, workloadtest.Options{TrustDomain: "kb.test", RotateEvery: time.Second, TTL: 5 * time.Second})
//	w := srv.MustAddWorkload(t, "spiffe://kb.test/central/c1")
//	// start a process with --workload-api w.Addr(), or SPIFFE_ENDPOINT_SOCKET=w.Addr()
//	srv.RotateSVIDs()
package workloadtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Options configure a [Server]. The zero value is usable.
type Options struct {
	// TrustDomain is the trust domain of the CA; default "kb.test".
	TrustDomain string
	// TTL is how long each SVID is valid after issue; default one hour.
	TTL time.Duration
	// RotateEvery, when positive, re-issues every SVID on this period.
	RotateEvery time.Duration
	// Hosts are DNS names and IP addresses put in every SVID's SANs, for
	// peers that still check host names; none by default.
	Hosts []string
	// Dir is where the sockets are made; default a new directory under
	// the system's temporary directory (short, as unix socket paths must
	// be), removed by Close.
	Dir string
	// Now is the clock certificates are dated by; default time.Now.
	Now func() time.Time
}

// Server is a Workload API agent and its CA. Its methods are safe for
// concurrent use.
type Server struct {
	td    spiffeid.TrustDomain
	opts  Options
	dir   string
	ownDr bool

	mu        sync.Mutex
	cas       []*authority // the bundle, oldest first
	active    *authority   // the CA that signs SVIDs
	workloads []*Workload
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

type issued struct {
	id     string
	leaf   *x509.Certificate
	keyDER []byte // PKCS#8
}

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Workload is one socket of the agent and the SVIDs it serves.
type Workload struct {
	srv  *Server
	ids  []spiffeid.ID
	path string

	// under srv.mu
	gs      *grpc.Server // nil while stopped
	svids   []issued
	changed chan struct{} // closed and replaced on every change
}

// New starts a Server with its first CA. Close it when done.
func New(opts Options) (*Server, error) {
	if opts.TrustDomain == "" {
		opts.TrustDomain = "kb.test"
	}
	if opts.TTL == 0 {
		opts.TTL = time.Hour
	}
	if opts.TTL < 0 || opts.RotateEvery < 0 {
		return nil, errors.New("workloadtest: TTL and RotateEvery must not be negative")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("workloadtest: trust domain: %w", err)
	}
	s := &Server{td: td, opts: opts, dir: opts.Dir, stop: make(chan struct{})}
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "wlapi"); err != nil {
			return nil, fmt.Errorf("workloadtest: %w", err)
		}
		s.ownDr = true
	}
	ca, err := s.newCA()
	if err != nil {
		s.cleanup()
		return nil, err
	}
	s.cas, s.active = []*authority{ca}, ca
	if opts.RotateEvery > 0 {
		s.wg.Add(1)
		go s.rotateLoop()
	}
	return s, nil
}

// Start is New for a test: it fails tb on error and closes the Server when
// the test ends.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// TrustDomain is the Server's trust domain.
func (s *Server) TrustDomain() string { return s.td.Name() }

// AddWorkload opens a new socket serving SVIDs for ids (SPIFFE ids of the
// Server's trust domain, not necessarily of keybroker's form, so tests can
// offer wrong ones); the first is the default. With no ids the socket
// answers PermissionDenied, as an agent does for an unregistered process.
func (s *Server) AddWorkload(ids ...string) (*Workload, error) {
	w := &Workload{srv: s, changed: make(chan struct{})}
	for _, id := range ids {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return nil, fmt.Errorf("workloadtest: %q: %w", id, err)
		}
		w.ids = append(w.ids, sid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("workloadtest: server closed")
	}
	w.path = filepath.Join(s.dir, "agent"+strconv.Itoa(len(s.workloads))+".sock")
	if err := w.issueLocked(); err != nil {
		return nil, err
	}
	if err := w.serveLocked(); err != nil {
		return nil, err
	}
	s.workloads = append(s.workloads, w)
	return w, nil
}

func (w *Workload) serveLocked() error {
	lis, err := net.Listen("unix", w.path)
	if err != nil {
		return fmt.Errorf("workloadtest: %w", err)
	}
	gs := grpc.NewServer(grpc.StreamInterceptor(checkHeaderStream), grpc.UnaryInterceptor(checkHeaderUnary))
	workload.RegisterSpiffeWorkloadAPIServer(gs, &api{w: w})
	w.gs = gs
	go func() { _ = gs.Serve(lis) }()
	return nil
}

// Stop takes the workload's socket away, as when the agent stops: open
// streams break and new calls find no socket. SVIDs are still re-issued
// while it is stopped.
func (w *Workload) Stop() {
	w.srv.mu.Lock()
	gs := w.gs
	w.gs = nil
	w.srv.mu.Unlock()
	if gs != nil {
		gs.Stop() // closes the listener, which removes the socket file
	}
}

// Restart serves the workload's socket again after Stop, as an agent that
// comes back does.
func (w *Workload) Restart() error {
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	if w.srv.closed {
		return errors.New("workloadtest: server closed")
	}
	if w.gs != nil {
		return nil
	}
	return w.serveLocked()
}

// MustAddWorkload is AddWorkload for a test: it fails tb on error.
func (s *Server) MustAddWorkload(tb testing.TB, ids ...string) *Workload {
	tb.Helper()
	w, err := s.AddWorkload(ids...)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// SetIDs replaces the ids the workload is served (as when its
// registration entries change) and streams SVIDs for them.
func (w *Workload) SetIDs(ids ...string) error {
	var sids []spiffeid.ID
	for _, id := range ids {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return fmt.Errorf("workloadtest: %q: %w", id, err)
		}
		sids = append(sids, sid)
	}
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	w.ids = sids
	return w.issueLocked()
}

// Addr is the socket as a Workload API address: unix:///path.
func (w *Workload) Addr() string { return (&url.URL{Scheme: "unix", Path: w.path}).String() }

// Path is the socket's file path.
func (w *Workload) Path() string { return w.path }

// SVIDs are the leaf certificates the workload is served now, default first.
func (w *Workload) SVIDs() []*x509.Certificate {
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	out := make([]*x509.Certificate, len(w.svids))
	for i, v := range w.svids {
		out[i] = v.leaf
	}
	return out
}

// Bundle is the CA certificates in the bundle now, oldest first.
func (s *Server) Bundle() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*x509.Certificate, len(s.cas))
	for i, ca := range s.cas {
		out[i] = ca.cert
	}
	return out
}

// ActiveCA is the CA that signs SVIDs now.
func (s *Server) ActiveCA() *x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active.cert
}

// RotateSVIDs re-issues every workload's SVIDs under the active CA, with
// new keys and serials, and streams them.
func (s *Server) RotateSVIDs() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reissueLocked()
}

// PrepareCA makes a new CA and adds it to the bundle; SVIDs stay signed
// by the active CA. It returns the new CA's certificate.
func (s *Server) PrepareCA() (*x509.Certificate, error) {
	ca, err := s.newCA()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cas = append(s.cas, ca)
	for _, w := range s.workloads {
		w.refreshLocked()
	}
	return ca.cert, nil
}

// ActivateCA makes the newest CA of the bundle the signer and re-issues
// every SVID under it. The older CAs stay in the bundle.
func (s *Server) ActivateCA() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active = s.cas[len(s.cas)-1]
	return s.reissueLocked()
}

// RetireCAs drops every CA but the active one from the bundle.
func (s *Server) RetireCAs() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cas = []*authority{s.active}
	for _, w := range s.workloads {
		w.refreshLocked()
	}
}

// Close stops rotating, closes every socket and removes the directory the
// Server made.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ws := s.workloads
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	for _, w := range ws {
		w.Stop()
	}
	s.cleanup()
	return nil
}

func (s *Server) cleanup() {
	if s.ownDr {
		_ = os.RemoveAll(s.dir)
	}
}

func (s *Server) rotateLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.RotateEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			_ = s.RotateSVIDs() // only fails if crypto/rand does
		}
	}
}

func (s *Server) reissueLocked() error {
	for _, w := range s.workloads {
		if err := w.issueLocked(); err != nil {
			return err
		}
	}
	return nil
}

// issueLocked issues the workload's SVIDs under the active CA and tells its
// streams.
func (w *Workload) issueLocked() error {
	s := w.srv
	svids := make([]issued, 0, len(w.ids))
	for _, id := range w.ids {
		leaf, keyDER, err := s.issueLocked(id)
		if err != nil {
			return err
		}
		svids = append(svids, issued{id: id.String(), leaf: leaf, keyDER: keyDER})
	}
	w.svids = svids
	w.refreshLocked()
	return nil
}

// refreshLocked wakes the workload's streams to send its state again.
func (w *Workload) refreshLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

func (s *Server) bundleDERLocked() []byte {
	var b bytes.Buffer
	for _, ca := range s.cas {
		b.Write(ca.cert.Raw)
	}
	return b.Bytes()
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func (s *Server) newCA() (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("workloadtest: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("workloadtest: %w", err)
	}
	now := s.opts.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{"workloadtest"}, CommonName: s.td.Name() + " CA " + sn.Text(16)[:8]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{s.td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("workloadtest: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("workloadtest: %w", err)
	}
	return &authority{cert: cert, key: key}, nil
}

func (s *Server) issueLocked(id spiffeid.ID) (*x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("workloadtest: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, fmt.Errorf("workloadtest: %w", err)
	}
	now := s.opts.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{Organization: []string{"workloadtest"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(s.opts.TTL),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
	}
	for _, h := range s.opts.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.active.cert, &key.PublicKey, s.active.key)
	if err != nil {
		return nil, nil, fmt.Errorf("workloadtest: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("workloadtest: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("workloadtest: %w", err)
	}
	return leaf, keyDER, nil
}

// snapshot is the workload's current response and the channel closed on
// its next change.
func (w *Workload) snapshot() ([]*workload.X509SVID, []byte, <-chan struct{}) {
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	bundle := w.srv.bundleDERLocked()
	out := make([]*workload.X509SVID, len(w.svids))
	for i, v := range w.svids {
		out[i] = &workload.X509SVID{SpiffeId: v.id, X509Svid: v.leaf.Raw, X509SvidKey: v.keyDER, Bundle: bundle}
	}
	return out, bundle, w.changed
}

// HeaderMissing is the message with which calls lacking the security
// header are refused, as SPIRE's agent words it.
const HeaderMissing = "security header missing from request"

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, HeaderMissing)
	}
	return nil
}

func checkHeaderStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := checkHeader(ss.Context()); err != nil {
		return err
	}
	return h(srv, ss)
}

func checkHeaderUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

type api struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	w *Workload
}

func (a *api) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	for {
		svids, _, changed := a.w.snapshot()
		if len(svids) == 0 {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		if err := stream.Send(&workload.X509SVIDResponse{Svids: svids}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		case <-a.w.srv.stop:
			return status.Error(codes.Unavailable, "agent stopping")
		}
	}
}

func (a *api) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	td := a.w.srv.td.IDString()
	for {
		svids, bundle, changed := a.w.snapshot()
		if len(svids) == 0 {
			return status.Error(codes.PermissionDenied, "no identity issued")
		}
		if err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{td: bundle}}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		case <-a.w.srv.stop:
			return status.Error(codes.Unavailable, "agent stopping")
		}
	}
}
