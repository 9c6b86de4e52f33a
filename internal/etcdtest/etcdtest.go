// Package etcdtest runs real etcd members for the repository's tests:
// Debian's etcd binary (apt-get install etcd-server), each member a
// process with its own data directory under t.TempDir() and loopback
// ports, stopped with the test.
//
// A test that needs etcd calls [Start]; when the binary is missing the test
// is skipped with a message saying what to install, unless
// KEYBROKER_REQUIRE_ETCD=1 (as `make test` sets it), which makes it a
// failure instead.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// RequireEnv names the variable that turns a missing etcd into a failure.
const RequireEnv = "KEYBROKER_REQUIRE_ETCD"

// Binary finds the etcd binary: $KEYBROKER_ETCD, else etcd on the PATH.
func Binary() (string, error) {
	if p := os.Getenv("KEYBROKER_ETCD"); p != "" {
		return p, nil
	}
	return exec.LookPath("etcd")
}

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	DataDir   string
	cmd       *exec.Cmd
	done      chan struct{}
	log       *os.File
}

// Endpoints lists every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// Client returns a client of the whole cluster, closed with the test.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: nopLogger()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Start runs an n-member etcd cluster on loopback, stopped when the test
// ends, and waits until it answers.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("etcd is required (%s=1) but missing: install it with: sudo apt-get install etcd-server", RequireEnv)
		}
		t.Skip("etcd is not installed; install it with: sudo apt-get install etcd-server (make test does)")
	}
	dir := t.TempDir()
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), ClientURL: "http://" + freeAddr(t), PeerURL: "http://" + freeAddr(t),
			DataDir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	token := fmt.Sprintf("keybroker-test-%d", time.Now().UnixNano())
	for _, m := range c.Members {
		m.start(t, bin, strings.Join(initial, ","), token)
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Stop()
		}
	})
	c.wait(t)
	return c
}

func (m *Member) start(t testing.TB, bin, initial, token string) {
	t.Helper()
	log, err := os.Create(m.DataDir + ".log")
	if err != nil {
		t.Fatal(err)
	}
	m.log = log
	m.cmd = exec.Command(bin,
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
	)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start etcd member %s: %v", m.Name, err)
	}
	m.done = make(chan struct{})
	go func() { m.cmd.Wait(); close(m.done) }()
}

// Stop ends the member (SIGTERM, then SIGKILL).
func (m *Member) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	m.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
	m.log.Close()
}

// Kill ends the member with SIGKILL, as a crashed machine, and waits
// until it is gone. Stop afterwards does nothing more.
func (m *Member) Kill() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
}

// Running reports whether the member's process has not exited.
func (m *Member) Running() bool {
	if m.done == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// wait polls until the cluster serves a linearizable read.
func (c *Cluster) wait(t testing.TB) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: nopLogger()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	defer cli.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "etcdtest-ready")
		cancel()
		if err == nil {
			return
		}
		for _, m := range c.Members {
			select {
			case <-m.done:
				out, _ := os.ReadFile(m.DataDir + ".log")
				t.Fatalf("etcd member %s exited: %s", m.Name, tail(out))
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not become ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func nopLogger() *zap.Logger { return zap.NewNop() }
