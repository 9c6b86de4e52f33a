package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload/workloadtest"
	"github.com/keybroker/keybroker/tests/framework"
)

// spiffeTTL and spiffeRotate are the SVIDs' lifetime and re-issue period
// in the Workload API tests: every process sees several rotations, and its
// first SVID expires, while the test runs.
const (
	spiffeTTL    = 4 * time.Second
	spiffeRotate = time.Second
)

// spiffeCluster is a central node and one edge that take their identities
// from a Workload API server (workloadtest), one workload (socket) each,
// as a SPIRE agent attests each process; admin is the socket of an
// operator's CLI, app that of the application.
type spiffeCluster struct {
	*framework.Processes
	agent      *workloadtest.Server
	admin, app *workloadtest.Workload
	edge       *framework.EdgeNode
}

// newSpiffeCluster starts central (softkms) and edge-eu with `spiffe:` in
// place of their tls files, and enrolls the edge with the CLI over
// --spiffe-socket (KEYBROKER_SPIFFE_SOCKET).
func newSpiffeCluster(t *testing.T) *spiffeCluster {
	t.Helper()
	agent := workloadtest.Start(t, workloadtest.Options{TrustDomain: framework.TrustDomain, TTL: spiffeTTL, RotateEvery: spiffeRotate})
	c := &spiffeCluster{
		Processes: &framework.Processes{Setup: framework.NewSetupOn(t, framework.SoftkmsRoots, framework.BasicRoots), Edges: map[string]*framework.EdgeNode{}},
		agent:     agent,
		admin:     agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/admin/ops"),
		app:       agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/client/app"),
	}
	central := agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/central/central-1")
	edge := agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/edge/edge-eu")
	cfg, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	files := []byte("tls: {ca: ca.crt, cert: central.crt, key: central.key}\n")
	if !bytes.Contains(cfg, files) {
		t.Fatalf("central.yaml has no %q line to replace:\n%s", files, cfg)
	}
	cfg = bytes.Replace(cfg, files, fmt.Appendf(nil, "spiffe: {socket: %q, timeout: 20s}\n", central.Addr()), 1)
	cfg = append(cfg, "edges: {lease: 2s, heartbeat: 200ms}\n"+framework.UnboundedBudget...)
	must(t, "writing central.yaml", os.WriteFile(c.Config, cfg, 0o600))
	c.Central = c.StartCentral(t)
	c.mustCLI(t, c.Central.Addr, "node", "enroll", "edge-eu", "--region", "eu")
	c.edge = &framework.EdgeNode{Name: "edge-eu", Region: "eu", Prefetch: true, Staleness: time.Hour, SPIFFE: edge.Addr()}
	c.StartEdge(t, c.edge)
	return c
}

// cliAs runs the keybroker binary at addr with its identity from the
// workload w's socket, given as KEYBROKER_SPIFFE_SOCKET.
func (c *spiffeCluster) cliAs(t *testing.T, w *workloadtest.Workload, addr string, args ...string) framework.Result {
	t.Helper()
	return framework.CLI(t, map[string]string{framework.EnvAddr: addr, framework.EnvSPIFFESocket: w.Addr()}, nil, args...)
}

