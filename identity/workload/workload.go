// Package workload takes a process's identity from a SPIFFE Workload API
// agent (SPIRE's agent, or any server of the SpiffeWorkloadAPI service): an
// X.509 SVID, its private key and the CA bundle of its trust domain, rotated
// as the agent rotates them. A [Source] is an [identity.Source], so
// whatever builds TLS configurations from one builds them from the agent.
//
// # Forms of the socket
//
// [NewSource] and [ParseSocket] accept the agent's socket as
//
//   - unix:///run/spire/agent.sock — a unix socket URI, as SPIFFE_ENDPOINT_SOCKET is written;
//   - /run/spire/agent.sock — a path (a relative one is made absolute);
//   - "" — the value of the SPIFFE_ENDPOINT_SOCKET environment variable.
//
// tcp:// addresses are refused: over TCP the agent cannot attest the
// calling process, so anyone who reaches the port gets its SVIDs.
//
// # What is accepted
//
// The SVID must name a keybroker identity,
// spiffe://<trust-domain>/<kind>/<name> ([identity.Parse]); any other
// SPIFFE id is refused with an error saying so, at start and at every
// rotation, and so is one that does not verify, now, against the bundle
// (expired, not yet valid, signed by a CA the bundle lacks). When the
// agent gives several SVIDs the first (the agent's
// default) is used, or the one [Options.ID] names. The id is pinned at
// start: a later SVID naming another id (the agent's registration entries
// changed) is refused, as a process's name does not change while it runs;
// restart the process to take the new one. The trust anchors are the
// agent's bundle for the SVID's own trust domain; federated bundles are
// ignored, as keybroker trusts one trust domain.
//
// # Rotation and failure
//
// A goroutine follows the agent's stream (go-spiffe's
// workloadapi.X509Source, which redials with backoff when the agent goes
// away). Each update that changes the SVID or the bundle becomes a new
// [identity.Material], stored atomically, and Changes receives a value.
// An update that cannot be used (a non-keybroker id, no SVID with
// [Options.ID], another id than at start, no bundle for the SVID's trust
// domain) is logged and
// dropped: the previous Material stays in force, and [Source.Err] says why
// until a good update arrives. If the agent stays away the last SVID is
// kept and peers refuse it once it expires: the Source never invents an
// identity.
//
// # Concurrency
//
// Current is a single atomic load, safe from any goroutine and cheap enough
// for every TLS handshake. Close stops the goroutine and the stream and
// may be called more than once.
package workload

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/keybroker/keybroker/identity"
)

// SocketEnv is the environment variable naming the agent's socket when
// none is given.
const SocketEnv = workloadapi.SocketEnv

// DefaultTimeout bounds the wait for the first SVID when Options.Timeout
// is zero.
const DefaultTimeout = 30 * time.Second

// Options tune [NewSource]. The zero value is ready to use.
type Options struct {
	// Timeout bounds the wait for the agent's first usable update (a
	// deadline of ctx that comes sooner wins). Zero means DefaultTimeout.
	Timeout time.Duration
	// ID, when not empty, is the keybroker SPIFFE id of the SVID to use
	// when the agent gives several; without it the agent's default (its
	// first) is used.
	ID string
	// Logger receives the Workload API client's errors (agent absent,
	// stream broken) and refused updates. Nil discards them.
	Logger *slog.Logger
}

// Validate checks the options without dialling.
func (o Options) Validate() error {
	if o.Timeout < 0 {
		return fmt.Errorf("workload: timeout %s is negative", o.Timeout)
	}
	if o.ID != "" {
		if _, err := identity.Parse(o.ID); err != nil {
			return fmt.Errorf("workload: SVID id to pick: %w", err)
		}
	}
	return nil
}

