// Package etcdproc runs etcd members as child processes of this one: the
// etcd binary Debian ships (package etcd-server, which production runs
// too), each member with its own data directory and loopback ports. It is
// what `keybroker dev --centrals N` runs its etcd with, and what the
// tests' etcd clusters (internal/etcdtest) are made of.
//
// # Why a binary and not an embedded etcd
//
// etcd's server can be linked into a Go program
// (go.etcd.io/etcd/server/v3/embed), but that module brings raft, bbolt's
// etcd fork, the etcd server and their version pins into keybroker's one
// go.mod, which every build of the SDK (client/) resolves, for a feature
// only development clusters use. The binary is also exactly what a
// deployment runs, started with the same flags an operator gives it, and a
// member can be killed (kill -9) like a real one, which the fault tests
// need. The cost is that the binary must be installed: [Binary] reports
// [ErrNotInstalled], saying what to install, and nothing is started.
//
// # Lifecycle
//
// [Start] starts every member, then waits until the cluster serves a
// linearizable read (or ctx ends, or a member exits, whose log tail is in
// the error); on any failure it stops what it started, so a failed Start
// leaves no process behind. [Cluster.Stop] ends every member (SIGTERM,
// then SIGKILL after a grace period). A member's data directory outlives
// it: a cluster started again on the same directories (with Options.Dir
// unchanged) reopens its data, whichever ports it gets this time.
//
// # Limitations
//
// Members listen on plain http on loopback, with no authentication:
// anyone who can open a loopback connection on the host can read and write
// the store. That is what a development cluster and the tests need;
// docs/deploy.md runs etcd with TLS and client certificates.
package etcdproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// BinaryEnv names the variable that points at an etcd binary other than
// the one on PATH.
const BinaryEnv = "KEYBROKER_ETCD"

// ErrNotInstalled is the etcd binary missing; the error wrapping it says
// what to install.
var ErrNotInstalled = errors.New("etcd is not installed")

// Binary finds the etcd binary: $KEYBROKER_ETCD, else etcd on PATH. A
// missing one is ErrNotInstalled, wrapped in an error that says how to
// install it.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v", ErrNotInstalled, BinaryEnv, p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "", fmt.Errorf("%w: no etcd on PATH; install it (Debian and Ubuntu: apt-get install etcd-server), or set %s to its path", ErrNotInstalled, BinaryEnv)
	}
	return p, nil
}

// Options configure a cluster.
type Options struct {
	// Dir holds member i's data in Dir/<name> and its log in
	// Dir/<name>.log; created 0700 when missing. Required.
	Dir string
	// Members is the number of members (default 1), named m0, m1, ….
	Members int
	// Binary is the etcd binary (default: Binary()).
	Binary string
	// Token is the cluster token a new cluster is created with; members
	// of different clusters on one host must not share it. Default: one
	// made from Dir and the time.
	Token string
	// StopTimeout is how long a member may take to stop after SIGTERM
	// before it is killed (default 10s).
	StopTimeout time.Duration
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
	LogFile   string

	stopTimeout time.Duration
	cmd         *exec.Cmd
	done        chan struct{} // closed once the process has exited
	log         *os.File
	stopOnce    sync.Once
}

// Start starts the members and waits until the cluster answers a
// linearizable read or ctx ends. On error nothing it started is left
// running.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("etcdproc: no directory")
	}
	if opts.Members <= 0 {
		opts.Members = 1
	}
	if opts.Binary == "" {
		if opts.Binary, err = Binary(); err != nil {
			return nil, err
		}
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 10 * time.Second
	}
	if opts.Token == "" {
		opts.Token = fmt.Sprintf("keybroker-%x-%d", hashString(opts.Dir), time.Now().UnixNano())
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdproc: %w", err)
	}
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()
	var initial []string
	addrs, err := freeAddrs(2 * opts.Members)
	if err != nil {
		return c, err
	}
	for i := range opts.Members {
		client, peer := addrs[2*i], addrs[2*i+1]
		name := fmt.Sprintf("m%d", i)
		m := &Member{Name: name, ClientURL: "http://" + client, PeerURL: "http://" + peer,
			DataDir: filepath.Join(opts.Dir, name), LogFile: filepath.Join(opts.Dir, name+".log"), stopTimeout: opts.StopTimeout}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.Members {
		if err := m.start(opts.Binary, strings.Join(initial, ","), opts.Token); err != nil {
			return c, err
		}
	}
	if err := c.wait(ctx); err != nil {
		return c, err
	}
	return c, nil
}

