// Package node is the process shell central and edge nodes share: the
// node's live identity (TLS files or a SPIFFE Workload API agent, with
// revocation lists), the audit log, the metrics registry, the gRPC and
// operations listeners, the servers with the common interceptors, the
// node's background loops, and the order in which all of it stops. Package
// central and package edge keep only what is theirs (the broker service,
// the registry and its sweeps; the replica and the connection to the
// central tier) and call the [Shell] in the order their start needs.
// [Run] is the serve loop of `keybroker central` and `keybroker edge`.
//
// # Lifecycle
//
// A node makes a Shell with [New], opens its parts with
// [Shell.OpenIdentity], [Shell.MakeDataDir], [Shell.OpenAudit] and
// [Shell.Listen] between its own steps, all from its [config.Node] block,
// and starts serving with [Shell.Serve]; then it starts its loops with
// [Shell.Go]. A start that fails calls [Shell.Close] after
// closing what is its own; every step is safe to close half-done.
// [Shell.Shutdown] ends the loops' context, stops the servers gracefully
// within ctx (package serve), waits for the loops, and then closes the
// node's own resources before the shell's: the audit log (flushing it),
// the listeners, and the identity.
package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/internal/h2serve"
	"github.com/keybroker/keybroker/internal/serve"
	"github.com/keybroker/keybroker/rpc"
)

// Shell is what a central or edge node's process has besides its own
// services. Its fields are nil until the step that opens them.
type Shell struct {
	name    string // prefixes errors: "central", "edge"
	log     *slog.Logger
	metrics *prometheus.Registry
	id      *identity.Live
	audit   *audit.Log
	servers *serve.Servers
	lis     net.Listener
	opsLis  net.Listener
	fronts  []*http.Server // front-ends of their own (ServeFront)

	frontOnce  sync.Once
	frontCount *prometheus.CounterVec
	frontTime  *prometheus.HistogramVec

	loopCtx context.Context
	stop    context.CancelFunc
	loops   sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
}

// New makes a node's shell: a logger (nil discards) and a metrics
// registry with the Go and process collectors. name ("central", "edge")
// prefixes its errors.
func New(name string, log *slog.Logger) *Shell {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Shell{name: name, log: log, metrics: metrics}
}

// Log is the node's logger.
func (s *Shell) Log() *slog.Logger { return s.log }

// Metrics is the registry /metrics serves.
func (s *Shell) Metrics() *prometheus.Registry { return s.metrics }

// ID is the node's live identity (nil before OpenIdentity).
func (s *Shell) ID() *identity.Live { return s.id }

// Audit is the node's audit log (nil before OpenAudit).
func (s *Shell) Audit() *audit.Log { return s.audit }