// Source is an [identity.Source] fed by a Workload API agent.
type Source struct {
	addr string
	want string // Options.ID
	log  *slog.Logger
	x    *workloadapi.X509Source

	cur     atomic.Pointer[identity.Material]
	err     atomic.Pointer[error]
	offered atomic.Pointer[[]string] // ids of the SVIDs in the agent's last update
	changes chan struct{}

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ identity.Source = (*Source)(nil)

// ParseSocket turns the agent's socket, in one of the forms the package
// doc lists, into the address the Workload API client dials.
func ParseSocket(socket string) (string, error) {
	if socket == "" {
		env, ok := os.LookupEnv(SocketEnv)
		if !ok || env == "" {
			return "", fmt.Errorf("workload: no Workload API socket given and %s is not set", SocketEnv)
		}
		socket = env
	}
	addr := socket
	if !strings.Contains(socket, "://") {
		if strings.ContainsAny(socket, "?#") || strings.HasPrefix(socket, "unix:") || strings.HasPrefix(socket, "tcp:") {
			return "", fmt.Errorf("workload: socket %q is neither unix:///path nor a path", socket)
		}
		abs, err := filepath.Abs(socket)
		if err != nil {
			return "", fmt.Errorf("workload: socket %q: %w", socket, err)
		}
		addr = (&url.URL{Scheme: "unix", Path: abs}).String()
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("workload: socket %q: %w", socket, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("workload: socket %q: only unix sockets are accepted (the agent attests callers by their process; over %s anyone reaching it gets the SVIDs)", socket, u.Scheme)
	}
	if u.Host != "" {
		return "", fmt.Errorf("workload: socket %q: write a unix socket as unix:///absolute/path", socket)
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return "", fmt.Errorf("workload: socket %q: %w", socket, err)
	}
	return addr, nil
}

// NewSource connects to the Workload API agent at socket (see the package
// doc for its forms) and waits for its first SVID and bundle, for at most
// opts.Timeout or until ctx is done. It fails, naming the socket, when the
// agent is absent, gives no SVID in time, or gives one that is not a
// keybroker identity.
func NewSource(ctx context.Context, socket string, opts Options) (*Source, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	addr, err := ParseSocket(socket)
	if err != nil {
		return nil, err
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("workload_api", addr)
	s := &Source{
		addr:    addr,
		want:    opts.ID,
		log:     log,
		changes: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	lg := &apiLogger{log: log}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s.x, err = workloadapi.NewX509Source(wctx,
		workloadapi.WithClientOptions(workloadapi.WithAddr(addr), workloadapi.WithLogger(lg)),
		workloadapi.WithDefaultX509SVIDPicker(s.pick))
	if err != nil {
		if last := lg.last(); last != "" {
			return nil, fmt.Errorf("workload: no SVID from the Workload API at %s within %s: %w (last error: %s)", addr, timeout, err, last)
		}
		return nil, fmt.Errorf("workload: no SVID from the Workload API at %s within %s: %w", addr, timeout, err)
	}
	m, err := s.load()
	if err != nil {
		_ = s.x.Close()
		return nil, err
	}
	s.cur.Store(m)
	go s.follow()
	return s, nil
}

// Current is the identity in force: the last usable SVID and bundle.
func (s *Source) Current() *identity.Material { return s.cur.Load() }

// Changes receives a value after Current has changed (coalesced). It is
// never closed.
func (s *Source) Changes() <-chan struct{} { return s.changes }

// Err says why the agent's latest update was refused, or is nil when the
// latest update is in force.
func (s *Source) Err() error {
	if p := s.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Addr is the address of the agent, as dialled (unix:///path).
func (s *Source) Addr() string { return s.addr }

// Close stops following the agent and closes the stream.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.closeErr = s.x.Close()
	})
	return s.closeErr
}

// pick chooses the SVID from an update; nil when Options.ID is not among
// them (load says so).
func (s *Source) pick(svids []*x509svid.SVID) *x509svid.SVID {
	ids := make([]string, len(svids))
	for i, v := range svids {
		ids[i] = v.ID.String()
	}
	s.offered.Store(&ids)
	if s.want == "" {
		return svids[0] // the Workload API never sends an empty list (go-spiffe refuses one)
	}
	for _, v := range svids {
		if v.ID.String() == s.want {
			return v
		}
	}
	return nil
}

// follow turns every update from the agent into a Material until Close.
func (s *Source) follow() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.x.Updated():
		}
		m, err := s.load()
		if err != nil {
			s.err.Store(&err)
			s.log.Error("refused an update from the Workload API; keeping the previous SVID", "err", err, "kept", s.cur.Load().ID.String(), "kept_expires", s.cur.Load().Certificate.Leaf.NotAfter)
			continue
		}
		s.err.Store(nil)
		if same(s.cur.Load(), m) {
			continue
		}
		s.cur.Store(m)
		s.log.Info("identity rotated", "id", m.ID.String(), "serial", m.Certificate.Leaf.SerialNumber.String(), "expires", m.Certificate.Leaf.NotAfter, "roots", len(m.Roots))
		select {
		case s.changes <- struct{}{}:
		default:
		}
	}
}

