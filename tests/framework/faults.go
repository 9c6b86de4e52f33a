package framework

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FaultReportEnv names the file each fault case appends its line to.
const FaultReportEnv = "KEYBROKER_FAULT_REPORT"

// FaultWait bounds every wait of the fault suite: how long a node may take
// to come back, reconnect or go stale. It is a deadline that turns a hang
// into a failure with the evidence, never a measurement.
const FaultWait = 60 * time.Second

// FaultReport is one case's line in the report. The line is written when
// the test ends, marked FAILED if it failed, so a case that stops half way
// still says how far it got.
type FaultReport struct {
	name string
	mu   sync.Mutex
	line string
}

// NewFaultReport starts the report line of the case name, appended to the
// file FaultReportEnv names (if it names one) and logged when the test
// ends.
func NewFaultReport(t *testing.T, name string) *FaultReport {
	r := &FaultReport{name: name, line: "did not finish"}
	t.Cleanup(func() {
		r.mu.Lock()
		line := r.name + ": " + r.line
		r.mu.Unlock()
		if t.Failed() {
			line = "FAILED " + line
		}
		t.Log(line)
		path := os.Getenv(FaultReportEnv)
		if path == "" {
			return
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Errorf("fault report: %v", err)
			return
		}
		defer f.Close()
		if _, err := fmt.Fprintln(f, line); err != nil {
			t.Errorf("fault report: %v", err)
		}
	})
	return r
}

// Set replaces the line.
func (r *FaultReport) Set(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.line = fmt.Sprintf(format, args...)
}

// Poll polls cond every 50ms until it reports true, failing the test
// with cond's last word if FaultWait passes first. It waits for a state;
// how long the state took to arrive is never asserted.
func Poll(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	PollFor(t, what, FaultWait, cond)
}

// PollFor is Poll bounded by wait instead of FaultWait, for a state that
// comes only after a known longer period (a sweep interval).
func PollFor(t *testing.T, what string, wait time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, wait, last)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: test ended; last: %s", what, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Connected reports whether central's ListNodes shows every named edge
// connected.
func (c *Processes) Connected(ctx context.Context, names ...string) (bool, string) {
	resp, err := c.Admin.Admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
	if err != nil {
		return false, err.Error()
	}
	up := map[string]bool{}
	for _, n := range resp.GetNodes() {
		up[n.GetNodeId()] = n.GetConnected()
	}
	for _, name := range names {
		if !up[name] {
			return false, fmt.Sprintf("%s not connected: %v", name, up)
		}
	}
	return true, ""
}

// FailsFast calls fn under a generous deadline and says whether it failed
// with Unavailable before that deadline: what a node must answer when it
// cannot reach what the call needs.
func FailsFast(ctx context.Context, fn func(context.Context) error) error {
	fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := fn(fctx)
	switch {
	case err == nil:
		return errors.New("succeeded")
	case fctx.Err() != nil:
		return fmt.Errorf("still waiting when the 15s deadline passed: %v", err)
	case status.Code(err) != codes.Unavailable:
		return fmt.Errorf("failed with %v, want Unavailable", err)
	}
	return nil
}

// Load runs workers that each call op in a loop until stop. op returns an
// error for anything the application would see as a failure, including a
// wrong result.
type Load struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	Ops   atomic.Int64
	Errs  atomic.Int64

	mu    sync.Mutex
	first []error // the first few errors, for the failure message
}

// StartLoad starts workers calling op (worker w, its i-th call) until
// Stop, counting the calls and the errors.
func StartLoad(ctx context.Context, workers int, op func(ctx context.Context, w, i int) error) *Load {
	l := &Load{stopc: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stopc:
					return
				case <-ctx.Done():
					return
				default:
				}
				if err := op(ctx, w, i); err != nil {
					if ctx.Err() != nil {
						return // the test is over, not a fault
					}
					l.Errs.Add(1)
					l.mu.Lock()
					if len(l.first) < 5 {
						l.first = append(l.first, fmt.Errorf("worker %d op %d: %w", w, i, err))
					}
					l.mu.Unlock()
				}
				l.Ops.Add(1)
			}
		})
	}
	return l
}

