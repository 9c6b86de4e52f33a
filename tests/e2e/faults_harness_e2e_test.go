package e2e

// The fault-injection suite (TestFault*, the faults_*_e2e_test.go files):
// real keybroker processes, a fault injected under load, and a count of
// what the application lost — which must be nothing. This file holds what
// the cases share: the report, polling with a deadline, a loopback TCP
// proxy that can cut or stall the network, and a load generator.
//
// `make test-faults` runs the suite with KEYBROKER_FAULT_REPORT naming a
// file; each case appends one line saying what was tried and what was
// lost. docs/reliability.md is written from those lines.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// faultReportEnv names the file each fault case appends its line to.
const faultReportEnv = "KEYBROKER_FAULT_REPORT"

// faultWait bounds every wait of the fault suite: how long a node may take
// to come back, reconnect or go stale. It is a deadline that turns a hang
// into a failure with the evidence, never a measurement.
const faultWait = 60 * time.Second

// faultReport is one case's line in the report. The line is written when
// the test ends, marked FAILED if it failed, so a case that stops half way
// still says how far it got.
type faultReport struct {
	name string
	mu   sync.Mutex
	line string
}

func newFaultReport(t *testing.T, name string) *faultReport {
	r := &faultReport{name: name, line: "did not finish"}
	t.Cleanup(func() {
		r.mu.Lock()
		line := r.name + ": " + r.line
		r.mu.Unlock()
		if t.Failed() {
			line = "FAILED " + line
		}
		t.Log(line)
		path := os.Getenv(faultReportEnv)
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

// set replaces the line.
func (r *faultReport) set(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.line = fmt.Sprintf(format, args...)
}

// faultPoll polls cond every 50ms until it reports true, failing the test
// with cond's last word if faultWait passes first. It waits for a state;
// how long the state took to arrive is never asserted.
func faultPoll(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(faultWait)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, faultWait, last)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: test ended; last: %s", what, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connected reports whether central's ListNodes shows every named edge
// connected.
func (c *edgeCluster) connected(ctx context.Context, names ...string) (bool, string) {
	resp, err := c.admin.admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
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

// faultFailsFast calls fn under a generous deadline and says whether it failed
// with Unavailable before that deadline: what a node must answer when it
// cannot reach what the call needs.
func faultFailsFast(ctx context.Context, fn func(context.Context) error) error {
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

// faultLoad runs workers that each call op in a loop until stop. op returns an
// error for anything the application would see as a failure, including a
// wrong result.
type faultLoad struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	ops   atomic.Int64
	errs  atomic.Int64

	mu    sync.Mutex
	first []error // the first few errors, for the failure message
}

func startFaultLoad(ctx context.Context, workers int, op func(ctx context.Context, w, i int) error) *faultLoad {
	l := &faultLoad{stopc: make(chan struct{})}
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
					l.errs.Add(1)
					l.mu.Lock()
					if len(l.first) < 5 {
						l.first = append(l.first, fmt.Errorf("worker %d op %d: %w", w, i, err))
					}
					l.mu.Unlock()
				}
				l.ops.Add(1)
			}
		})
	}
	return l
}

// waitOps waits until the workers have finished n operations in all.
func (l *faultLoad) waitOps(t *testing.T, n int64) {
	t.Helper()
	faultPoll(t, fmt.Sprintf("%d operations", n), func() (bool, string) {
		got := l.ops.Load()
		return got >= n, fmt.Sprintf("%d operations, %d errors", got, l.errs.Load())
	})
}

// stop ends the faultLoad and returns its errors so far.
func (l *faultLoad) stop() []error {
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

// faultProxy is a loopback TCP proxy to one address that the test can cut
// (close every connection and refuse new ones, as a peer that resets) or
// stall (carry no bytes either way, on current and new connections, as a
// partition that drops packets without telling anyone), and restore.
type faultProxy struct {
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

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "proxy listen", err)
	p := &faultProxy{l: l, target: target, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
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
		p.restore()
		p.closeAll()
	})
	return p
}

func (p *faultProxy) addr() string { return p.l.Addr().String() }