// load builds a Material from the X509Source's latest SVID and the bundle
// of its trust domain.
func (s *Source) load() (*identity.Material, error) {
	svid, err := s.x.GetX509SVID()
	if err != nil || svid == nil {
		var ids []string
		if p := s.offered.Load(); p != nil {
			ids = *p
		}
		return nil, fmt.Errorf("workload: the Workload API at %s gives no SVID %s (it gives %s)", s.addr, s.want, strings.Join(ids, ", "))
	}
	id, err := identity.Parse(svid.ID.String())
	if err != nil {
		return nil, fmt.Errorf("workload: the Workload API at %s gives SVID %s, which is not a keybroker identity: %w", s.addr, svid.ID, err)
	}
	if cur := s.cur.Load(); cur != nil && cur.ID != id {
		return nil, fmt.Errorf("workload: the Workload API at %s now gives SVID %s, not %s as at start; the identity of a running process does not change (restart it to take the new one)", s.addr, id, cur.ID)
	}
	td := svid.ID.TrustDomain()
	b, err := s.x.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("workload: the Workload API at %s gives no X.509 bundle for trust domain %s", s.addr, td)
	}
	// An SVID that does not verify against its own bundle, now, would
	// only fail in peers' handshakes with nothing said here; say it here.
	inter := x509.NewCertPool()
	for _, c := range svid.Certificates[1:] {
		inter.AddCert(c)
	}
	roots := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		roots.AddCert(c)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("workload: SVID %s from %s does not verify against the agent's bundle for %s: %w", svid.ID, s.addr, td, err)
	}
	chain := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		chain[i] = c.Raw
	}
	m, err := identity.NewMaterial(&tls.Certificate{
		Certificate: chain,
		PrivateKey:  svid.PrivateKey,
		Leaf:        svid.Certificates[0],
	}, b.X509Authorities())
	if err != nil {
		return nil, fmt.Errorf("workload: SVID %s from %s: %w", svid.ID, s.addr, err)
	}
	return m, nil
}

// same says whether a and b present the same chain and trust the same
// anchors, so an agent resending its state is not a rotation.
func same(a, b *identity.Material) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Certificate.Certificate, b.Certificate.Certificate, bytes.Equal) &&
		slices.EqualFunc(a.Roots, b.Roots, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// apiLogger adapts slog to go-spiffe's logger and keeps the last error,
// so a start that times out can say what went wrong.
type apiLogger struct {
	log *slog.Logger
	mu  sync.Mutex
	msg string
}

func (l *apiLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l *apiLogger) Infof(format string, args ...any)  { l.log.Info(fmt.Sprintf(format, args...)) }
func (l *apiLogger) Warnf(format string, args ...any)  { l.log.Warn(fmt.Sprintf(format, args...)) }
func (l *apiLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.msg = msg
	l.mu.Unlock()
	l.log.Error(msg)
}

func (l *apiLogger) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg
}

// SelfError is a process's own SVID refused by the check of its role
// (identity.CheckSelf): the agent's registration entry for the process is
// what is wrong, not a file.
type SelfError struct {
	Socket string // the agent's socket, as configured
	Err    error  // the check's error
}

func (e *SelfError) Error() string {
	msg := strings.ReplaceAll(e.Err.Error(), "tls.cert", "the SVID")
	return fmt.Sprintf("%s (the SVID comes from the Workload API agent at %s: its registration entry for this process is wrong)", msg, e.Socket)
}

func (e *SelfError) Unwrap() error { return e.Err }

// ExplainSelf wraps err, the refusal of the SVID a process took from the
// agent at socket as its own, in a *SelfError; nil stays nil.
func ExplainSelf(err error, socket string) error {
	if err == nil {
		return nil
	}
	return &SelfError{Socket: socket, Err: err}
}