func (m *Member) start(bin, initial, token string) error {
	log, err := os.OpenFile(m.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	m.log = log
	// A member whose data directory exists reopens it and ignores the
	// initial-cluster flags: its membership is in its data.
	m.cmd = exec.Command(bin,
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		// History bounded as docs/deploy.md advises: what an edge away for
		// longer than an hour resumes from is a full snapshot.
		"--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h",
	)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	m.cmd.SysProcAttr = procAttr()
	// The kernel's parent-death signal (procAttr) follows the thread that
	// started the child, not the process: start it from a thread locked
	// to this goroutine, which lives until the member exits, so that the
	// Go runtime never retires that thread under a running member.
	started := make(chan error)
	m.done = make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := m.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = m.cmd.Wait()
		close(m.done)
	}()
	if err := <-started; err != nil {
		log.Close()
		m.done = nil
		return fmt.Errorf("etcdproc: starting etcd member %s: %w", m.Name, err)
	}
	return nil
}

// Endpoints lists every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// Stop stops every member; it is safe to call more than once.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(m.Stop)
	}
	wg.Wait()
}

// Stop ends the member: SIGTERM, then SIGKILL after the stop timeout. It
// returns once the process has exited, and is safe to call more than once.
func (m *Member) Stop() { m.end(syscall.SIGTERM) }

// Kill ends the member at once (SIGKILL), as a crash would, and returns
// once the process has exited.
func (m *Member) Kill() { m.end(syscall.SIGKILL) }

func (m *Member) end(sig syscall.Signal) {
	if m.done == nil {
		return // never started
	}
	m.stopOnce.Do(func() {
		_ = m.cmd.Process.Signal(sig)
		select {
		case <-m.done:
		case <-time.After(m.stopTimeout):
			_ = m.cmd.Process.Kill()
			<-m.done
		}
		m.log.Close()
	})
	<-m.done
}

// Done is closed once the member's process has exited.
func (m *Member) Done() <-chan struct{} { return m.done }

// Running reports whether the member's process has started and not
// exited.
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

// Pid is the member's process id.
func (m *Member) Pid() int { return m.cmd.Process.Pid }

// wait polls until the cluster serves a linearizable read.
func (c *Cluster) wait(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("etcdproc: %w", err)
	}
	defer cli.Close()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(rctx, "etcdproc-ready")
		cancel()
		if err == nil {
			return nil
		}
		for _, m := range c.Members {
			select {
			case <-m.done:
				out, _ := os.ReadFile(m.LogFile)
				return fmt.Errorf("etcdproc: etcd member %s exited (log %s): %s", m.Name, m.LogFile, tail(out))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcdproc: etcd at %s not ready: %w (last error: %v)", strings.Join(c.Endpoints(), ","), context.Cause(ctx), err)
		case <-tick.C:
		}
	}
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// freeAddrs returns n loopback addresses whose ports were free a moment
// ago, all different: every listener is held until all are chosen (one
// closed before the next was asked for could be handed out again, and two
// members given the same peer URL fail to start).
func freeAddrs(n int) ([]string, error) {
	out := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdproc: finding a free port: %w", err)
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// hashString is FNV-1a, to tell tokens of different directories apart.
func hashString(s string) uint32 {
	h := uint32(2166136261)
	for i := range len(s) {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