func (p *faultProxy) serve(down net.Conn) {
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
func (p *faultProxy) pipe(dst, src net.Conn) {
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

func (p *faultProxy) drop(c net.Conn) {
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

func (p *faultProxy) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		resetConn(c)
	}
}

// cut resets every connection and refuses new ones until restore.
func (p *faultProxy) cut() {
	p.mu.Lock()
	if p.state == proxyStall {
		close(p.resume) // what was held goes nowhere: its connections close
	}
	p.state = proxyReset
	p.mu.Unlock()
	p.closeAll()
}

// stall stops every byte on current and new connections until restore;
// nothing is closed, so neither side learns of it but by silence.
func (p *faultProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != proxyStall {
		p.state = proxyStall
		p.resume = make(chan struct{})
	}
}

// restore lets bytes through again; a stalled connection delivers what it
// held.
func (p *faultProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == proxyStall {
		close(p.resume)
	}
	p.state = proxyPass
}

// refusals is how many connections the proxy reset on arrival.
func (p *faultProxy) refusals() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// faultSDKClient is a Go SDK client of the cluster as client/app, in region,
// configured with addrs, retrying quickly.
func (c *cluster) faultSDKClient(t *testing.T, region string, addrs ...string) *client.Client {
	t.Helper()
	return c.faultSDKClientWith(t, client.Config{Addrs: addrs, Region: region, MaxAttempts: 5})
}

// faultSDKClientWith is a Go SDK client of the cluster as client/app, with
// cfg's addresses, region and attempts, pausing 20-200ms between passes.
func (c *cluster) faultSDKClientWith(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	certPEM, keyPEM, err := c.ca.Issue(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}
	cfg.Backoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	cl, err := client.New(t.Context(), cfg)
	must(t, "client.New", err)
	t.Cleanup(func() { cl.Close() })
	return cl
}

// faultMetric sums the samples of a Prometheus metric on a node's
// /metrics whose labels contain match (`code="ResourceExhausted"`).
func (c *cluster) faultMetric(t *testing.T, opsAddr, name, match string) float64 {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.ca.Cert)
	certPEM, keyPEM, err := c.ca.Issue(identity.Identity{TrustDomain: e2eTrustDomain, Kind: identity.Admin, Name: "monitor"}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+opsAddr+"/metrics", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	must(t, "GET /metrics", err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, "reading /metrics", err)
	sum := 0.0
	for line := range strings.SplitSeq(string(body), "\n") {
		metric, value, ok := strings.Cut(line, " ")
		base, labels, _ := strings.Cut(metric, "{")
		if !ok || base != name || !strings.Contains(labels, match) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		must(t, "metric value", err)
		sum += v
	}
	return sum
}

// faultMsg is a ciphertext the application holds, with what opens it.
type faultMsg struct {
	key        string
	ciphertext []byte
	plaintext  []byte
	ectx       map[string]string
}

// faultMsgs collects ciphertexts from concurrent workers.
type faultMsgs struct {
	mu   sync.Mutex
	msgs []faultMsg
}

func (m *faultMsgs) add(s faultMsg) {
	m.mu.Lock()
	m.msgs = append(m.msgs, s)
	m.mu.Unlock()
}

func (m *faultMsgs) all() []faultMsg {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]faultMsg(nil), m.msgs...)
}

// faultDecryptAll opens every message at a node with BatchDecrypt and
// returns the errors (a wrong plaintext is one).
func faultDecryptAll(ctx context.Context, node *rpc, msgs []faultMsg) []error {
	var errs []error
	for len(msgs) > 0 {
		n := min(len(msgs), 200)
		req := &kbv1.BatchDecryptRequest{}
		for _, m := range msgs[:n] {
			req.Items = append(req.Items, &kbv1.DecryptRequest{Ciphertext: m.ciphertext, EncryptionContext: m.ectx})
		}
		resp, err := node.kb.BatchDecrypt(ctx, req)
		if err != nil {
			return append(errs, fmt.Errorf("BatchDecrypt of %d: %w", n, err))
		}
		for i, r := range resp.GetResults() {
			switch {
			case r.GetError() != nil:
				errs = append(errs, fmt.Errorf("%s: %v", msgs[i].key, r.GetError()))
			case !bytes.Equal(r.GetResponse().GetPlaintext(), msgs[i].plaintext):
				errs = append(errs, fmt.Errorf("%s: plaintext %q, want %q", msgs[i].key, r.GetResponse().GetPlaintext(), msgs[i].plaintext))
			}
		}
		if len(resp.GetResults()) != n {
			errs = append(errs, fmt.Errorf("BatchDecrypt of %d gave %d results", n, len(resp.GetResults())))
		}
		msgs = msgs[n:]
	}
	return errs
}

// faultRoundTrip encrypts at one node and decrypts at another, checking
// the plaintext, and returns the ciphertext.
func faultRoundTrip(ctx context.Context, enc, dec *rpc, key string, pt []byte, ectx map[string]string) ([]byte, error) {
	e, err := enc.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
	if err != nil {
		return nil, fmt.Errorf("Encrypt %s: %w", key, err)
	}
	d, err := dec.kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: e.GetCiphertext(), EncryptionContext: ectx})
	if err != nil {
		return nil, fmt.Errorf("Decrypt %s: %w", key, err)
	}
	if !bytes.Equal(d.GetPlaintext(), pt) {
		return nil, fmt.Errorf("Decrypt %s = %q, want %q", key, d.GetPlaintext(), pt)
	}
	return e.GetCiphertext(), nil
}