// OpenIdentity opens the node's identity — its TLS files, or a SPIFFE
// Workload API agent when the configuration names one (waiting for the
// agent's first SVID, for spiffe.timeout at most) — and its revocation
// lists. check refuses a certificate that cannot serve as this node's, at
// start and at every rotation (the one in force then stays); an SVID's
// refusal is explained with the agent's socket.
func (s *Shell) OpenIdentity(ctx context.Context, c config.Node, check func(*identity.Material) error) error {
	var files identity.Source
	var err error
	if c.SPIFFE.Enabled() {
		files, err = workload.NewSource(ctx, c.SPIFFE.Socket, c.SPIFFE.Options(s.log))
	} else {
		files, err = identity.NewFileSource(c.TLS.Files(), c.TLS.FileOptions(s.log))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	src, err := identity.NewChecked(files, func(m *identity.Material) error {
		err := check(m)
		if err != nil && c.SPIFFE.Enabled() {
			return workload.ExplainSelf(err, c.SPIFFE.Socket)
		}
		return err
	}, s.log)
	if err != nil {
		files.Close()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	rev, err := identity.NewRevocation(c.TLS.Revocation(), func() []*x509.Certificate { return src.Current().Roots }, c.TLS.FileOptions(s.log))
	if err != nil {
		src.Close()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.id = identity.NewLive(src, rev, s.log)
	return nil
}

// OpenAudit opens the audit log the node's audit block names,
// authenticating its head with the key in audit.head_key_file when one is
// named. Open checks the log's end only; the rest of its chain is verified
// in the background (audit.Log.Check), and the shell reports that pass:
// keybroker_audit_chain_verified and keybroker_audit_chain_broken (1 or
// 0; both 0 while it runs), keybroker_audit_verify_seconds, /readyz's
// "audit_chain" check (detail, never a reason not to be ready: see package
// audit), a log line, and a VerifyAuditChain line in the log itself.
func (s *Shell) OpenAudit(n config.Node) error {
	c := n.Audit
	ac := audit.Config{Path: c.Path, FlushInterval: c.FlushInterval}
	if c.HeadKeyFile != "" {
		var err error
		if ac.HeadKey, err = audit.ReadHeadKey(c.HeadKeyFile); err != nil {
			return err
		}
	}
	// The pass may end before OpenConfig returns; it waits for l.
	opened := make(chan *audit.Log, 1)
	ac.Checked = func(r audit.ChainCheck) { s.auditChecked(<-opened, n.NodeID, r) }
	l, err := audit.OpenConfig(ac)
	if err != nil {
		return err
	}
	opened <- l
	s.audit = l
	check := func(want audit.CheckState) func() float64 {
		return func() float64 {
			if l.Check().State == want {
				return 1
			}
			return 0
		}
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keybroker_audit_chain_verified",
			Help: "1 once the background pass has verified the audit log's whole hash chain as it was at start; 0 while it runs, or if it found the chain broken or could not read the log."},
			check(audit.Verified)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keybroker_audit_chain_broken",
			Help: "1 if the background pass found the audit log's hash chain broken (the log names where; `keybroker audit verify` checks it offline)."},
			check(audit.Broken)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keybroker_audit_verify_seconds",
			Help: "How long the background pass over the audit log's hash chain took (0 while it runs)."},
			func() float64 { return l.Check().Took.Seconds() }),
	} {
		if err := s.metrics.Register(c); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// auditChecked reports the end of the background pass over the audit
// log's chain: a log line, and a line in the log itself, so that the
// record says when its earlier part was last found intact or broken (not
// for a new log, which had nothing to verify).
func (s *Shell) auditChecked(l *audit.Log, nodeID string, r audit.ChainCheck) {
	if r.State == audit.Verified && r.Upto == 0 {
		return // a new log: nothing was there to verify
	}
	rec := audit.Record{Principal: "system", Node: nodeID, Operation: "VerifyAuditChain", Decision: audit.Allow, Outcome: "ok",
		Detail: fmt.Sprintf("lines 1-%d verified in %s", r.Upto, r.Took.Round(time.Millisecond))}
	switch r.State {
	case audit.Verified:
		s.log.Info("audit chain verified", "lines", r.Upto, "took", r.Took)
	case audit.Broken:
		s.log.Error("audit chain BROKEN: the log was altered before this start; the node goes on appending to it", "lines_verified", r.Lines, "lines", r.Upto, "err", r.Err)
		rec.Outcome, rec.Detail = "broken", fmt.Sprintf("lines 1-%d checked: %v", r.Upto, r.Err)
	default:
		s.log.Error("audit chain not verified: the log could not be read", "lines_verified", r.Lines, "lines", r.Upto, "err", r.Err)
		rec.Outcome, rec.Detail = "failed", fmt.Sprintf("lines 1-%d not checked: %v", r.Upto, r.Err)
	}
	if err := l.Append(rec); err != nil {
		s.log.Warn("could not audit the chain's verification", "err", err)
	}
}

// auditReady is /readyz's detail on the audit chain.
func (s *Shell) auditReady(checks map[string]any) {
	if s.audit == nil {
		return
	}
	c := s.audit.Check()
	switch c.State {
	case audit.Checking:
		checks["audit_chain"] = fmt.Sprintf("checking lines 1-%d in the background", c.Upto)
	case audit.Verified:
		checks["audit_chain"] = fmt.Sprintf("verified, %d lines in %s", c.Upto, c.Took.Round(time.Millisecond))
	case audit.Broken:
		checks["audit_chain"] = "BROKEN: " + c.Err.Error()
	default:
		checks["audit_chain"] = c.State.String()
	}
}

// MakeDataDir makes data_dir and its missing parents (mode 0700) and
// returns the directories it made, data_dir first, so that a node whose
// start fails may take back what it made (the edge does).
func (s *Shell) MakeDataDir(c config.Node) ([]string, error) {
	var missing []string
	for d := filepath.Clean(c.DataDir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: data_dir: %w", s.name, err)
	}
	return missing, nil
}

// Listen binds the gRPC and operations listeners (listen, ops_listen)
// and returns the address the node advertises: advertise_address, or the
// gRPC listener's address with the port actually bound (listen may ask
// for port 0). A node listens before it builds its services, so that they
// know that address.
func (s *Shell) Listen(c config.Node) (string, error) {
	var err error
	if s.lis, err = net.Listen("tcp", c.Listen); err != nil {
		return "", fmt.Errorf("%s: listen: %w", s.name, err)
	}
	if s.opsLis, err = net.Listen("tcp", c.OpsListen); err != nil {
		return "", fmt.Errorf("%s: ops_listen: %w", s.name, err)
	}
	if c.AdvertiseAddress != "" {
		return c.AdvertiseAddress, nil
	}
	return s.lis.Addr().String(), nil
}

// Serving is what a node serves through the shell.
type Serving struct {
	// Node gives the trust domain, ops.allow and limits.
	Node config.Node
	// Ready answers /readyz.
	Ready serve.Ready
	// Unary and Stream are the node's interceptors, after the shell's
	// call metrics.
	Unary  grpc.UnaryServerInterceptor
	Stream grpc.StreamServerInterceptor
	// Register registers the node's services.
	Register func(*grpc.Server)
}

// Serve builds the gRPC server (the node's identity as credentials,
// limits.max_request_bytes, call metrics then the node's interceptors)
// and the operations server (ops.allow's principals only), and starts
// both on the listeners. Loops started with Go from then on run until
// Shutdown, on a context that outlives ctx's cancellation.
func (s *Shell) Serve(ctx context.Context, c Serving) {
	calls := rpc.NewMetrics(s.metrics)
	kinds, ids := c.Node.Ops.Principals()
	ready := func(ctx context.Context) (bool, map[string]any) {
		ok, checks := c.Ready(ctx)
		if checks == nil {
			checks = map[string]any{}
		}
		s.auditReady(checks)
		return ok, checks
	}
	s.servers = serve.New(s.id.ServerTLS(), serve.OpsHandler(s.metrics, ready, serve.Allow{TrustDomain: c.Node.TrustDomain, Kinds: kinds, IDs: ids}),
		grpc.Creds(s.id.ServerCredentials()),
		grpc.MaxRecvMsgSize(c.Node.Limits.MaxRequestBytes),
		grpc.ChainUnaryInterceptor(calls.Interceptor, c.Unary),
		grpc.ChainStreamInterceptor(c.Stream),
	)
	c.Register(s.servers.GRPC)
	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	s.servers.Start(s.lis, s.opsLis)
	s.loopCtx = loopCtx
}

// ServeFront listens on addr and serves h over TLS (tlsCfg) until
// Shutdown — a front-end with a listener of its own, such as the AWS KMS
// API — and returns the address bound. Call it after Serve. maxBody is the
// handler's bound on a request body: over HTTP/2 a body is read whole
// before the handler runs, and a longer one reaches it cut one byte past
// maxBody, so that the handler refuses it as too long.
func (s *Shell) ServeFront(name, addr string, tlsCfg *tls.Config, maxBody int64, h http.Handler) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s: %s: listen: %w", s.name, name, err)
	}
	h = s.frontMetrics(name, h)
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	// HTTP/1.1 is net/http's; HTTP/2 is h2serve's, which writes the
	// answers ready together in one TLS record and write (net/http's
	// HTTP/2 server wrote each on its own, about half of the node's CPU on
	// an AWS call).
	h2 := &h2serve.Server{Handler: h, MaxBodyBytes: maxBody, MaxHeaderBytes: 64 << 10,
		IdleTimeout: 2 * time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute, Log: s.log.With("front", name)}
	h2.Configure(srv)
	s.fronts = append(s.fronts, srv)
	go func() {
		if err := srv.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("front-end stopped", "front", name, "err", err)
		}
	}()
	return lis.Addr().String(), nil
}