// WaitOps waits until the workers have finished n operations in all.
func (l *Load) WaitOps(t *testing.T, n int64) {
	t.Helper()
	Poll(t, fmt.Sprintf("%d operations", n), func() (bool, string) {
		got := l.Ops.Load()
		return got >= n, fmt.Sprintf("%d operations, %d errors", got, l.Errs.Load())
	})
}

// Stop ends the load and returns its first errors.
func (l *Load) Stop() []error {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

// Proxy is a loopback TCP proxy to one address that the test can cut
// (close every connection and refuse new ones, as a peer that resets) or
// stall (carry no bytes either way, on current and new connections, as a
// partition that drops packets without telling anyone), and restore.
type Proxy struct {
	l      net.Listener
	target string

	mu      sync.Mutex
	state   proxyState
	resume  chan struct{} // closed when a stall ends
	conns   map[net.Conn]struct{}
	refused int
}

type proxyState int

const (
	proxyPass proxyState = iota
	proxyReset
	proxyStall
)

// NewProxy starts a proxy to target, passing bytes until Cut or Stall,
// and closed when the test ends.
func NewProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "proxy listen", err)
	p := &Proxy{l: l, target: target, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.resume)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		p.Restore()
		p.closeAll()
	})
	return p
}

// Addr is the proxy's loopback address, to dial instead of the target.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

func (p *Proxy) serve(down net.Conn) {
	p.mu.Lock()
	if p.state == proxyReset {
		p.refused++
		p.mu.Unlock()
		resetConn(down)
		return
	}
	p.conns[down] = struct{}{}
	p.mu.Unlock()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		p.drop(down)
		return
	}
	p.mu.Lock()
	if p.state == proxyReset { // cut while dialling
		p.mu.Unlock()
		resetConn(up)
		p.drop(down)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(up, down) })
	wg.Go(func() { p.pipe(down, up) })
	wg.Wait()
	p.drop(up)
	p.drop(down)
}

// pipe copies src to dst, holding each chunk while the proxy is stalled.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			resume := p.resume
			p.mu.Unlock()
			<-resume
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	// Half-close so the other direction drains, then both end.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = src.Close()
	_ = dst.Close()
}

func (p *Proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// reset closes c with an RST, as a peer that forgot the connection does.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		resetConn(c)
	}
}

// Cut resets every connection and refuses new ones until restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	if p.state == proxyStall {
		close(p.resume) // what was held goes nowhere: its connections close
	}
	p.state = proxyReset
	p.mu.Unlock()
	p.closeAll()
}

// Stall stops every byte on current and new connections until restore;
// nothing is closed, so neither side learns of it but by silence.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != proxyStall {
		p.state = proxyStall
		p.resume = make(chan struct{})
	}
}

// Restore lets bytes through again; a stalled connection delivers what it
// held.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == proxyStall {
		close(p.resume)
	}
	p.state = proxyPass
}

// Refusals is how many connections the proxy reset on arrival.
func (p *Proxy) Refusals() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// SDKClient is a Go SDK client of the cluster as client/app, in region,
// configured with addrs, retrying quickly.
func (c *Setup) SDKClient(t *testing.T, region string, addrs ...string) *client.Client {
	t.Helper()
	return c.SDKClientWith(t, client.Config{Addrs: addrs, Region: region, MaxAttempts: 5})
}

// SDKClientWith is a Go SDK client of the cluster as client/app, with
// cfg's addresses, region and attempts, pausing 20-200ms between passes.
func (c *Setup) SDKClientWith(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	certPEM, keyPEM, err := c.CA.Issue(identity.Identity{TrustDomain: TrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}
	cfg.Backoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cl, err := client.New(t.Context(), cfg)
	must(t, "client.New", err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// MetricAt sums the samples of a Prometheus metric on a node's
// /metrics whose labels contain match (`code="ResourceExhausted"`).
func (c *Setup) MetricAt(t *testing.T, opsAddr, name, match string) float64 {
	t.Helper()
	certPEM, keyPEM, err := c.CA.Issue(identity.Identity{TrustDomain: TrustDomain, Kind: identity.Admin, Name: "monitor"}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	return scrapeMetric(t, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, opsAddr, name, match)
}