// mustCLI runs an admin command and fails the test if it fails.
func (c *spiffeCluster) mustCLI(t *testing.T, addr string, args ...string) string {
	t.Helper()
	r := c.cliAs(t, c.admin, addr, args...)
	if r.Code != 0 {
		t.Fatalf("keybroker %s: exit %d\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// rotationLog collects the "identity rotated" records a Workload API
// source logs in this process (the SDK's).
type rotationLog struct {
	mu      sync.Mutex
	serials map[string]bool
	count   int
	grew    chan struct{} // closed and replaced at every rotation
}

func newRotationLog() *rotationLog {
	return &rotationLog{serials: map[string]bool{}, grew: make(chan struct{})}
}

func (l *rotationLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *rotationLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *rotationLog) WithGroup(string) slog.Handler            { return l }
func (l *rotationLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "identity rotated" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "serial" {
			l.mu.Lock()
			l.serials[a.Value.String()] = true
			l.count++
			close(l.grew)
			l.grew = make(chan struct{})
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

// state is the number of rotations so far and a channel closed at the
// next.
func (l *rotationLog) state() (int, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count, l.grew
}

// waitRotation waits for a rotation after the count n.
func (l *rotationLog) waitRotation(t *testing.T, n int) {
	t.Helper()
	for {
		got, grew := l.state()
		if got > n {
			return
		}
		select {
		case <-grew:
		case <-t.Context().Done():
			t.Fatalf("the SDK's Workload API source logged no rotation after %d", n)
		}
	}
}

// serialsOf returns the serials a process logged as "identity rotated".
func serialsOf(p *framework.Proc) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(p.Logs(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "identity rotated" {
			if s, ok := rec["serial"].(string); ok {
				out[s] = true
			}
		}
	}
	return out
}

// TestSPIFFEEndToEnd runs central, an edge and the SDK with identities from
// a Workload API server that re-issues every SVID each second with a 4 s
// lifetime: 24 goroutines Encrypt and Decrypt through the edge — a derive
// key the edge serves from its replica, and a backend-mode key it forwards
// to central with the client's forward proofs — until central, the edge and
// the SDK have each rotated after their first SVID expired, with no failed
// call. The CLI with --spiffe-socket gets random bytes, and a certificate
// of the deployment's old file CA is refused by the nodes, which trust the
// agent's bundle alone.
func TestSPIFFEEndToEnd(t *testing.T) {
	c := newSpiffeCluster(t)
	ctx := t.Context()
	owner := "--label=owner=" + framework.TrustDomain
	c.mustCLI(t, c.Central.Addr, "key", "create", "spiffe-derive", "--type", "aes-256-gcm", "--mode", "derive", owner, "--placement", "true")
	c.mustCLI(t, c.Central.Addr, "key", "create", "spiffe-backend", "--type", "aes-256-gcm", "--mode", "backend", owner)

	// Any SVID in force when the processes started has expired by then.
	firstExpired := time.Now().Add(spiffeTTL)

	rot := newRotationLog()
	cl, err := client.New(ctx, client.Config{Addrs: []string{c.edge.Proc.Addr}, SPIFFESocket: c.app.Addr(), Direct: true,
		Logger: slog.New(rot), Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	must(t, "client.New with SPIFFESocket", err)
	defer cl.Close()

	var calls, failed atomic.Int64
	var errMu sync.Mutex
	var errs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const workers = 24
	for w := range workers {
		wg.Go(func() {
			key := "spiffe-derive"
			if w%4 == 0 {
				key = "spiffe-backend"
			}
			ectx := map[string]string{"worker": fmt.Sprint(w)}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pt := fmt.Appendf(nil, "worker %d call %d", w, i)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				ct, err := cl.Encrypt(cctx, key, pt, ectx)
				if err == nil {
					var got *client.Plaintext
					got, err = cl.Decrypt(cctx, ct.Ciphertext, ectx)
					if err == nil && !bytes.Equal(got.Plaintext, pt) {
						err = fmt.Errorf("decrypted %q, want %q", got.Plaintext, pt)
					}
				}
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if len(errs) < 10 {
						errs = append(errs, fmt.Sprintf("%s: %v", key, err))
					}
					errMu.Unlock()
				}
			}
		})
	}

	// Run until every process has rotated after its first SVID expired:
	// wait for the expiry, then for one more rotation of each.
	select {
	case <-time.After(time.Until(firstExpired)):
	case <-ctx.Done():
		t.Fatal("test ended before the first SVIDs expired")
	}
	n, _ := rot.state()
	markCentral, markEdge := c.Central.Mark(), c.edge.Proc.Mark()
	c.Central.WaitLog(t, markCentral, "identity rotated")
	c.edge.Proc.WaitLog(t, markEdge, "identity rotated")
	rot.waitRotation(t, n)
	close(stop)
	wg.Wait()

	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d calls failed while the SVIDs rotated; first errors:\n%s", f, calls.Load(), strings.Join(errs, "\n"))
	}
	if calls.Load() < workers {
		t.Errorf("only %d calls made", calls.Load())
	}
	rot.mu.Lock()
	sdkSerials := len(rot.serials)
	rot.mu.Unlock()
	for name, got := range map[string]int{"central": len(serialsOf(c.Central)), "edge": len(serialsOf(c.edge.Proc)), "SDK": sdkSerials} {
		if got < 2 {
			t.Errorf("%s rotated to %d distinct SVIDs, want at least 2", name, got)
		}
	}
	t.Logf("%d calls, 0 failed; SVIDs rotated to: central %d, edge %d, SDK %d", calls.Load(), len(serialsOf(c.Central)), len(serialsOf(c.edge.Proc)), sdkSerials)

	// The CLI over --spiffe-socket (the flag, not the environment).
	r := framework.CLI(t, map[string]string{}, nil, "random", "--length", "16", "--output", "json", "--addr", c.edge.Proc.Addr, "--spiffe-socket", c.app.Addr())
	if r.Code != 0 || !strings.Contains(r.Stdout, `"random"`) {
		t.Errorf("keybroker random --spiffe-socket: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}

	// Attack: a certificate of the deployment's file CA (the one before the
	// agent) is not trusted by nodes on the agent's bundle.
	for name, addr := range map[string]string{"edge": c.edge.Proc.Addr, "central": c.Central.Addr} {
		old := c.Dial(t, addr, identity.Client, "app")
		if _, err := old.KB.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 8}); err == nil {
			t.Errorf("%s accepted a client certificate of a CA outside the agent's bundle", name)
		}
	}
}

// TestSPIFFEWrongRegistration starts nodes whose agent gives them another
// node's SVID (a registration entry that is wrong): each refuses to start,
// saying so, rather than serve or register as the other node.
func TestSPIFFEWrongRegistration(t *testing.T) {
	c := framework.NewSetup(t)
	agent := workloadtest.Start(t, workloadtest.Options{TrustDomain: framework.TrustDomain, TTL: time.Hour})
	other := agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/central/central-2")
	cfg, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	cfg = bytes.Replace(cfg, []byte("tls: {ca: ca.crt, cert: central.crt, key: central.key}\n"), fmt.Appendf(nil, "spiffe: {socket: %q, timeout: 10s}\n", other.Addr()), 1)
	must(t, "writing central.yaml", os.WriteFile(c.Config, cfg, 0o600))
	cmd := exec.CommandContext(t.Context(), framework.Binary(), "central", "--config", c.Config)
	cmd.Env = framework.ProcessEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "central-2") || !strings.Contains(string(out), "registration entry for this process is wrong") {
		t.Errorf("central given central-2's SVID: %v\n%s\nwant a refusal naming the SVID and the agent's registration", err, out)
	}

	edgeX := agent.MustAddWorkload(t, "spiffe://"+framework.TrustDomain+"/edge/edge-x")
	edgeCfg := filepath.Join(c.Dir, "edge.yaml")
	must(t, "writing edge.yaml", os.WriteFile(edgeCfg, fmt.Appendf(nil, `node_id: edge-y
trust_domain: %s
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
spiffe: {socket: %q, timeout: 10s}
data_dir: edge-data
region: eu
central: {address: "127.0.0.1:1"}
`, framework.TrustDomain, edgeX.Addr()), 0o600))
	cmd = exec.CommandContext(t.Context(), framework.Binary(), "edge", "--config", edgeCfg)
	cmd.Env = framework.ProcessEnv()
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "edge-x") || !strings.Contains(string(out), "registration entry for this process is wrong") {
		t.Errorf("edge-y given edge-x's SVID: %v\n%s\nwant a refusal naming the SVID and the agent's registration", err, out)
	}
}

// TestSPIFFESocketSettings: --spiffe-socket (or KEYBROKER_SPIFFE_SOCKET)
// replaces the certificate files; both together, or a socket that is not
// a unix one, are usage errors that say so, before anything is dialled.
func TestSPIFFESocketSettings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		stderr string
	}{
		{"flag and cert files", map[string]string{framework.EnvAddr: "127.0.0.1:1", framework.EnvCA: "ca.crt", framework.EnvCert: "c.crt", framework.EnvKey: "c.key"},
			[]string{"random", "--length", "8", "--spiffe-socket", "unix:///run/spire/agent.sock"},
			"--spiffe-socket (or KEYBROKER_SPIFFE_SOCKET) and --ca, --cert, --tls-key (or their environment variables) are both given"},
		{"env and cert flag", map[string]string{framework.EnvAddr: "127.0.0.1:1", framework.EnvSPIFFESocket: "unix:///run/spire/agent.sock"},
			[]string{"random", "--length", "8", "--cert", "c.crt"}, "and --cert (or their environment variables) are both given"},
		{"tcp socket", map[string]string{framework.EnvAddr: "127.0.0.1:1"},
			[]string{"random", "--length", "8", "--spiffe-socket", "tcp://127.0.0.1:8081"}, "--spiffe-socket: workload: socket \"tcp://127.0.0.1:8081\": only unix sockets are accepted"},
		{"no identity", map[string]string{framework.EnvAddr: "127.0.0.1:1"},
			[]string{"random", "--length", "8"}, "or --spiffe-socket for a SPIFFE Workload API agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := framework.CLI(t, tc.env, nil, tc.args...)
			if r.Code != exitUsage || !strings.Contains(r.Stderr, tc.stderr) {
				t.Errorf("keybroker %s: exit %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), r.Code, r.Stderr, exitUsage, tc.stderr)
			}
		})
	}
}