// frontMetrics counts a front-end's answers by HTTP status and times them:
// keybroker_front_requests_total{front,code} and
// keybroker_front_request_seconds{front}. It does what promhttp's
// InstrumentHandlerCounter and InstrumentHandlerDuration do, with the
// series found once per front and status instead of per request, and one
// small writer instead of their delegators.
func (s *Shell) frontMetrics(name string, h http.Handler) http.Handler {
	s.frontOnce.Do(func() {
		s.frontCount = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keybroker_front_requests_total",
			Help: "Requests a front-end of its own listener (aws_kms, xks) answered, by HTTP status."}, []string{"front", "code"})
		s.frontTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keybroker_front_request_seconds",
			Help: "Time a front-end of its own listener took to answer.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"front"})
		s.metrics.MustRegister(s.frontCount, s.frontTime)
	})
	count, took := s.frontCount.MustCurryWith(prometheus.Labels{"front": name}), s.frontTime.WithLabelValues(name)
	var byCode sync.Map // HTTP status → prometheus.Counter
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriter{ResponseWriter: w}
		h.ServeHTTP(&sw, r)
		took.Observe(time.Since(start).Seconds())
		code := sw.code
		if code == 0 {
			code = http.StatusOK // nothing written: net/http answers 200
		}
		c, ok := byCode.Load(code)
		if !ok {
			c, _ = byCode.LoadOrStore(code, count.WithLabelValues(strconv.Itoa(code)))
		}
		c.(prometheus.Counter).Inc()
	})
}

