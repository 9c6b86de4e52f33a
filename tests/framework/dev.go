package framework

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// What `keybroker dev` makes.
const (
	// DemoKeyID is the key keybroker dev creates.
	DemoKeyID = "demo"
	// DevEnvFile is the file in keybroker dev's data directory that sets
	// the KEYBROKER_* variables.
	DevEnvFile = "env"
)

// Bounds on the dev process: how long it may take to be ready (the race
// detector slows it several times), and to stop after SIGINT.
const (
	DevReadyTimeout = 3 * time.Minute
	DevStopTimeout  = time.Minute
)

// Dev is a running `keybroker dev`, its stdout and stderr collected as
// they arrive.
type Dev struct {
	Dir string    // its --data directory
	Cmd *exec.Cmd // the process

	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	grew           chan struct{} // closed and replaced whenever output arrives

	exited  chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result, set before exited closes
}

// devOutput is one of Dev's streams.
type devOutput struct {
	p   *Dev
	buf *bytes.Buffer
}

func (w devOutput) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	w.buf.Write(b)
	close(w.p.grew)
	w.p.grew = make(chan struct{})
	return len(b), nil
}

// StartDev runs `keybroker dev --data dir args...` from a scratch working
// directory.
func StartDev(t *testing.T, dir string, args ...string) *Dev {
	t.Helper()
	p := &Dev{Dir: dir, grew: make(chan struct{}), exited: make(chan struct{})}
	p.Cmd = exec.Command(Binary(), append([]string{"dev", "--data", dir}, args...)...)
	p.Cmd.Env = ProcessEnv()
	p.Cmd.Dir = t.TempDir()
	p.Cmd.Stdout = devOutput{p, &p.stdout}
	p.Cmd.Stderr = devOutput{p, &p.stderr}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.Cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// Output is what the process has written so far.
func (p *Dev) Output() (stdout, stderr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.stderr.String()
}

// WaitReady waits, at most DevReadyTimeout, for the ready summary on
// stdout (printed after the env file is written), and returns the
// environment the env file sets, read by a POSIX shell.
func (p *Dev) WaitReady(t *testing.T) map[string]string {
	t.Helper()
	deadline := time.NewTimer(DevReadyTimeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ready, grew := strings.Contains(p.stdout.String(), "\nCtrl-C stops the cluster"), p.grew
		p.mu.Unlock()
		if ready {
			return SourceEnv(t, filepath.Join(p.Dir, DevEnvFile))
		}
		select {
		case <-grew:
		case <-p.exited:
			stdout, stderr := p.Output()
			t.Fatalf("keybroker dev exited (%v) before it was ready\nstdout:\n%s\nstderr:\n%s", p.waitErr, stdout, stderr)
		case <-deadline.C:
			stdout, stderr := p.Output()
			t.Fatalf("keybroker dev not ready within %s\nstdout:\n%s\nstderr:\n%s", DevReadyTimeout, stdout, stderr)
		}
	}
}

// Interrupt sends SIGINT and wants a clean exit (0) within DevStopTimeout.
func (p *Dev) Interrupt(t *testing.T) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(DevStopTimeout):
		t.Fatalf("keybroker dev still running %s after SIGINT", DevStopTimeout)
	}
	if p.waitErr != nil {
		_, stderr := p.Output()
		t.Errorf("keybroker dev exited with %v after SIGINT, want 0\nstderr:\n%s", p.waitErr, stderr)
	}
}

// devVars are the variables the env file must set.
var devVars = []string{EnvAddr, EnvCA, EnvCert, EnvKey}

// SourceEnv sources the env file in sh and returns what it set.
func SourceEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	script := `. "$1" && printf '%s\0' "$` + strings.Join(devVars, `" "$`) + `"`
	cmd := exec.CommandContext(t.Context(), "sh", "-c", script, "sh", path)
	cmd.Env = WithoutKeybrokerVars(os.Environ())
	out, err := cmd.Output()
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("sourcing %s: %v\n%s", path, err, data)
	}
	vals := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if len(vals) != len(devVars) {
		t.Fatalf("sourcing %s gave %q", path, out)
	}
	env := map[string]string{}
	for i, v := range devVars {
		if vals[i] == "" {
			t.Errorf("%s does not set %s", path, v)
		}
		env[v] = vals[i]
	}
	return env
}

// DevNode is a row of the ready summary's node table.
type DevNode struct{ Region, GRPC, Ops string }

// DevNodes parses the node table of the ready summary.
func DevNodes(t *testing.T, stdout string) map[string]DevNode {
	t.Helper()
	nodes := map[string]DevNode{}
	for line := range strings.SplitSeq(stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && (f[0] == "central" || strings.HasPrefix(f[0], "edge-")) {
			nodes[f[0]] = DevNode{f[1], f[2], f[3]}
		}
	}
	return nodes
}

// DevTry returns the command lines the summary offers to try.
func DevTry(t *testing.T, stdout string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(stdout, "Try, in another shell:\n")
	if !ok {
		t.Fatalf("no commands to try in:\n%s", stdout)
	}
	block, _, _ := strings.Cut(rest, "\n\n")
	var cmds []string
	for line := range strings.SplitSeq(block, "\n") {
		cmds = append(cmds, strings.TrimPrefix(line, "  "))
	}
	return cmds
}

// WithAddr is env with another KEYBROKER_ADDR.
func WithAddr(env map[string]string, addr string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	out[EnvAddr] = addr
	return out
}