// statusWriter remembers the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the listener's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Go runs loop in the background until Shutdown; call it after Serve.
func (s *Shell) Go(loop func(ctx context.Context)) {
	ctx := s.loopCtx
	s.loops.Go(func() { loop(ctx) })
}

// ReloadIdentity re-reads the TLS files and revocation lists now
// (SIGHUP). A failure keeps what is in force and is logged.
func (s *Shell) ReloadIdentity() {
	if err := s.id.Reload(); err != nil {
		s.log.Error("identity reload failed; the identity and revocation lists in force stay", "err", err)
	}
}

// Addr is the gRPC listener's address.
func (s *Shell) Addr() string { return s.lis.Addr().String() }

// OpsAddr is the operations listener's address.
func (s *Shell) OpsAddr() string { return s.opsLis.Addr().String() }

// Done reports a server that stopped on its own (an error from Serve).
func (s *Shell) Done() <-chan error { return s.servers.Done() }

// Shutdown stops serving gracefully within ctx, waits for the loops,
// then closes the node's own resources (closeOwn) and the shell's.
func (s *Shell) Shutdown(ctx context.Context, closeOwn func() error) error {
	s.stop()
	var errs []error
	for _, f := range s.fronts {
		errs = append(errs, f.Shutdown(ctx))
	}
	err := errors.Join(append(errs, s.servers.Stop(ctx, s.log))...)
	s.loops.Wait()
	return errors.Join(err, s.Close(closeOwn))
}

// Close closes, once, the node's own resources (closeOwn, which may be
// nil) and then the audit log, the listeners and the identity, whichever
// were opened.
func (s *Shell) Close(closeOwn func() error) error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if closeOwn != nil {
		errs = append(errs, closeOwn())
	}
	if s.audit != nil {
		errs = append(errs, s.audit.Close())
	}
	for _, l := range []net.Listener{s.lis, s.opsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	for _, f := range s.fronts {
		_ = f.Close() // a front-end not shut down (a start that failed)
	}
	if s.id != nil {
		errs = append(errs, s.id.Close())
	}
	return errors.Join(errs...)
}

// Runner is a started node as Run drives it.
type Runner interface {
	Done() <-chan error
	Shutdown(ctx context.Context) error
}

// Run serves a started node until ctx ends or a server stops on its own,
// calling onHUP at every SIGHUP, then shuts it down within timeout
// (whatever ended ctx). A server that had stopped on its own is the
// error.
func Run(ctx context.Context, n Runner, onHUP func(), timeout time.Duration, log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var serveErr error
	for done := false; !done; {
		select {
		case <-hup:
			onHUP()
		case serveErr = <-n.Done():
			log.Error("server stopped", "err", serveErr)
			done = true
		case <-ctx.Done():
			log.Info("shutting down")
			done = true
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		return err
	}
	log.Info("stopped")
	if serveErr != nil {
		return fmt.Errorf("server stopped: %w", serveErr)
	}
	return nil
}
